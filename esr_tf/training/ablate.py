"""`esr-tf ablate`: every fusion mode on the same data, split and budget, over one or more seeds.

Each mode is trained once per seed (`<out>/<mode>/seed_<s>/`: model, metrics.json, plots); the
catalogue is loaded (for `data: demo`, generated with the config's seed) once, so every seed
sees the same split and only the training seed varies. `ablation.json` keeps every run, and
`ablation.md` shows per mode the mean ± sd over seeds with a 95 % interval, and the paired
difference of each fusion mode to the best single modality (`text_only` or `image_only`, by
mean macro-F1).

Intervals come from one query bootstrap of the test split (`esr_tf.training.bootstrap`): every
run is resampled with the same query draws, a mode's interval is that of its mean over seeds,
and a difference's is that of the mean over seeds of the per-resample difference (paired by
seed and query).

Example:
>>> result = ablate(parse_config({"demo_size": "tiny", "epochs": 1}), seeds=(0, 1))  # doctest: +SKIP
>>> print(markdown_table(result))  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from esr_tf.training.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, percentile_interval
from esr_tf.training.config import TrainConfig
from esr_tf.training.evaluate import evaluate_model, predict_columns, predict_features
from esr_tf.training.metrics import INTERVAL_METRICS, REPORT_COLUMNS, QueryStats, query_stats
from esr_tf.training.trainer import load_training_data, train

ABLATION_MODES = ("text_only", "image_only", "concat", "cross_attention")
SINGLE_MODALITIES = ("text_only", "image_only")
QUERY_ONLY_MODES = ("image_only",)  # their text features are the query's alone
# Compared besides the best single modality: the fusion must never be worse than its concat path (#29).
EXTRA_PAIRS = (("cross_attention", "concat"),)
TRAIN_ACCURACY = "probabilities_accuracy"  # the last epoch's, from keras' history


def ablate(
    config: TrainConfig,
    modes: tuple[str, ...] = ABLATION_MODES,
    *,
    seeds: tuple[int, ...] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    bootstrap_seed: int = DEFAULT_SEED,
    verbose: int = 0,
    overwrite: bool = False,
    split: str = "test",
) -> dict:
    """Trains and evaluates each mode once per seed (default: the config's seed); writes
    `ablation.json` / `ablation.md` and returns what `ablation.json` holds: `runs`, `summary`
    (per mode) and `differences` (fusion modes vs the best single modality).

    Modes with the same encoders share one pass of the frozen backbones within a seed (`concat`
    and `cross_attention`; `text_only` reads no photo, `image_only`'s BERT sees only the query),
    and `text_only` reuses an earlier seed's when the encoders match (pretrained weights). Photo
    modes of another seed are not offered: their colour-hidden training copies differ by seed.
    `overwrite`: start every run fresh (see `train`). `split`: where runs are scored: `valid`
    to choose between variants, `test` once for the chosen one.
    """
    seeds = (config.seed,) if seeds is None else tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not modes or len(set(modes)) != len(modes):
        raise ValueError(f"ablate: seeds {seeds} and modes {modes} must be non-empty and distinct")
    out = Path(config.out_dir)
    catalogue = load_training_data(config)  # once: every seed trains on the same split
    rows, stats = {}, {}

    def run_one(mode: str, seed: int, features: dict) -> dict:
        run_dir = out / mode / f"seed_{seed}"
        run = TrainConfig(  # no retrieval model: the ablation compares the fusion modes only
            **{**config.__dict__, "seed": seed, "out_dir": str(run_dir), "model": config.model.replace(fusion=mode),
               "retrieval": replace(config.retrieval, epochs=0)}
        )
        result = train(run, catalogue=catalogue, features=features or None, verbose=verbose, overwrite=overwrite)
        report, stats[mode, seed] = _evaluate(result, catalogue, run_dir, resamples, bootstrap_seed, split)
        rows[mode, seed] = _run_row(mode, seed, result, run_dir, report)
        kept = {} if mode in QUERY_ONLY_MODES else result.features  # image_only's BERT read the query alone
        del result  # its model: RAM for the next run's (#33)
        gc.collect()  # Keras models hold reference cycles: freed now, not at some later collection
        return kept

    # text_only first for every seed (a later seed reuses its features: the same encoders), so
    # they are dropped before any photo mode runs. The two-seed peak did not move with it (#33).
    text_features: dict = {}
    for seed in seeds if "text_only" in modes else ():
        text_features = run_one("text_only", seed, text_features)
    del text_features
    for seed in seeds:
        shared: dict = {}  # the latest frozen-backbone outputs with photos, for the next mode
        for mode in (m for m in modes if m != "text_only"):
            shared = run_one(mode, seed, shared)
        del shared
        gc.collect()
    runs = [rows[mode, seed] for seed in seeds for mode in modes]  # seed-major, as the modes were given
    result = {**summarise(runs, stats, resamples=resamples, bootstrap_seed=bootstrap_seed), "split": split}
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown_table(result) + "\n")
    return result


def _run_row(mode: str, seed: int, result, run_dir: Path, report: dict) -> dict:
    """One run of `ablation.json`: its mode, seed, epochs, last train accuracy and test metrics."""
    return {
        "fusion": mode,
        "seed": seed,
        "epochs": result.epochs_run,
        "train_accuracy": round(float((result.history.get(TRAIN_ACCURACY) or [np.nan])[-1]), 6),
        "out_dir": str(run_dir),
        **{k: report[k] for k in REPORT_COLUMNS},
        **{f"{k}_ci95": report[f"{k}_ci95"] for k in INTERVAL_METRICS},
    }


def _evaluate(result, catalogue, run_dir: Path, resamples: int, seed: int,
              split: str = "test") -> tuple[dict, QueryStats]:
    """metrics.json of `split`, and its per-query sums for the paired bootstrap."""
    test_features = result.features.get(split)
    label_set = result.model.label_set
    columns = catalogue.columns(split, label_set=label_set)  # numbered as the model's outputs
    if test_features is not None:
        predictions = predict_features(result.model, test_features)
    else:
        predictions = predict_columns(result.model, columns)
    report = evaluate_model(
        result.model, catalogue, split=split, out_dir=run_dir, predictions=predictions, resamples=resamples, seed=seed
    )
    probabilities, scores = predictions["probabilities"], predictions["score"]
    stats = query_stats(columns["query_id"], columns["label"], probabilities, scores, label_set=label_set)
    return report, stats


def _spread(values: list[float]) -> dict:
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"mean": round(mean, 6), "sd": None if sd is None else round(sd, 6)}


def summarise(
    runs: list[dict], stats: dict, *, resamples: int = DEFAULT_RESAMPLES, bootstrap_seed: int = DEFAULT_SEED
) -> dict:
    """Per-mode mean ± sd and 95 % intervals, and paired differences to the best single modality.

    `runs`: one dict per (mode, seed) with the `INTERVAL_METRICS`; `stats`: their `QueryStats`
    by `(mode, seed)`, all on the same queries.
    """
    modes = list(dict.fromkeys(r["fusion"] for r in runs))
    seeds = list(dict.fromkeys(r["seed"] for r in runs))
    first = next(iter(stats.values()))
    if any(not np.array_equal(s.ranking.queries, first.ranking.queries) for s in stats.values()):
        raise ValueError("ablate: runs were scored on different queries; the bootstrap cannot pair them")
    samples = {key: s.resample(resamples, bootstrap_seed) for key, s in stats.items()}  # same draws
    value = {(r["fusion"], r["seed"]): r for r in runs}

    summary = []
    for mode in modes:
        row: dict = {"fusion": mode, "runs": len(seeds), "epochs": [value[mode, s]["epochs"] for s in seeds]}
        row["train_accuracy"] = _spread([value[mode, s].get("train_accuracy", np.nan) for s in seeds])
        for m in INTERVAL_METRICS:
            seed_mean = np.mean([samples[mode, s][m] for s in seeds], axis=0)
            row[m] = {**_spread([value[mode, s][m] for s in seeds]), "ci95": percentile_interval(seed_mean)}
        summary.append(row)

    singles = [row for row in summary if row["fusion"] in SINGLE_MODALITIES]
    best = max(singles, key=lambda row: row["macro_f1"]["mean"])["fusion"] if singles else None
    pairs = [(mode, best) for mode in modes if best and mode not in SINGLE_MODALITIES]
    pairs += [pair for pair in EXTRA_PAIRS if set(pair) <= set(modes)]
    differences = []
    for mode, versus in pairs:
        row = {"fusion": mode, "versus": versus}
        for m in INTERVAL_METRICS:
            per_seed = [value[mode, s][m] - value[versus, s][m] for s in seeds]
            paired = np.mean([samples[mode, s][m] - samples[versus, s][m] for s in seeds], axis=0)
            row[m] = {**_spread(per_seed), "ci95": percentile_interval(paired)}
            row[m]["per_seed"] = [round(d, 6) for d in per_seed]
        differences.append(row)
    return {
        "seeds": seeds,
        "modes": modes,
        "bootstrap": {"resamples": resamples, "seed": bootstrap_seed, "unit": "test query", "paired": True},
        "best_single_modality": best,
        "summary": summary,
        "differences": differences,
        "runs": runs,
    }


def _cell(stat: dict, signed: bool = False) -> str:
    sign = "+" if signed else ""
    text = f"{stat['mean']:{sign}.3f}"
    if stat.get("sd") is not None:
        text += f" ± {stat['sd']:.3f}"
    low, high = stat["ci95"]
    return text + f" [{low:{sign}.3f}, {high:{sign}.3f}]"


def markdown_table(result: dict) -> str:
    """Per-mode table and the paired differences (to the best single modality; cross-attention
    to concat)."""
    seeds = ", ".join(str(s) for s in result["seeds"])
    spread = "mean ± sd over seeds" if len(result["seeds"]) > 1 else "value"
    split = result.get("split", "test")
    lines = [
        f"Seeds {seeds}; cells: {spread} [95 % interval, query bootstrap of the {split} split, "
        f"{result['bootstrap']['resamples']} resamples]; train accuracy: the last epoch's.",
        "",
        "| fusion | epochs | train accuracy | " + " | ".join(INTERVAL_METRICS) + " |",
        "|---" * (len(INTERVAL_METRICS) + 3) + "|",
    ]
    for row in result["summary"]:
        epochs = "/".join(str(e) for e in row["epochs"])
        cells = " | ".join(_cell(row[m]) for m in INTERVAL_METRICS)
        train = row.get("train_accuracy", {}).get("mean")
        lines.append(f"| {row['fusion']} | {epochs} | {'' if train is None else f'{train:.3f}'} | {cells} |")
    if result["differences"]:
        lines += [
            "",
            "Paired differences (best single modality by mean macro-F1: "
            f"{result['best_single_modality']}):",
            "",
            "| fusion | versus | " + " | ".join(f"Δ {m}" for m in INTERVAL_METRICS) + " |",
            "|---" * (len(INTERVAL_METRICS) + 2) + "|",
        ]
        for row in result["differences"]:
            cells = " | ".join(_cell(row[m], signed=True) for m in INTERVAL_METRICS)
            lines.append(f"| {row['fusion']} | {row['versus']} | {cells} |")
    return "\n".join(lines)
