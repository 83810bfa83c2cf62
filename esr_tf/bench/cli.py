"""`esr-tf bench`: which suite runs, and its options.

Example:
    esr-tf bench --suite logs --out esr_bench
"""

from __future__ import annotations

from pathlib import Path

SUITES = ("main", "search", "scale", "text", "precision", "logs")


def cmd_bench(args) -> int:
    if args.suite == "main":
        from esr_tf.bench.run import run_benchmarks

        run_benchmarks(args.out, quick=args.quick)
        return 0
    if args.suite == "scale":
        from esr_tf.bench.scale import run_scale_bench as run
    elif args.suite == "search":
        from esr_tf.search.bench import run_search_bench as run
    elif args.suite == "precision":
        from esr_tf.bench.precision import run_precision_bench

        def run(out, quick):
            return run_precision_bench(out, quick=quick, data=args.data, model=args.model)
    elif args.suite == "logs":
        from esr_tf.logs.bench import run_logs_bench

        def run(out, quick):
            return run_logs_bench(out, quick=quick, data=args.data, sessions=args.sessions)
    else:
        from esr_tf.bench.product_text import run_text_bench

        def run(out, quick):
            return run_text_bench(out, quick=quick, data=args.data)

    run(args.out, quick=args.quick)
    print((Path(args.out) / f"{args.suite}.md").read_text(), end="")
    return 0


def add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: pipeline, training, serving, cached features, C++")
    p.add_argument("--out", default="esr_bench")
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--suite", default="main", choices=SUITES,
                   help="main: bench.json (pipeline, training, serving); search: search.json (catalogue "
                        "search); scale: scale.json (training memory and speed at 10k-200k pairs); text: "
                        "text.json (what product fields and sequence length cost per pair); precision: "
                        "precision.json (the feature pass in float32 against bfloat16: speed, agreement); "
                        "logs: logs.json (training from simulated search logs against human labels)")
    p.add_argument("--data", default=None,
                   help="text, precision and logs suites: a catalogue folder (default: the demo shop)")
    p.add_argument("--model", default=None,
                   help="precision suite: a trained model.keras whose head's agreement is measured "
                        "(default: the untrained default model)")
    p.add_argument("--sessions", type=int, default=20_000, help="logs suite: simulated sessions per seed")
    p.set_defaults(func=cmd_bench)
