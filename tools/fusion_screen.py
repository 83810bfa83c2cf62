"""Screen fusion recipes on the *valid* splits of several catalogues (issue #29).

Each (catalogue, seed) loads the catalogue once and computes the frozen-backbone features once;
every variant of that seed reuses them. One JSON line per run goes to OUT (appended), with the
valid macro-F1, the last epoch's training accuracy, the epochs run and the fit seconds. Test
splits are never read here: the chosen recipe is reported on test once, with `esr-tf ablate`.

Usage:
  python tools/fusion_screen.py OUT.jsonl --data PATH[,PATH...] --seeds 0,1,2 \
      --variant NAME:KEY=VALUE[;KEY=VALUE...] [--variant ...]

`demo` as a data entry is the default-size demo shop. A variant with no settings is the defaults.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _variants(specs: list[str]) -> list[tuple[str, list[str]]]:
    out = []
    for spec in specs:
        name, _, settings = spec.partition(":")
        out.append((name, [s for s in settings.split(";") if s]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variant", action="append", required=True)
    args = parser.parse_args()

    from esr_tf.quiet import quiet_tensorflow

    quiet_tensorflow(verbose=False)
    from esr_tf.training.config import parse_config
    from esr_tf.training.evaluate import evaluate_model
    from esr_tf.training.trainer import load_training_data, train

    for data in args.data.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            work = Path(tempfile.mkdtemp(prefix="screen_"))
            base = parse_config({"data": data, "seed": seed, "out_dir": str(work / "base"), "retrieval": {"epochs": 0}})
            catalogue = load_training_data(base)
            features = None
            for name, settings in _variants(args.variant):
                config = parse_config({"data": data, "seed": seed, "out_dir": str(work / name),
                                       "retrieval": {"epochs": 0}}, settings)
                started = time.perf_counter()
                result = train(config, catalogue=catalogue, features=features, verbose=0, overwrite=True)
                features = features or result.features
                report = evaluate_model(result.model, catalogue, split="valid", features=result.features.get("valid"),
                                        resamples=0)
                history = result.history
                row = {"data": Path(data).name, "seed": seed, "variant": name, "settings": settings,
                       "valid_macro_f1": report["macro_f1"], "valid_accuracy": report["accuracy"],
                       "valid_ndcg@10": report["ndcg@10"],
                       "train_accuracy": (history.get("probabilities_accuracy") or [None])[-1],
                       "train_accuracy_curve": [round(a, 3) for a in history.get("probabilities_accuracy", [])],
                       "epochs_run": result.epochs_run, "seconds": round(time.perf_counter() - started, 1)}
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
                del result


if __name__ == "__main__":
    main()
