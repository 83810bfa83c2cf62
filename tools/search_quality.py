"""Whole-catalogue search quality over training seeds (#31): the table in docs/search.md.

    python tools/search_quality.py --data demo,../shared/data/dev_variants --seeds 0,1,2 --out sq_runs

Per catalogue and seed, what a user runs: `esr-tf train --data C --set seed=S` (the defaults),
`esr-tf index --data C --judgments QRELS` (the ranking chosen on the valid queries), then
`esr-tf search --evaluate --split test --judgments QRELS` at re-rank N in {20, 50, 100} and over
the whole catalogue. Complete judgments: the demo shop's `qrels.csv` (the shop is generated with
seed 0 once; only the training seed varies), a folder's own `qrels.csv`, or dev_variants'
attribute files (`tools/qrels_dev_variants.py`). Writes `search_quality.json` (every run) and
`search_quality.md` (mean ± sd over seeds). Runs already in `--out` are read back, not redone;
a run folder with its trained models but no `search_quality.json` is indexed and scored again.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import numpy as np

RERANKS = (20, 50, 100)
SAMPLE = 100  # products whose similar products and complements are judged (item 4)


def judged_catalogue(name: str, out: Path, demo_size: str) -> tuple[Path, Path]:
    """(catalogue folder, complete judgments file) for `name`: 'demo' or a folder."""
    if name == "demo":
        from esr_tf.data.demo_shop import generate_demo_shop

        folder = out / "demo_shop"
        if not (folder / "qrels.csv").is_file():
            generate_demo_shop(folder, seed=0, size=demo_size)
        return folder, folder / "qrels.csv"
    folder = Path(name)
    if (folder / "qrels.csv").is_file():
        return folder, folder / "qrels.csv"
    if (folder / "attributes.csv").is_file() and (folder / "queries.csv").is_file():
        sys.path.insert(0, str(Path(__file__).parent))
        from qrels_dev_variants import main as write_qrels

        qrels = out / f"{folder.name}_qrels.csv"
        if write_qrels(str(folder), str(qrels)) != 0:
            raise SystemExit(f"{folder}: its attribute files disagree with examples.csv")
        return folder, qrels
    raise SystemExit(f"{folder}: no complete judgments (qrels.csv, or attributes.csv + queries.csv)")


def one_run(folder: Path, qrels: Path, seed: int, run_dir: Path, overrides: list[str],
            train_data: Path | None = None) -> dict:
    """Train (on `train_data` when given, else `folder`), index `folder` (blend chosen on its
    valid queries), evaluate its test queries at every N; the run's figures."""
    import keras

    from esr_tf.data import load_catalogue
    from esr_tf.models.builder import load_model
    from esr_tf.search.evaluate import evaluate_search
    from esr_tf.search.index import export_search_index
    from esr_tf.training.config import parse_config
    from esr_tf.training.trainer import train

    trained = run_dir / "train"
    if not (trained / "retrieval.keras").is_file():  # a run's models are kept: re-indexing reuses them
        config = parse_config({"data": str(train_data or folder), "seed": seed, "out_dir": str(trained)}, overrides)
        train(config, verbose=0)
        gc.collect()
    model, towers = load_model(trained / "model.keras"), keras.saving.load_model(trained / "retrieval.keras")
    catalogue = load_catalogue(folder, label_set=model.label_set)
    path = export_search_index(model, towers, list(catalogue.products.values()), run_dir / "index",
                               model_name="search", overwrite=True, version=1, source=str(folder),
                               choose_on=catalogue, qrels=qrels)
    info = json.loads((path / "assets.extra" / "esr_tf_index.json").read_text())
    row = {"seed": seed, "ranking": info["rerank"]["ranking"], "valid": info["rerank"]}
    for n in RERANKS:
        report = evaluate_search(path, catalogue, split="test", rerank=n, upper_bound=n == RERANKS[-1], qrels=qrels)
        row.update(queries=report["queries"], products=report["catalogue_products"],
                   retrieval=report["retrieval"], judgments=report["judgments"])
        row[f"rerank_{n}"] = report["reranked"]
        if "whole_catalogue_reranked" in report:
            row["whole_catalogue"] = report["whole_catalogue_reranked"]
    relations = product_relations(path, folder)
    if relations:
        row["product_relations"] = relations
    return row


def product_relations(path: Path, folder: Path) -> dict | None:
    """Similar products and complements over the whole catalogue (#31 item 4), where the
    catalogue says each product's category and colour (the demo shop's `demo_attributes.csv`):
    `similar_products` (by product vector): precision@10 of the same category, nDCG@10 with
    gain 1 for the same category and colour, 0.1 for the same category; `complements`: precision@10
    of a complementary category (the demo shop's map), against the pool's own order (retrieval)."""
    import csv

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the index's tokenizer ops)

    from esr_tf.data.demo_shop import CATEGORIES
    from esr_tf.search.evaluate import list_metrics

    if not (folder / "demo_attributes.csv").is_file():
        return None
    with open(folder / "demo_attributes.csv", newline="", encoding="utf-8") as f:
        attributes = {r["product_id"]: (r["category"], r["colour"]) for r in csv.DictReader(f)}
    loaded = tf.saved_model.load(str(path))
    ids = sorted(attributes)[:: max(1, len(attributes) // SAMPLE)][:SAMPLE]
    figures: dict[str, list] = {"similar_precision@10": [], "similar_ndcg@10": [], "complements_precision@10": [],
                                "complements_pool_order_precision@10": []}
    for pid in ids:
        category, colour = attributes[pid]
        near = [p.decode() for p in loaded.signatures["similar_products"](product_id=tf.constant([pid]))
                ["product_ids"].numpy()[0]]
        gains = {p: 1.0 if a == (category, colour) else 0.1 for p, a in attributes.items()
                 if a[0] == category and p != pid}
        figures["similar_precision@10"].append(sum(p in gains for p in near) / len(near))
        figures["similar_ndcg@10"].append(list_metrics(near, gains, 1.0, 10)[1])
        wanted = set(CATEGORIES[category][4])
        out = loaded.signatures["complements"](product_id=tf.constant([pid]))
        chosen = [p.decode() for p in out["product_ids"].numpy()[0]]
        figures["complements_precision@10"].append(sum(attributes[p][0] in wanted for p in chosen) / len(chosen))
        # the pool's own order: its first 10 are the similar products
        figures["complements_pool_order_precision@10"].append(sum(attributes[p][0] in wanted for p in near) / len(near))
    return {"products": len(ids), **{k: float(np.mean(v)) for k, v in figures.items()}}


def _cell(rows: list[dict], part: str, key: str) -> str:
    values = [r[part][key] for r in rows]
    sd = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
    return f"{np.mean(values):.3f}{sd}"


def markdown(results: dict[str, list[dict]]) -> str:
    parts = ["retrieval", *(f"rerank_{n}" for n in RERANKS), "whole_catalogue"]
    head = ["catalogue (test queries, products)", "measure", "retrieval alone",
            *(f"re-rank {n}" + (" (default)" if n == 50 else "") for n in RERANKS), "whole catalogue"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in results.items():
        label = f"{Path(name).name} ({rows[0]['queries']}, {rows[0]['products']})"
        for key in ("recall@10", "ndcg@10"):
            lines.append(f"| {label} | {key} | " + " | ".join(_cell(rows, p, key) for p in parts) + " |")
        chosen = ", ".join(r["ranking"] for r in rows)
        recall100 = _cell(rows, "retrieval", next(k for k in rows[0]["retrieval"] if k not in ("recall@10", "ndcg@10")))
        lines.append(f"| {label} | ranking chosen per seed; retrieval recall@100 | {chosen} | {recall100} | | | |")
    for name, rows in results.items():
        if all("product_relations" in r for r in rows):
            figures = [k for k in rows[0]["product_relations"] if k != "products"]
            lines += ["", f"Similar products and complements, {Path(name).name} "
                      f"({rows[0]['product_relations']['products']} products):", "",
                      "| " + " | ".join(figures) + " |", "|" + "---|" * len(figures),
                      "| " + " | ".join(_cell(rows, "product_relations", k) for k in figures) + " |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="comma-separated: demo and / or catalogue folders")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", required=True)
    parser.add_argument("--demo-size", default="default")
    parser.add_argument("--set", action="append", default=[], help="config override for training, e.g. epochs=1")
    parser.add_argument("--train-data", default=None,
                        help="train on this catalogue instead (one --data: a judged view of it, e.g. "
                             "tools/qrels_dev_colour.py's)")
    args = parser.parse_args(argv)
    if args.train_data and "," in args.data:
        parser.error("--train-data goes with one --data folder")
    from esr_tf.quiet import quiet_tensorflow

    quiet_tensorflow()  # as the esr-tf command starts TensorFlow: no start-up chatter
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for name in args.data.split(","):
        folder, qrels = judged_catalogue(name, out, args.demo_size)
        for seed in (int(s) for s in args.seeds.split(",")):
            run_dir = out / Path(name).name / f"seed_{seed}"
            done = run_dir / "search_quality.json"
            if not done.is_file():
                row = one_run(folder, qrels, seed, run_dir, args.set,
                              Path(args.train_data) if args.train_data else None)
                done.write_text(json.dumps(row, indent=2) + "\n")
                gc.collect()
            row = json.loads(done.read_text())
            if "product_relations" not in row and (relations := product_relations(run_dir / "index" / "search" / "1",
                                                                                  folder)):
                row["product_relations"] = relations  # runs written before item 4 was measured
                done.write_text(json.dumps(row, indent=2) + "\n")
            results.setdefault(name, []).append(row)
            print(f"{name} seed {seed}: {json.dumps({k: v for k, v in results[name][-1].items() if k != 'valid'})}",
                  flush=True)
    (out / "search_quality.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "search_quality.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
