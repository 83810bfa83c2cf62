"""The bench's figures against their targets, and bench.md (figures, raw measurements, the
machine, definitions and side experiments).

Example:
>>> _fmt(0.12345), _fmt(12345.6), _fmt(None)
('0.123', '12,346', '—')
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# (comparison, target, definition). `cpp_vs_python_b1`'s bound is the bench's own choice.
TARGETS = {
    "pipeline_vs_training_consumption": (
        ">=",
        3.0,
        "tf.data examples/s (make_dataset, cache=True, parallel AUTOTUNE, batch 32, 2nd pass) / "
        "examples/s consumed by training the full default model with frozen backbones (Keras "
        "fit steps on preprocessed batches already in memory, steps after the first excluded)",
    ),
    "pipeline_parallel_vs_serial": (
        ">=",
        3.0,
        "tf.data examples/s (make_dataset: batched preprocessing, parallel AUTOTUNE, cached, 2nd pass) / "
        "the same files read and preprocessed one example per serial map call, no cache, then batched "
        "(keras.io multimodal style; bench.figures.serial_pipeline)",
    ),
    "training_flop_utilisation": (
        ">=",
        0.3,
        "default training (frozen backbones, model.head_model() on BackboneFeatures): achieved "
        "FLOP/s / best tf.matmul float32 FLOP/s measured in this run (FLOPs: see flops.formula)",
    ),
    "serving_overhead_b1": (
        "<=",
        1.15,
        "batch 1, p50: loaded SavedModel serving_default on raw strings + image bytes / the same "
        "Keras model in a tf.function on its already-preprocessed numeric inputs",
    ),
    "serving_overhead_b32": (
        "<=",
        1.15,
        "batch 32, median call time: serving_default on raw inputs / Keras model in a "
        "tf.function on preprocessed numeric inputs",
    ),
    "cached_image_features_time_ratio": (
        "<=",
        0.6,
        "scoring 100 products for one query, median: score_with_image_features (image tokens "
        "from embed_images computed beforehand) / serving_default on the same 100",
    ),
    "cpp_vs_python_b1": (
        "<=",
        1.15,
        "batch 1 mean ms/example of one request: esr_predict (C++ LoadSavedModel, "
        "run_cpp_client) / Python serving_default timed just before and after it "
        "(target chosen by the bench)",
    ),
}


def _figure(key: str, value: float | None, skipped: str | None = None) -> dict:
    op, target, definition = TARGETS[key]
    met = None if value is None else (value >= target if op == ">=" else value <= target)
    out = {
        "value": value,
        "target": {"op": op, "value": target},
        "met": met,
        "definition": definition,
    }
    if skipped:
        out["skipped"] = skipped
    return out


def _m(value: float | None, unit: str, definition: str) -> dict:
    return {"value": value, "unit": unit, "definition": definition}


def figures_and_measurements(raw: dict, flops: dict, peak: float, batch: int) -> tuple[dict, dict]:
    """The target figures and the measurements behind them (bench.json "figures", "measurements")."""
    consumer = raw["full_frozen"]["ex_s"]
    text_ex_s = raw["full_text_trainable"].get("ex_s")
    util = {
        "head_cached": raw["head"]["ex_s"] * flops["head_cached"] / peak,
        "full_frozen": consumer * flops["full_frozen"] / peak,
        "full_text_trainable": None
        if text_ex_s is None
        else text_ex_s * flops["full_text_trainable"] / peak,
    }
    return _target_figures(raw, util, batch), _measurements(raw, util, peak, batch)


def _cpp_ms(cpp: dict) -> float | None:
    return None if "skipped" in cpp else cpp["b1"]["ms_per_example"]


def _target_figures(raw: dict, util: dict, batch: int) -> dict:
    """Each `TARGETS` figure: its value from `raw`, the target and whether it is met."""
    p, sv, rr, cpp = raw["pipeline"], raw["serving"], raw["rerank"], raw["cpp"]
    consumer = raw["full_frozen"]["ex_s"]
    b1s, b1n = sv["b1_serving"], sv["b1_numeric"]
    bs, bn = sv[f"b{batch}_serving"], sv[f"b{batch}_numeric"]
    cpp_ms = _cpp_ms(cpp)
    return {
        "pipeline_vs_training_consumption": _figure(
            "pipeline_vs_training_consumption", p["parallel_cached_ex_s"] / consumer
        ),
        "pipeline_parallel_vs_serial": _figure(
            "pipeline_parallel_vs_serial", p["parallel_cached_ex_s"] / p["serial_ex_s"]
        ),
        "training_flop_utilisation": _figure("training_flop_utilisation", util["head_cached"]),
        "serving_overhead_b1": _figure("serving_overhead_b1", b1s["p50_ms"] / b1n["p50_ms"]),
        "serving_overhead_b32": _figure("serving_overhead_b32", bs["p50_ms"] / bn["p50_ms"]),
        "cached_image_features_time_ratio": _figure(
            "cached_image_features_time_ratio", rr["cached"]["p50_ms"] / rr["full"]["p50_ms"]
        ),
        "cpp_vs_python_b1": _figure(
            "cpp_vs_python_b1",
            None if cpp_ms is None else cpp_ms / cpp["python_b1_mean_ms"],
            cpp.get("skipped"),
        ),
    }


def _measurements(raw: dict, util: dict, peak: float, batch: int) -> dict:
    """The raw numbers behind the figures, with units (no targets)."""
    p, sv, rr, cpp = raw["pipeline"], raw["serving"], raw["rerank"], raw["cpp"]
    b1s, b1n, bs = sv["b1_serving"], sv["b1_numeric"], sv[f"b{batch}_serving"]
    rows = [
        ("pipeline_ex_s", p["parallel_cached_ex_s"], "ex/s", "parallel + cached, 2nd pass"),
        ("pipeline_serial_ex_s", p["serial_ex_s"], "ex/s", "serial map, no cache"),
        (
            "training_consumer_ex_s",
            raw["full_frozen"]["ex_s"],
            "ex/s",
            "full model, frozen backbones, numeric batches in memory",
        ),
        (
            "train_head_cached_ex_s",
            raw["head"]["ex_s"],
            "ex/s",
            "default: head_model() on BackboneFeatures",
        ),
        (
            "train_full_text_trainable_ex_s",
            raw["full_text_trainable"].get("ex_s"),
            "ex/s",
            raw["full_text_trainable"].get("skipped", "full model, text backbone trainable"),
        ),
        (
            "backbone_features_ms_per_example",
            raw["features"]["ms_per_example"],
            "ms",
            "BackboneFeatures.compute, one-off, incl. predict() tracing",
        ),
        (
            "matmul_peak_gflops",
            peak / 1e9,
            "GFLOP/s",
            "best float32 tf.matmul, start and pre-training",
        ),
        ("flop_utilisation_full_frozen", util["full_frozen"], "of peak", "no target"),
        (
            "flop_utilisation_full_text_trainable",
            util["full_text_trainable"],
            "of peak",
            "no target",
        ),
        ("serving_b1_p50_ms", b1s["p50_ms"], "ms", "serving_default, batch 1"),
        ("serving_b1_p99_ms", b1s["p99_ms"], "ms", "serving_default, batch 1"),
        ("numeric_b1_p50_ms", b1n["p50_ms"], "ms", "Keras model on numeric inputs, batch 1"),
        ("serving_b32_ex_s", batch * 1e3 / bs["p50_ms"], "ex/s", "serving_default, batch 32"),
        ("rerank_100_cached_ms", rr["cached"]["p50_ms"], "ms", "score_with_image_features"),
        ("rerank_100_full_ms", rr["full"]["p50_ms"], "ms", "serving_default"),
        ("cpp_b1_ms_per_example", _cpp_ms(cpp), "ms", cpp.get("skipped", "esr_predict, batch 1, mean")),
    ]
    return {key: _m(value, unit, text) for key, value, unit, text in rows}


def _fmt(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def markdown(result: dict) -> str:
    """The bench.md table (figure, value, target, met?), raw measurements and side experiments."""
    lines = ["| figure | value | target | met? |", "|---|---|---|---|"]
    for key, f in result["figures"].items():
        met = "skipped" if f["met"] is None else ("yes" if f["met"] else "**no**")
        target = f"{f['target']['op']} {f['target']['value']:g}"
        lines.append(f"| {key} | {_fmt(f['value'])} | {target} | {met} |")
    for key, m in result["measurements"].items():
        lines.append(f"| {key} | {_fmt(m['value'])} {m['unit']} | — | — |")
    machine = result["machine"]
    lines += [
        "",
        f"Machine: {machine['cpu_model']}, {machine['usable_cpus']} usable CPUs, "
        f"TF {machine['tensorflow']}, Keras {machine['keras']}; 1-min load average "
        f"{_load_range(result['load_average'])} during the run (other processes share the CPUs); "
        f"run {result['run_seconds']:.0f} s.",
    ]
    lines += ["", "Definitions:"] + [
        f"- {k}: {f['definition']}" for k, f in result["figures"].items()
    ]
    lines += [f"- FLOPs: {result['flops']['per_training_example']['formula']}"]
    lines += ["", "Side experiments (what moves the figures):"]
    for name, values in result["side_experiments"].items():
        if isinstance(values, dict):
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in values.items()}
            lines.append(f"- {name}: {json.dumps(shown, default=json_default)}")
        else:
            lines.append(f"- {name}: {values}")
    return "\n".join(lines)


def _load_range(loads: dict) -> str:
    values = [v[0] for v in loads.values() if v]
    return f"{min(values):.2f}-{max(values):.2f}" if values else "unknown"


def json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
