"""`search.blend`: how search orders what it re-ranks, chosen on valid (#31): the blends of the
model's score with retrieval's cosine, and the list heads fitted on the train queries' lists and,
cross-fitted, on the valid queries' own."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import tensorflow as tf

from esr_tf.labels import ESCI
from esr_tf.search.blend import FOLDS, LIST_HEAD, VALID_HEAD, WEIGHTS, choose_ranking, cross_fitted, describe
from esr_tf.search.list_head import fit_list_head
from esr_tf.search.ranking import blend_weights, rank_features, weights_of

COSINE = {"p1": 0.9, "p2": 0.5, "p3": 0.1}


class FakeSearch:
    """`search_top` over three products: retrieval ranks p1 > p2 > p3; the model's score per
    product is `model_scores`, its probability of Exact `p_exact` (the rest spread evenly)."""

    size = 3

    def __init__(self, model_scores: dict[str, float], p_exact: dict[str, float] | None = None) -> None:
        self.catalogue = SimpleNamespace(rank_weights=tf.Variable(blend_weights(0.5, 4)))
        self.model_scores, self.p_exact = model_scores, p_exact or dict.fromkeys(COSINE, 0.25)

    def search_top(self, query, k, rerank):
        assert np.array_equal(self.catalogue.rank_weights.numpy(), blend_weights(1.0, 4)), "reads the model's scores"
        ids = sorted(COSINE, key=lambda p: -self.model_scores[p])
        probabilities = [[self.p_exact[p], *[(1 - self.p_exact[p]) / 3] * 3] for p in ids]
        return {"product_ids": tf.constant([[p.encode() for p in ids]]),
                "scores": tf.constant([[self.model_scores[p] for p in ids]]),
                "probabilities": tf.constant([probabilities], tf.float32),
                "retrieval_scores": tf.constant([[COSINE[p] for p in ids]])}


def _catalogue(exact: str, train: bool = False):
    """One valid query (and with `train`, one train query) whose only exact product is `exact`."""
    def example(split):
        return SimpleNamespace(query_id=f"q-{split}", query="shoe", product_id=exact, label=ESCI.codes.index("E"))

    return SimpleNamespace(label_set=ESCI, root="shop",
                           select=lambda split: [example(split)] if split == "valid" or (train and split == "train")
                           else [])


def test_retrieval_right_and_the_model_wrong_gives_retrieval_order():
    search = FakeSearch({"p1": 0.1, "p2": 0.5, "p3": 0.9})  # the model puts the exact p1 last
    choice = choose_ranking(search, _catalogue("p1"), k=1)
    assert choice["ranking"] == "blend 0.0" and choice["rank_weights"] == blend_weights(0.0, 4).tolist()
    assert np.array_equal(search.catalogue.rank_weights.numpy(), blend_weights(0.5, 4))  # left as it was
    by = choice["by_candidate"]
    assert by["blend 1.0"]["ndcg@1"] == 0.0 and by["blend 0.0"]["ndcg@1"] == 1.0 and LIST_HEAD not in by
    assert "retrieval alone 1.000" in describe(choice)


def test_the_model_right_gives_the_smallest_weight_that_follows_it():
    search = FakeSearch({"p1": 0.0, "p2": 0.2, "p3": 1.0})  # the exact p3 is retrieval's last
    choice = choose_ranking(search, _catalogue("p3"), k=1)
    # p3 first once w * 1.0 + (1 - w) * 0.1 beats p1's (1 - w) * 0.9, i.e. from w = 0.5 on
    assert choice["ranking"] == "blend 0.5" and set(choice["by_candidate"]) == {f"blend {w}" for w in WEIGHTS}


def test_the_list_head_wins_where_only_a_label_probability_knows():
    """Score and cosine both put the exact p3 last; its probability of Exact says otherwise. No
    blend can follow that; the head fitted on the train query's list can, and valid picks it."""
    search = FakeSearch({"p1": 0.9, "p2": 0.5, "p3": 0.1}, p_exact={"p1": 0.1, "p2": 0.2, "p3": 0.9})
    choice = choose_ranking(search, _catalogue("p3", train=True), k=1)
    assert choice["ranking"] == LIST_HEAD and choice["list_head_train_queries"] == 1
    assert choice["by_candidate"][LIST_HEAD]["ndcg@1"] == 1.0
    assert max(v["ndcg@1"] for c, v in choice["by_candidate"].items() if c != LIST_HEAD) == 0.0
    assert "the list head 1.000" in describe(choice)


def test_no_valid_query_with_an_exact_product_keeps_the_model_order():
    search = FakeSearch({"p1": 0.1, "p2": 0.5, "p3": 0.9})
    catalogue = SimpleNamespace(label_set=ESCI, select=lambda split: [], root="shop")
    choice = choose_ranking(search, catalogue)
    assert choice["ranking"] == "blend 1.0" and "no valid query" in describe(choice)


def test_rank_features_and_recorded_choices():
    features = rank_features(tf.constant([0.5]), tf.constant([[1.0, 0.0, 0.0, 0.0]]), tf.constant([3.0])).numpy()
    assert features.shape == (1, 6) and features[0, 0] == 0.5 and features[0, 1] == 0.0 and features[0, -1] == 3.0
    assert np.isfinite(features).all(), "a probability of 0 gives a finite log"
    assert np.array_equal(weights_of(None, 4), blend_weights(1.0, 4))
    assert np.array_equal(weights_of({"rerank_weight": 0.3}, 4), blend_weights(0.3, 4))  # indexes from before
    assert weights_of({"rank_weights": [1, 2, 3, 4, 5, 6]}, 4).tolist() == [1, 2, 3, 4, 5, 6]
    assert describe({"rerank_weight": 0.3, "chosen_on": "x"}) == "re-ranking: blend 0.3 (x)"


def test_list_head_learns_the_judged_order_and_starts_from_retrieval():
    features = np.array([[[0.9, 0.0], [0.1, 1.0]], [[0.8, 0.1], [0.2, 0.9]]], np.float32)
    weights = fit_list_head(features, np.array([[0.0, 1.0], [0.0, 1.0]], np.float32))
    assert (features[:, 1] @ weights > features[:, 0] @ weights).all()
    assert np.array_equal(weights, fit_list_head(features, np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)))


def test_candidate_lists_come_in_retrieval_order():
    """The list head's target among equal gains is the list's order: retrieval's, not the model's."""
    from esr_tf.search.blend import candidate_lists

    search = FakeSearch({"p1": 0.1, "p2": 0.5, "p3": 0.9})  # the model's order is p3, p2, p1
    search.catalogue.rank_weights.assign(blend_weights(1.0, 4))
    ids, features = candidate_lists(search, {"q": ("shoe", {"p3": 3.0})}, 3)
    assert ids[0].tolist() == ["p1", "p2", "p3"] and np.allclose(features[0, :, 0], [0.9, 0.5, 0.1])


def test_the_valid_head_is_scored_on_folds_it_was_not_fitted_on():
    """Two queries of one fold want the low-cosine candidate, the other eight the high one: their
    out-of-fold keys follow the other folds (no leak of their own gains); the head that ships is
    fitted on all ten."""
    features = np.tile(np.array([[[0.9, 0.0], [0.1, 1.0]]], np.float32), (10, 1, 1))
    gains = np.tile(np.array([[1.0, 0.0]], np.float32), (10, 1))
    gains[[0, FOLDS]] = [0.0, 1.0]
    weights, keys = cross_fitted(features, gains)
    assert (keys[:, 0] > keys[:, 1]).all()
    assert np.array_equal(weights, fit_list_head(features, gains))


def test_the_valid_head_needs_enough_valid_queries_and_can_win():
    """Score and cosine both put the exact p3 last, its probability of Exact does not, and no train
    query is judged: with ten valid queries the cross-fitted head learns it from the other folds."""
    search = FakeSearch({"p1": 0.9, "p2": 0.5, "p3": 0.1}, p_exact={"p1": 0.1, "p2": 0.2, "p3": 0.9})
    examples = [SimpleNamespace(query_id=f"q{i}", query="shoe", product_id="p3", label=ESCI.codes.index("E"))
                for i in range(2 * FOLDS)]
    catalogue = SimpleNamespace(label_set=ESCI, root="shop", select=lambda split: examples if split == "valid" else [])
    choice = choose_ranking(search, catalogue, k=1)
    assert choice["ranking"] == VALID_HEAD and choice["by_candidate"][VALID_HEAD]["ndcg@1"] == 1.0
    assert describe(choice).endswith("the list head on valid (cross-fitted) 1.000)")
    few = SimpleNamespace(label_set=ESCI, root="shop", select=lambda split: examples[:-1] if split == "valid" else [])
    assert VALID_HEAD not in choose_ranking(search, few, k=1)["by_candidate"]
