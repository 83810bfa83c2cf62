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

from esr_tf.bench.report import (  # noqa: F401  (TARGETS: re-exported, as tests and callers import it here)
    TARGETS,
    figures_and_measurements,
    json_default,
    markdown,
)

# Repetitions per mode. The full run is ~400 CPU-seconds, most of it one-off work (export, `fit`
# and `predict` tracing, loading the SavedModel), so ~6 min on 2 quiet cores and ~12 min when other
# jobs share them; the side experiments run only inside `budget_s`. Quick with the tiny model:
# ~140 CPU-seconds.
# setting: (full run, quick run)
_SETTINGS = {
    "demo_size": ("default", "small"),
    "pipeline_examples": (1024, 256),
    "serial_examples": (512, 128),
    "feature_examples": (320, 64),
    "head_steps": ((2, 30), (1, 4)),
    "full_steps": ((1, 4), (1, 2)),
    "text_steps": ((1, 3), None),  # quick: skipped, it is another full `fit` trace
    "serve_b1": (60, 10),
    "serve_b32": (5, 2),
    "rerank_repeats": (3, 2),
    "cpp_repeats": (10, 2),
    "matmul_sizes": ((2048, 4096), (1024,)),
    "matmul_repeats": (2, 3),
    "forward_repeats": (3, 2),
    "budget_s": (540, 90),
}
SETTINGS = {quick: {name: pair[quick] for name, pair in _SETTINGS.items()} for quick in (False, True)}
BATCH = 32
RERANK_PRODUCTS = 100


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
    from esr_tf.bench import figures as fg  # TensorFlow: imported before the clock starts
    from esr_tf.bench.timing import StageClock, matmul_peak
    from esr_tf.models.builder import ModelConfig

    clock = StageClock()
    s = SETTINGS[bool(quick)]
    side = (not quick) if side_experiments is None else side_experiments
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = ModelConfig().replace(**dict(model_overrides or {}))
    raw: dict = {}

    clock.stage("matmul peak")
    peaks = [matmul_peak(s["matmul_sizes"], s["matmul_repeats"])]
    catalogue, columns, train_cols, model = _shop_and_model(clock, s, out, config, raw)
    rows, flops = _flops(clock, model)
    clock.stage(f"input pipeline ({len(columns['label'])} examples)")
    raw["pipeline"] = fg.measure_pipeline(
        model.preprocessor,
        columns,
        batch_size=BATCH,
        serial_columns=fg.subset(columns, s["serial_examples"]),
        uncached=side,
    )
    preprocess = _serving(clock, s, out, model, catalogue, columns, raw, cpp=cpp)
    clock.stage("matmul peak again, next to the training measurements")
    peaks.append(matmul_peak(s["matmul_sizes"], s["matmul_repeats"]))
    feats = _training(clock, s, model, train_cols, preprocess, raw)
    sides = _side_experiments(clock, s, model, config, feats, raw, enabled=side)
    clock.stage(None)
    result = _result(clock, s, config, catalogue, peaks, rows, flops, raw, quick=quick)
    result["side_experiments"] = sides
    result["run_seconds"] = clock.elapsed()
    _write(out, result)
    return result


def _shop_and_model(clock, s: dict, out: Path, config, raw: dict) -> tuple:
    """The demo shop (catalogue, benchmark columns, train columns) and the untrained model."""
    from esr_tf.bench import figures as fg
    from esr_tf.data import generate_demo_shop, load_catalogue
    from esr_tf.models.builder import build_relevance_model

    clock.stage(f"demo shop ({s['demo_size']}) and model")
    catalogue = load_catalogue(
        generate_demo_shop(out / "demo_shop", seed=0, size=s["demo_size"]),
        missing_images="no_image",
    )
    columns = fg.subset(catalogue.columns(), s["pipeline_examples"])
    train_cols = catalogue.columns("train")
    raw["train_examples"] = int(len(train_cols["label"]))
    return catalogue, columns, train_cols, build_relevance_model(config)


def _flops(clock, model) -> tuple[list[dict], dict]:
    """Forward FLOPs per branch, and per training example of each training mode."""
    from esr_tf.bench import figures as fg
    from esr_tf.models.summary import branch_summary

    clock.stage("FLOPs per branch (branch_summary)")
    rows = branch_summary(model)
    flops = fg.training_flops(rows)
    flops["formula"] = fg.FLOPS_FORMULA
    return rows, flops


def _serving(clock, s: dict, out: Path, model, catalogue, columns, raw: dict, *, cpp: bool):
    """Export, serving, re-ranking and the C++ client into `raw`; returns `graph_preprocess(model)`."""
    import tensorflow as tf

    from esr_tf.bench import serving as sv
    from esr_tf.export.saved_model import export_saved_model

    clock.stage("export (untrained weights: they do not change the speed)")
    export_dir = export_saved_model(
        model, out / "export", model_name="esr", version=1, overwrite=True
    )

    clock.stage("serving and re-ranking with cached image features")
    import tensorflow_text  # noqa: F401  (registers the TF-Text ops the export needs)

    loaded = tf.saved_model.load(str(export_dir))
    fields = model.preprocessor.product_fields
    requests = sv.raw_examples(columns, min(64, len(columns["label"])), fields=fields)
    preprocess = sv.graph_preprocess(model)
    raw["serving"] = sv.measure_serving(model, loaded, requests, preprocess, batch_size=BATCH,
                                        repeats_b1=s["serve_b1"], repeats_b=s["serve_b32"])
    products = sv.product_sample(catalogue.columns(), RERANK_PRODUCTS, fields)
    raw["rerank"] = sv.measure_rerank(
        loaded, products, query=str(columns["query"][0]), repeats=s["rerank_repeats"]
    )

    clock.stage("C++ client")
    raw["cpp"] = sv.measure_cpp(export_dir, loaded, requests, repeats=s["cpp_repeats"], enabled=cpp)
    return preprocess


def _training(clock, s: dict, model, train_cols, preprocess, raw: dict):
    """Backbone features, the cached head and the full model into `raw`; returns the features."""
    from esr_tf.bench import figures as fg

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
    return feats


def _side_experiments(clock, s: dict, model, config, feats, raw: dict, *, enabled: bool) -> dict:
    """The labelled "what moves the figures" experiments, inside the time budget."""
    from esr_tf.bench import figures as fg

    if not enabled:
        return {"skipped": "quick run (pass side_experiments=True)"}
    clock.stage("side experiments")
    return fg.side_experiments(
        model,
        config,
        feats,
        raw,
        batch_size=BATCH,
        repeats=s["forward_repeats"],
        head_steps=s["head_steps"],
        time_left=lambda: s["budget_s"] - clock.elapsed(),
    )


def _result(clock, s: dict, config, catalogue, peaks, rows, flops, raw, *, quick: bool) -> dict:
    """bench.json's content, but for the side experiments and the run's seconds."""
    from esr_tf.bench.timing import machine_info

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
    result["figures"], result["measurements"] = figures_and_measurements(raw, flops, peak, BATCH)
    return result


def _write(out: Path, result: dict) -> None:
    """bench.json and bench.md into `out`; prints the table."""
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=json_default))
    table = markdown(result)
    (out / "bench.md").write_text(table + "\n")
    print(table)
