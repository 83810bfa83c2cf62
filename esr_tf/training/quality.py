"""`esr-tf ablate --data A,B,C`: the fusion modes on several catalogues in one command (#29).

Each catalogue gets its own `ablate` (`<out>/<catalogue>/ablation.json`, every mode once per
seed, paired differences with query-bootstrap intervals, the last epoch's training accuracy);
`<out>/quality.json` and `quality.md` put them side by side with the mean over catalogues.
Compare recipes on `split="valid"`; report the chosen one on `test` once.

Example:
>>> result = ablate_catalogues(parse_config({"epochs": 1}), ["demo", "shop_a"], seeds=(0, 1, 2),
...                            split="valid")  # doctest: +SKIP
>>> result["mean_macro_f1"]["cross_attention"]  # doctest: +SKIP
0.871
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from esr_tf.training.ablate import ABLATION_MODES, ablate, markdown_table
from esr_tf.training.config import TrainConfig


def catalogue_name(data: str) -> str:
    """The folder name a catalogue's runs go to (`demo` for the demo shop)."""
    return Path(data.rstrip("/")).name or data


def ablate_catalogues(config: TrainConfig, catalogues: list[str], modes: tuple[str, ...] = ABLATION_MODES, *,
                      seeds: tuple[int, ...] | None = None, split: str = "test", overwrite: bool = False,
                      verbose: int = 0) -> dict:
    """`ablate` on each of `catalogues` with the same recipe; writes and returns quality.json."""
    names = [catalogue_name(d) for d in catalogues]
    if len(set(names)) != len(names):
        raise ValueError(f"ablate: catalogues {catalogues} must have distinct folder names")
    out = Path(config.out_dir)
    results = {}
    for data, name in zip(catalogues, names, strict=True):
        run = TrainConfig(**{**config.__dict__, "data": data, "out_dir": str(out / name)})
        results[name] = ablate(run, modes, seeds=seeds, split=split, overwrite=overwrite, verbose=verbose)
    result = {"split": split, "catalogues": results, "mean_macro_f1": _mean_over(results, "macro_f1"),
              "mean_train_accuracy": _mean_over(results, "train_accuracy")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "quality.md").write_text(quality_markdown(result) + "\n")
    return result


def _mean_over(results: dict, metric: str) -> dict[str, float]:
    """Each mode's mean over catalogues of its mean over seeds."""
    values: dict[str, list[float]] = {}
    for result in results.values():
        for row in result["summary"]:
            values.setdefault(row["fusion"], []).append(row[metric]["mean"])
    return {mode: round(float(np.mean(v)), 6) for mode, v in values.items()}


def quality_markdown(result: dict) -> str:
    """Every catalogue's ablation table, then the mean over catalogues."""
    lines = [f"# Fusion modes on {len(result['catalogues'])} catalogues ({result['split']} split)", ""]
    for name, one in result["catalogues"].items():
        lines += [f"## {name}", "", markdown_table(one), ""]
    lines += ["## Mean over catalogues", "", "| fusion | macro_f1 | train accuracy |", "|---|---|---|"]
    for mode, value in result["mean_macro_f1"].items():
        lines.append(f"| {mode} | {value:.3f} | {result['mean_train_accuracy'].get(mode, float('nan')):.3f} |")
    return "\n".join(lines)
