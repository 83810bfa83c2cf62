"""Evaluation of a trained model on a catalogue split: metrics.json plus PNG plots
(`confusion_matrix.png`, `training_curves.png`, `predictions.png` and, for models with
cross-attention, `attention.png`: where the query's words look in each photo).

Predictions go through the full model and the shared tf.data pipeline (raw strings and image
bytes in), i.e. the same graph that is exported; or, given the split's frozen-backbone outputs
(`TrainResult.features`), through `model.head_model()` on them, which is the same computation
without running the backbones again.

Example:
>>> report = evaluate_model(model, catalogue, split="test", out_dir="esr_out")  # doctest: +SKIP
>>> report["macro_f1"], report["macro_f1_ci95"], report["ndcg@10"]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from esr_tf.data import Catalogue
from esr_tf.preprocessing.pipeline import make_dataset
from esr_tf.training.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from esr_tf.training.feature_cache import BackboneFeatures, length_multiple_for
from esr_tf.training.metrics import evaluation_report, write_metrics_json
from esr_tf.training.plots import (
    plot_attention_grid,
    plot_confusion_matrix,
    plot_prediction_grid,
    plot_training_curves,
)


def predict_columns(
    model, columns: dict[str, np.ndarray], *, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """`probabilities` and `score` for every example of `Catalogue.columns(...)`, in order."""
    ds = make_dataset(
        columns, model.preprocessor, batch_size=batch_size, with_labels=False, deterministic=True
    )
    out = model.predict(ds, verbose=0)
    return {"probabilities": np.asarray(out["probabilities"]), "score": np.asarray(out["score"])}


def predict_features(model, features: BackboneFeatures, *, batch_size: int = 64) -> dict[str, np.ndarray]:
    """`probabilities` and `score` from cached backbone outputs, via `model.head_model()`."""
    head = model.head_model()
    out = head.predict(
        features.dataset(batch_size=batch_size, with_labels=False, length_multiple=length_multiple_for(head)),
        verbose=0,
    )
    return {"probabilities": np.asarray(out["probabilities"]), "score": np.asarray(out["score"])}


def evaluate_model(
    model,
    catalogue: Catalogue,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    history: dict[str, list[float]] | None = None,
    predictions: dict[str, np.ndarray] | None = None,
    features: BackboneFeatures | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Scores `split`; with `out_dir`, writes `metrics.json` and plots there.

    `features`: the split's `BackboneFeatures` (same example order), to skip the backbones.
    `resamples` / `seed`: the query bootstrap behind each `<metric>_ci95` (0: no intervals).
    """
    columns = catalogue.columns(split, label_set=model.label_set)  # numbered as the model's outputs
    if not len(columns["label"]):
        raise ValueError(f"the catalogue at {catalogue.root} has no '{split}' examples to evaluate")
    if features is not None and len(features) != len(columns["label"]):
        raise ValueError(f"features hold {len(features)} examples, the '{split}' split {len(columns['label'])}")
    if predictions is None:
        predictions = predict_features(model, features) if features is not None else predict_columns(model, columns)
    report = evaluation_report(
        columns["label"],
        predictions["probabilities"],
        predictions["score"],
        columns["query_id"],
        model.label_set,
        resamples=resamples,
        seed=seed,
    )
    report["split"] = split
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_metrics_json(report, out / "metrics.json")
        plot_confusion_matrix(
            report["confusion_matrix"],
            model.label_set.names,
            out / "confusion_matrix.png",
            title=f"{split} split",
        )
        if history:
            plot_training_curves(history, out / "training_curves.png")
        plot_prediction_grid(
            _grid_rows(columns, predictions, model.label_set.names), out / "predictions.png"
        )
        if getattr(model, "has_attention", False):  # text_only / concat / gated have no map
            plot_attention_grid(_attention_rows(model, columns, predictions), out / "attention.png")
    return report


def _grid_rows(columns, predictions, names, count: int = 12) -> list[dict]:
    pred = predictions["probabilities"].argmax(axis=-1)
    step = max(1, len(pred) // count)
    return [
        {
            "query": str(columns["query"][i]),
            "title": str(columns["title"][i]),
            "image_path": str(columns["image"][i]),
            "true": names[int(columns["label"][i])],
            "pred": names[int(pred[i])],
            "score": float(predictions["score"][i]),
        }
        for i in range(0, len(pred), step)[:count]
    ]


def query_word_attention(explained: dict, row: int, special_token_ids) -> np.ndarray:
    """`[h, w]`: the mean attention of row `row`'s query words (segment 0, no [CLS] / [SEP] /
    [PAD]) in `RelevanceModel.explain` output; zeros when the query has no word."""
    ids = explained["token_ids"][row]
    words = (explained["segment_ids"][row] == 0) & ~np.isin(ids, list(special_token_ids))
    attention = explained["attention"][row]
    return attention[words].mean(axis=0) if words.any() else np.zeros(attention.shape[1:], attention.dtype)


def _attention_rows(model, columns, predictions, count: int = 6) -> list[dict]:
    """`plot_attention_grid` rows for `count` examples spread over the split, photos first."""
    paths = [str(p) for p in columns["image"]]
    order = [i for i, p in enumerate(paths) if p] + [i for i, p in enumerate(paths) if not p]
    picked = order[:: max(1, len(order) // count)][:count]
    raw = {k: [str(columns[k][i]) for i in picked] for k in ("query", *model.preprocessor.product_fields)}
    raw["image"] = [_image_bytes(paths[i]) for i in picked]
    explained = model.explain(raw)
    names = model.label_set.names
    pred = predictions["probabilities"].argmax(axis=-1)
    return [
        {
            "query": raw["query"][k],
            "title": raw["title"][k],
            "image_path": paths[i],
            "attention": query_word_attention(explained, k, model.special_token_ids),
            "true": names[int(columns["label"][i])],
            "pred": names[int(pred[i])],
        }
        for k, i in enumerate(picked)
    ]


def _image_bytes(path: str) -> bytes:
    """The photo's file bytes; b"" (no photo) for an empty path or a missing file."""
    return Path(path).read_bytes() if path and Path(path).is_file() else b""
