"""`esr-tf bench --suite text`: what the product fields and the sequence length cost (#17).

On a catalogue's judged pairs (the small demo shop by default, or `--data`), the same text
backbone packs and encodes each pair under several `(product_text, sequence_length)` settings,
side by side in one process:

- tokens per pair (mean real length) and the share of pairs the packer cuts (longer than
  `sequence_length` with every field at its budget); fields the catalogue leaves empty add none;
- serving: ms per pair of BERT over request batches padded to `sequence_length` (what the
  SavedModel's `serving_default` runs), timed interleaved across the settings;
- feature pass: ms per pair of `encode_text_rows` (batches cut to their longest pair, what
  training's frozen-backbone pass runs).

What they bring in quality (macro-F1) comes from training, not from this suite: `esr-tf ablate
--set model.product_text=...` per setting (docs/benchmarks.md).

Results go to `<out>/text.json` and `<out>/text.md`, with the load average.

Example:
>>> result = run_text_bench("esr_bench", quick=True, model_overrides=TINY_MODEL)  # doctest: +SKIP
>>> [row["name"] for row in result["rows"]]  # doctest: +SKIP
['title @32', 'title+brand+color @32', 'title+brand+color @48']
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.bench.timing import load_average, machine_info, summarize
from esr_tf.constants import DEFAULT_PRODUCT_TEXT

# (name, product_text, sequence_length): what a title-only model read before #17, the default,
# and the default with room for long titles.
SETTINGS = (
    ("title @32", {"title": 32}, 32),
    ("title+brand+color @32", DEFAULT_PRODUCT_TEXT, 32),
    ("title+brand+color @48", {"title": 32, "brand": 8, "color": 8}, 48),
)
BATCH = 32


def _preprocessor(base, product_text: Mapping[str, int], sequence_length: int):
    from esr_tf.preprocessing.relevance_preprocessor import RelevancePreprocessor

    return RelevancePreprocessor(base.tokenizer, sequence_length=sequence_length, product_text=dict(product_text),
                                 image_size=base.image_size, image_value_range=base.image_value_range)


def _cut_share(pre, columns) -> float:
    """Share of pairs whose query + budgeted fields do not fit `sequence_length`."""
    from esr_tf.training.encoder_pass import tokenize_columns

    wide = _preprocessor(pre, pre.product_text, 4096)
    ids = tokenize_columns(wide, columns, 256)
    return float(np.mean(ids["padding_mask"].sum(axis=1) > pre.sequence_length))


def _setting_row(model, pre, name: str, columns, pairs: int) -> tuple[dict, dict]:
    from esr_tf.training.encoder_pass import encode_text_rows, tokenize_columns, traced_text_encoder

    ids = tokenize_columns(pre, {k: np.asarray(v)[:pairs] for k, v in columns.items()}, 256)
    encode = traced_text_encoder(model.encode_text)
    encode_text_rows(model.encode_text, {k: v[:BATCH] for k, v in ids.items()}, BATCH, traced=encode)  # trace
    start = time.perf_counter()
    encode_text_rows(model.encode_text, ids, BATCH, traced=encode)
    feature_ms = 1e3 * (time.perf_counter() - start) / len(ids["token_ids"])
    row = {"name": name, "product_text": dict(pre.product_text), "sequence_length": pre.sequence_length,
           "tokens_per_pair": float(ids["padding_mask"].sum(axis=1).mean()),
           "cut_share": _cut_share(pre, columns), "feature_pass_ms_per_pair": feature_ms}
    batch = {k: tf.constant(v[:BATCH]) for k, v in ids.items()}
    return row, {"encode": encode, "batch": batch}


def run_text_bench(out_dir: str | Path, quick: bool = False, *, data: str | Path | None = None,
                   model_overrides: Mapping | None = None) -> dict:
    """Runs the text suite; writes and returns `text.json` (see the module docstring)."""
    from esr_tf.data import generate_demo_shop, load_catalogue
    from esr_tf.models.builder import ModelConfig, build_relevance_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_relevance_model(ModelConfig(**dict(model_overrides or {})))
    with tempfile.TemporaryDirectory() as tmp:
        folder = data or generate_demo_shop(Path(tmp) / "shop", seed=0, size="tiny" if quick else "small")
        columns = load_catalogue(folder, missing_images="no_image").columns()
    load = {"before": load_average()}
    pairs = 256 if quick else 2048
    rows, calls = [], []
    for name, product_text, length in SETTINGS:
        row, call = _setting_row(model, _preprocessor(model.preprocessor, product_text, length), name, columns, pairs)
        rows.append(row)
        calls.append(call)
    times = _interleaved_serving(calls, repeats=5 if quick else 30)
    for row, t in zip(rows, times, strict=True):
        stats = summarize(t)
        row["serving_ms_per_pair"] = stats["p50_ms"] / BATCH
    load["after"] = load_average()
    result = {"rows": rows, "batch": BATCH, "pairs": min(pairs, len(columns["query"])), "load_average": load,
              "data": str(data) if data else "demo shop (small)", "machine": machine_info(), "quick": quick}
    (out / "text.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (out / "text.md").write_text(text_markdown(result))
    return result


def _interleaved_serving(calls: list[dict], repeats: int) -> list[list[float]]:
    """BERT over one padded request batch per setting, the settings taking turns call by call."""
    for call in calls:
        call["encode"](call["batch"])["sequence_output"].numpy()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, t in zip(calls, times, strict=True):
            start = time.perf_counter()
            call["encode"](call["batch"])["sequence_output"].numpy()
            t.append(time.perf_counter() - start)
    return times


def text_markdown(result: dict) -> str:
    lines = ["| setting | tokens / pair | pairs cut | serving ms / pair (batch 32, padded) | "
             "feature pass ms / pair |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['tokens_per_pair']:.1f} | {100 * r['cut_share']:.1f} % | "
                     f"{r['serving_ms_per_pair']:.2f} | {r['feature_pass_ms_per_pair']:.2f} |")
    lines.append(f"\n{result['pairs']} pairs of {result['data']}; load average before / after: "
                 f"{result['load_average']['before']} / {result['load_average']['after']}.")
    return "\n".join(lines) + "\n"
