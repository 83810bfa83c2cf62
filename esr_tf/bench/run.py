"""`run_benchmarks`: every esr_tf speed figure measured in one run, with its target.

The machine may be shared and noisy, so each target is a ratio of two numbers measured side by
side in this one process (paired calls interleaved), never an absolute time. Results go to
`<out>/bench.json` (figures, raw measurements, the machine) and `<out>/bench.md` (the table).

Example:
>>> result = run_benchmarks("esr_bench", quick=True,
...                         model_overrides={"text": "tiny", "image": "tiny"})  # doctest: +SKIP
>>> sorted(result["figures"])[:2]  # doctest: +SKIP
['cached_image_features_time_ratio', 'cpp_vs_python_b1']
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

# Repetitions per mode. The full run is ~400 CPU-seconds, most of it one-off work (export, `fit`
# and `predict` tracing, loading the SavedModel), so ~6 min on 2 quiet cores and ~12 min when other
# jobs share them; the side experiments run only inside `budget_s`. Quick with the tiny model:
# ~140 CPU-seconds.
SETTINGS = {
    False: {
        "demo_size": "default",
        "pipeline_examples": 1024,
        "serial_examples": 512,
        "feature_examples": 320,
        "head_steps": (2, 30),
        "full_steps": (1, 4),
        "text_steps": (1, 3),
        "serve_b1": 60,
        "serve_b32": 5,
        "rerank_repeats": 3,
        "cpp_repeats": 10,
        "matmul_sizes": (2048, 4096),
        "matmul_repeats": 2,
        "forward_repeats": 3,
        "budget_s": 540,
    },
    True: {
        "demo_size": "small",
        "pipeline_examples": 256,
        "serial_examples": 128,
        "feature_examples": 64,
        "head_steps": (1, 4),
        "full_steps": (1, 2),
        "text_steps": None,  # another full `fit` trace; skipped when quick
        "serve_b1": 10,
        "serve_b32": 2,
        "rerank_repeats": 2,
        "cpp_repeats": 2,
        "matmul_sizes": (1024,),
        "matmul_repeats": 3,
        "forward_repeats": 2,
        "budget_s": 90,
    },
}
BATCH = 32
RERANK_PRODUCTS = 100
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


def run_benchmarks(
    out_dir: str | Path,
    quick: bool = False,
    *,
    model_overrides: Mapping | None = None,
    side_experiments: bool | None = None,
    cpp: bool = True,
) -> dict:
    """Measures every figure in one run; writes `bench.json` and `bench.md`; prints the table.

    Args:
        out_dir: where the demo shop, the export and the results go.
        quick: the "small" demo shop, few repetitions, no text-trainable training run.
        model_overrides: `ModelConfig` fields to change, e.g. `{"text": "tiny", "image": "tiny"}`
            for random-init test backbones that need no weight wheels.
        side_experiments: also run the labelled "what moves the figures" experiments (default:
            on unless `quick`); the costly ones run only while the time budget allows.
        cpp: measure the C++ client (skipped with a reason when no toolchain).

    Returns the dict written to bench.json.
    """
    import tensorflow as tf

    from esr_tf.bench import figures as fg
    from esr_tf.bench.timing import StageClock, machine_info, matmul_peak
    from esr_tf.data import generate_demo_shop, load_catalogue
    from esr_tf.export.saved_model import export_saved_model
    from esr_tf.models.builder import ModelConfig, build_relevance_model
    from esr_tf.models.summary import branch_summary

    clock = StageClock()
    s = SETTINGS[bool(quick)]
    side = (not quick) if side_experiments is None else side_experiments
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = ModelConfig().replace(**dict(model_overrides or {}))
    raw: dict = {}

    clock.stage("matmul peak")
    peaks = [matmul_peak(s["matmul_sizes"], s["matmul_repeats"])]

    clock.stage(f"demo shop ({s['demo_size']}) and model")
    catalogue = load_catalogue(
        generate_demo_shop(out / "demo_shop", seed=0, size=s["demo_size"]),
        missing_images="no_image",
    )
    columns = fg.subset(catalogue.columns(), s["pipeline_examples"])
    train_cols = catalogue.columns("train")
    raw["train_examples"] = int(len(train_cols["label"]))
    model = build_relevance_model(config)

    clock.stage("FLOPs per branch (branch_summary)")
    rows = branch_summary(model)
    flops = fg.training_flops(rows)
    flops["formula"] = fg.FLOPS_FORMULA

    clock.stage(f"input pipeline ({len(columns['label'])} examples)")
    raw["pipeline"] = fg.measure_pipeline(
        model.preprocessor,
        columns,
        batch_size=BATCH,
        serial_columns=fg.subset(columns, s["serial_examples"]),
        uncached=side,
    )

    clock.stage("export (untrained weights: they do not change the speed)")
    export_dir = export_saved_model(
        model, out / "export", model_name="esr", version=1, overwrite=True
    )

    clock.stage("serving and re-ranking with cached image features")
    import tensorflow_text  # noqa: F401  (registers the TF-Text ops the export needs)

    loaded = tf.saved_model.load(str(export_dir))
    requests = fg.raw_examples(columns, min(64, len(columns["label"])))
    preprocess = fg.graph_preprocess(model)
    raw["serving"] = fg.measure_serving(
        model,
        loaded,
        requests,
        preprocess,
        batch_size=BATCH,
        repeats_b1=s["serve_b1"],
        repeats_b=s["serve_b32"],
    )
    products = fg.product_sample(catalogue.columns(), RERANK_PRODUCTS)
    raw["rerank"] = fg.measure_rerank(
        loaded, products, query=str(columns["query"][0]), repeats=s["rerank_repeats"]
    )

    clock.stage("C++ client")
    raw["cpp"] = fg.measure_cpp(export_dir, loaded, requests, repeats=s["cpp_repeats"], enabled=cpp)

    clock.stage("matmul peak again, next to the training measurements")
    peaks.append(matmul_peak(s["matmul_sizes"], s["matmul_repeats"]))

    clock.stage("training: backbone features, cached head, full model")
    feats, raw["features"] = fg.compute_features(
        model, fg.subset(train_cols, s["feature_examples"])
    )
    w, n = s["head_steps"]
    raw["head"] = fg.measure_head_training(model, feats, batch_size=BATCH, warmup=w, steps=n)
    numeric = fg.numeric_batches(model, train_cols, preprocess, batch_size=BATCH, num_batches=4)
    w, n = s["full_steps"]
    raw["full_frozen"] = fg.measure_full_training(
        model, numeric, batch_size=BATCH, warmup=w, steps=n, train_text=False
    )
    if s["text_steps"]:
        w, n = s["text_steps"]
        raw["full_text_trainable"] = fg.measure_full_training(
            model, numeric, batch_size=BATCH, warmup=w, steps=n, train_text=True
        )
    else:
        raw["full_text_trainable"] = {"skipped": "quick run"}

    sides: dict = {"skipped": "quick run (pass side_experiments=True)"}
    if side:
        clock.stage("side experiments")
        sides = fg.side_experiments(
            model,
            config,
            feats,
            raw,
            batch_size=BATCH,
            repeats=s["forward_repeats"],
            head_steps=s["head_steps"],
            time_left=lambda: s["budget_s"] - clock.elapsed(),
        )
    clock.stage(None)
    peak = max(p["peak_flops"] for p in peaks)

    result = {
        "machine": machine_info(),
        "quick": bool(quick),
        "settings": dict(s),
        "model_config": dataclasses.asdict(config),
        "demo_shop": {"size": s["demo_size"], "examples": int(len(catalogue.columns()["label"]))},
        "matmul": {"runs": peaks, "peak_gflops": peak / 1e9},
        "flops": {"branches": rows, "per_training_example": flops},
        "export_dir": "export/esr/1",
        "stage_seconds": clock.seconds,
        "stage_cpu_seconds": clock.cpu_seconds,
        "load_average": clock.loads,
        "raw": raw,
    }
    result["machine"]["load_average_start"] = clock.loads["start"]
    result["figures"], result["measurements"] = _figures(raw, flops, peak)
    result["side_experiments"] = sides
    result["run_seconds"] = clock.elapsed()
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=_json_default))
    table = markdown(result)
    (out / "bench.md").write_text(table + "\n")
    print(table)
    return result


def _figures(raw: dict, flops: dict, peak: float) -> tuple[dict, dict]:
    p, sv, rr, cpp = raw["pipeline"], raw["serving"], raw["rerank"], raw["cpp"]
    consumer = raw["full_frozen"]["ex_s"]
    text_ex_s = raw["full_text_trainable"].get("ex_s")
    util = {
        "head_cached": raw["head"]["ex_s"] * flops["head_cached"] / peak,
        "full_frozen": consumer * flops["full_frozen"] / peak,
        "full_text_trainable": None
        if text_ex_s is None
        else text_ex_s * flops["full_text_trainable"] / peak,
    }
    b1s, b1n = sv["b1_serving"], sv["b1_numeric"]
    bs, bn = sv[f"b{BATCH}_serving"], sv[f"b{BATCH}_numeric"]
    cpp_ms = None if "skipped" in cpp else cpp["b1"]["ms_per_example"]
    figures = {
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
    rows = [
        ("pipeline_ex_s", p["parallel_cached_ex_s"], "ex/s", "parallel + cached, 2nd pass"),
        ("pipeline_serial_ex_s", p["serial_ex_s"], "ex/s", "serial map, no cache"),
        (
            "training_consumer_ex_s",
            consumer,
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
            text_ex_s,
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
        ("serving_b32_ex_s", BATCH * 1e3 / bs["p50_ms"], "ex/s", "serving_default, batch 32"),
        ("rerank_100_cached_ms", rr["cached"]["p50_ms"], "ms", "score_with_image_features"),
        ("rerank_100_full_ms", rr["full"]["p50_ms"], "ms", "serving_default"),
        ("cpp_b1_ms_per_example", cpp_ms, "ms", cpp.get("skipped", "esr_predict, batch 1, mean")),
    ]
    return figures, {key: _m(value, unit, text) for key, value, unit, text in rows}


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
            lines.append(f"- {name}: {json.dumps(shown, default=_json_default)}")
        else:
            lines.append(f"- {name}: {values}")
    return "\n".join(lines)


def _load_range(loads: dict) -> str:
    values = [v[0] for v in loads.values() if v]
    return f"{min(values):.2f}-{max(values):.2f}" if values else "unknown"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
