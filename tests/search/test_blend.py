"""`search.blend`: the weight that blends the model's score with retrieval's, chosen on valid (#31)."""

from __future__ import annotations

from types import SimpleNamespace

import tensorflow as tf

from esr_tf.labels import ESCI
from esr_tf.search.blend import WEIGHTS, choose_rerank_weight, describe


class FakeSearch:
    """`search_top` over three products: retrieval ranks p1 > p2 > p3, the model `model_order`."""

    size = 3

    def __init__(self, model_scores: dict[str, float]) -> None:
        self.catalogue = SimpleNamespace(rerank_weight=tf.Variable(0.5))
        self.model_scores = model_scores
        self.cosine = {"p1": 0.9, "p2": 0.5, "p3": 0.1}

    def search_top(self, query, k, rerank):
        assert float(self.catalogue.rerank_weight.numpy()) == 1.0, "choosing reads the model's own scores"
        ids = sorted(self.cosine, key=lambda p: -self.model_scores[p])
        return {"product_ids": tf.constant([[p.encode() for p in ids]]),
                "scores": tf.constant([[self.model_scores[p] for p in ids]]),
                "retrieval_scores": tf.constant([[self.cosine[p] for p in ids]])}


def _catalogue(exact: str):
    """One valid query whose only exact product is `exact`."""
    example = SimpleNamespace(query_id="q1", query="shoe", product_id=exact, label=ESCI.codes.index("E"))
    return SimpleNamespace(label_set=ESCI, select=lambda split: [example] if split == "valid" else [],
                           root="shop")


def test_retrieval_right_and_the_model_wrong_gives_weight_0():
    search = FakeSearch({"p1": 0.1, "p2": 0.5, "p3": 0.9})  # the model puts the exact p1 last
    choice = choose_rerank_weight(search, _catalogue("p1"), k=1)
    assert choice["rerank_weight"] == 0.0 and float(search.catalogue.rerank_weight.numpy()) == 0.5  # left as it was
    assert choice["by_weight"]["1.0"]["ndcg@1"] == 0.0 and choice["by_weight"]["0.0"]["ndcg@1"] == 1.0
    assert "retrieval alone 1.000" in describe(choice)


def test_the_model_right_gives_the_smallest_weight_that_follows_it():
    search = FakeSearch({"p1": 0.0, "p2": 0.2, "p3": 1.0})  # the exact p3 is retrieval's last
    choice = choose_rerank_weight(search, _catalogue("p3"), k=1)
    # p3 first once w * 1.0 + (1 - w) * 0.1 beats p1's (1 - w) * 0.9, i.e. from w = 0.5 on
    assert choice["rerank_weight"] == 0.5 and set(choice["by_weight"]) == {str(w) for w in WEIGHTS}


def test_no_valid_query_with_an_exact_product_keeps_the_model_order():
    search = FakeSearch({"p1": 0.1, "p2": 0.5, "p3": 0.9})
    catalogue = SimpleNamespace(label_set=ESCI, select=lambda split: [], root="shop")
    choice = choose_rerank_weight(search, catalogue)
    assert choice["rerank_weight"] == 1.0 and "no valid query" in describe(choice)
