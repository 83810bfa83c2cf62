"""`esr-tf simulate-logs` and `esr-tf logs`: search logs from the command line.

Example:
    esr-tf simulate-logs --data shop/ --out shop_logs --sessions 20000 --eta 1
    esr-tf logs --data shop/ --logs shop_logs/impressions.csv
"""

from __future__ import annotations

import json
from pathlib import Path


def cmd_simulate(args) -> int:
    from esr_tf.data import load_catalogue
    from esr_tf.logs.simulate import simulate_logs

    catalogue = load_catalogue(args.data, missing_images="no_image")
    info = simulate_logs(catalogue, args.out, sessions=args.sessions, eta=args.eta, list_size=args.list_size,
                         noise=args.noise, seed=args.seed)
    print(f"wrote {info['sessions']:,} sessions x {info['list_size']} impressions over {info['queries']} queries "
          f"to {Path(args.out) / 'impressions.csv'} (true propensities in simulation.json)")
    return 0


def cmd_logs(args) -> int:
    from esr_tf.data import load_products
    from esr_tf.logs.propensity import estimate_propensities
    from esr_tf.logs.read import aggregate_logs

    products = set(load_products(args.data, missing_images="no_image"))
    counts = aggregate_logs(args.logs, products)
    if not counts.rows:
        print(f"{args.logs}: no impressions")
        return 0
    estimate = estimate_propensities(counts, positions=args.positions)
    truth_file = Path(args.logs).parent / "simulation.json"
    truth = json.loads(truth_file.read_text())["propensities"] if truth_file.is_file() else None
    print(f"{counts.rows:,} impressions in {counts.sessions:,} sessions; clicks {counts.clicks.sum():,}, "
          f"carts {counts.carts.sum():,}, purchases {counts.purchases.sum():,}")
    print("position  propensity (EM, relative to position 1)" + ("  simulated truth" if truth else ""))
    for k, value in enumerate(estimate, 1):
        known = f"  {truth[k - 1]:.3f}" if truth and k <= len(truth) else ""
        print(f"{k:8d}  {value:.3f}{known}")
    return 0


def add_logs_commands(sub) -> None:
    p = sub.add_parser("simulate-logs", help="search logs (impressions, clicks, carts, purchases) from a judged "
                                             "catalogue, for development")
    p.add_argument("--data", required=True, help="catalogue folder with judged queries")
    p.add_argument("--out", required=True, help="folder for impressions.csv and simulation.json")
    p.add_argument("--sessions", type=int, default=20_000)
    p.add_argument("--eta", type=float, default=1.0, help="position k is examined with probability (1/k)^eta")
    p.add_argument("--list-size", type=int, default=10, help="products shown per session")
    p.add_argument("--noise", type=float, default=1.0, help="sd of the logging ranker's noise on the true grade")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("logs", help="check a search log and estimate how often each position is examined")
    p.add_argument("--data", required=True, help="the catalogue folder whose products the log shows")
    p.add_argument("--logs", required=True, help="impressions: .csv, .jsonl or .parquet")
    p.add_argument("--positions", type=int, help="positions to estimate (default: the deepest shown)")
    p.set_defaults(func=cmd_logs)
