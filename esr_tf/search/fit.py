"""Fits the two-tower retrieval model (`models.retrieval`) on a catalogue's judged pairs.

Positives are the (query, exact product) pairs of the train split. Each batch scores every
query against all of the batch's positives (in-batch negatives) and one judged non-exact product
per pair (a hard negative: substitute, complement or irrelevant for that very query), with
keras_rs's `SamplingProbabilityCorrection` (popular products are in many batches: their logits
are lowered by log of their frequency) and `RemoveAccidentalHits` (a query's own positive seen
again as another column is not a negative). Metrics are recall@k of the exact products over the
whole catalogue (`keras_rs.layers.BruteForceRetrieval`), unjudged products counting as misses.

Example:
>>> result = fit_retrieval(model, catalogue, RetrievalConfig(epochs=5))  # doctest: +SKIP
>>> result.metrics["test"]["recall@100"]  # doctest: +SKIP
0.97
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import keras_rs
import numpy as np
import tensorflow as tf

from esr_tf.search.embeddings import photo_tokens, product_vectors, text_embeddings
from esr_tf.search.towers import build_two_tower, product_tower, query_tower
from esr_tf.training.config import RetrievalConfig

log = logging.getLogger("esr_tf.training")
RECALL_AT = (10, 100)


@dataclass
class RetrievalResult:
    towers: keras.Model  # `build_two_tower`: saved as retrieval.keras
    metrics: dict  # split -> recall@k, queries
    history: dict


@keras.saving.register_keras_serializable(package="esr_tf")
class RetrievalTask(keras.Model):
    """Training wrapper: softmax over in-batch and hard-negative candidates (not saved)."""

    def __init__(self, towers: keras.Model, temperature: float = 0.05, **kwargs) -> None:
        super().__init__(**kwargs)
        self.towers = towers
        self.temperature = temperature
        self.query_tower = query_tower(towers)
        self.product_tower = product_tower(towers)
        self.correction = keras_rs.layers.SamplingProbabilityCorrection()
        self.remove_hits = keras_rs.layers.RemoveAccidentalHits()

    def build(self, input_shape=None) -> None:
        self.built = True  # the towers are built functional models; the keras_rs layers are weightless

    def call(self, x, training=False):
        query = self.query_tower(x["query_embedding"], training=training)
        candidates = [self.product_tower({k: x[f"{side}_{k}"] for k in ("product_embedding", "image_vector",
                                          "has_image")}, training=training) for side in ("positive", "negative")]
        return keras.ops.matmul(query, keras.ops.transpose(keras.ops.concatenate(candidates, 0))) / self.temperature

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        batch = keras.ops.shape(y_pred)[0]
        labels = keras.ops.concatenate([keras.ops.eye(batch), keras.ops.zeros((batch, batch))], axis=1)
        ids = keras.ops.concatenate([x["positive_id"], x["negative_id"]], 0)
        probability = keras.ops.concatenate([x["positive_probability"], x["negative_probability"]], 0)
        logits = self.correction(y_pred, keras.ops.broadcast_to(probability[None, :], keras.ops.shape(y_pred)))
        logits = self.remove_hits(logits, labels, ids)
        return keras.ops.mean(keras.losses.categorical_crossentropy(labels, logits, from_logits=True))

    def get_config(self) -> dict:
        return {**super().get_config(), "towers": keras.saving.serialize_keras_object(self.towers),
                "temperature": self.temperature}

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["towers"] = keras.saving.deserialize_keras_object(config["towers"])
        return cls(**config)


def _pairs(catalogue, index: dict[str, int], rng: np.random.Generator, copies: int) -> dict[str, np.ndarray]:
    """(query text, positive row, negative row) for each train (query, exact product) pair."""
    exact = int(np.argmax(catalogue.label_set.gains))
    by_query: dict[str, tuple[list[int], list[int]]] = {}
    queries: dict[str, str] = {}
    for e in catalogue.select("train"):
        pos, neg = by_query.setdefault(e.query_id, ([], []))
        (pos if e.label == exact else neg).append(index[e.product_id])
        queries[e.query_id] = e.query
    rows = {"query": [], "positive": [], "negative": []}
    for qid, (pos, neg) in by_query.items():
        for p in pos:
            for _ in range(copies):
                rows["query"].append(queries[qid])
                rows["positive"].append(p)
                rows["negative"].append(int(rng.choice(neg)) if neg else int(rng.integers(len(index))))
    return {k: np.asarray(v) for k, v in rows.items()}


def _training_data(catalogue, vectors: dict, query_vectors: dict, pairs: dict) -> dict[str, np.ndarray]:
    """Model inputs for `RetrievalTask`: each side's product-tower inputs, ids, frequencies."""
    counts = np.bincount(np.concatenate([pairs["positive"], pairs["negative"]]), minlength=len(vectors["has_image"]))
    frequency = counts / max(1, counts.max())  # relative: a constant factor cancels in softmax
    x = {"query_embedding": np.stack([query_vectors[q] for q in pairs["query"]])}
    for side in ("positive", "negative"):
        rows = pairs[side]
        x.update({f"{side}_{k}": v[rows] for k, v in vectors.items()})
        x[f"{side}_id"] = rows.astype(np.int32)
        x[f"{side}_probability"] = frequency[rows].astype(np.float32)
    return x


def recall_at_k(product_vecs: np.ndarray, query_vecs: np.ndarray, relevant: list[set[int]],
                ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """Mean over queries of |exact products in the top k of the whole catalogue| / |exact|."""
    k_max = min(max(ks), len(product_vecs))
    retrieval = keras_rs.layers.BruteForceRetrieval(k=k_max, return_scores=False)
    retrieval.update_candidates(product_vecs)
    top = np.asarray(retrieval(query_vecs)) if len(query_vecs) else np.zeros((0, k_max), int)
    out = {}
    for k in ks:
        hits = [len(rel & set(row[:k].tolist())) / len(rel) for row, rel in zip(top, relevant, strict=True)]
        out[f"recall@{k}"] = float(np.mean(hits)) if hits else float("nan")
    out["queries"] = len(relevant)
    return out


def _split_recall(model, catalogue, split: str, index: dict[str, int], towers: keras.Model, vectors: dict) -> dict:
    exact = int(np.argmax(catalogue.label_set.gains))
    relevant: dict[str, set[int]] = {}
    texts: dict[str, str] = {}
    for e in catalogue.select(split):
        texts[e.query_id] = e.query
        if e.label == exact:
            relevant.setdefault(e.query_id, set()).add(index[e.product_id])
    qids = sorted(relevant)
    q = query_tower(towers).predict(text_embeddings(model, [texts[q] for q in qids]), verbose=0) if qids else (
        np.zeros((0, 1)))
    p = product_tower(towers).predict(vectors, verbose=0, batch_size=1024)
    return recall_at_k(p, q, [relevant[q] for q in qids])


def fit_retrieval(model, catalogue, config: RetrievalConfig, *, seed: int = 0, out_dir: str | Path | None = None,
                  verbose: int = 0) -> RetrievalResult:
    """Fits the towers over `model`'s frozen BERT and image tokens; saves `retrieval.keras` and
    `retrieval.json` (config and recall@k per split) to `out_dir` when given."""
    ids = sorted(catalogue.products)
    index = {pid: i for i, pid in enumerate(ids)}
    products = [catalogue.products[p] for p in ids]
    tokens, rows = photo_tokens(model, [p.image for p in products])
    vectors = product_vectors(model, [p.title for p in products], tokens, rows)
    rng = np.random.default_rng(seed)
    pairs = _pairs(catalogue, index, rng, config.negatives_per_positive)
    if not len(pairs["query"]):
        raise ValueError(f"{catalogue.root}: no exact (query, product) pairs in the train split to fit retrieval on")
    unique = sorted(set(pairs["query"].tolist()))
    query_vectors = dict(zip(unique, text_embeddings(model, unique), strict=True))
    x = _training_data(catalogue, vectors, query_vectors, pairs)

    keras.utils.set_random_seed(seed)
    towers = build_two_tower(text_dim=vectors["product_embedding"].shape[1], image_dim=vectors["image_vector"].shape[1],
                             embedding_dim=config.embedding_dim)
    task = RetrievalTask(towers, config.temperature)
    task.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    batch = min(config.batch_size, len(pairs["query"]))
    ds = (tf.data.Dataset.from_tensor_slices(x).shuffle(len(pairs["query"]), seed=seed)
          .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    history = task.fit(ds, epochs=config.epochs, verbose=verbose, shuffle=False).history
    metrics = {s: _split_recall(model, catalogue, s, index, towers, vectors) for s in ("train", "valid", "test")
               if catalogue.select(s)}
    if out_dir is not None:
        _save(towers, metrics, config, Path(out_dir))
    log.info("retrieval recall over the whole catalogue: %s", json.dumps(metrics))
    return RetrievalResult(towers, metrics, history)


def fit_for_run(config, result, *, multi_worker: bool = False) -> dict:
    """After `train`: fits and saves the towers next to `model.keras`; returns recall per split."""
    if multi_worker:  # seconds long and one worker's job: not worth a collective fit
        log.info("multi-worker run: fit the retrieval model afterwards (training.retrieval.fit_retrieval)")
        return {}
    return fit_retrieval(result.model, result.catalogue, config.retrieval, seed=config.seed,
                         out_dir=result.out_dir).metrics


def _save(towers: keras.Model, metrics: dict, config: RetrievalConfig, out: Path) -> None:
    tmp = out / "retrieval.keras.partial.keras"
    towers.save(tmp)
    tmp.replace(out / "retrieval.keras")
    report = {"config": config.__dict__, "recall": metrics,
              "note": "recall@k of the judged exact products over the whole catalogue; "
                      "unjudged products count as misses"}
    (out / "retrieval.json").write_text(json.dumps(report, indent=2))
