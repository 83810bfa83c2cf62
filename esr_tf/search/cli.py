"""`esr-tf index` and `esr-tf search`: catalogue search from the command line.

Example:
    esr-tf index --model esr_out/model.keras --data shop/ --base serving_models --name shop
    esr-tf index --model esr_out/model.keras --base serving_models --name shop --add new_products.csv
    esr-tf search --model serving_models/shop "red sneakers" --k 5
    esr-tf search --model serving_models/shop --similar p00042
    esr-tf search --model serving_models/shop --evaluate --data shop/ --split test --out search_eval
    esr-tf search --model serving_models/shop --evaluate --data shop/ --judgments shop/qrels.csv
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from esr_tf.constants import DEFAULT_K, DEFAULT_RERANK, MISSING_IMAGE_POLICIES


class UsageError(ValueError):
    """Flags that do not go together (exit code 2, like argparse's own errors)."""


def _load_models(args):
    import keras

    from esr_tf.models.builder import load_model

    model = load_model(args.model)
    retrieval = Path(args.retrieval) if args.retrieval else Path(args.model).parent / "retrieval.keras"
    if not retrieval.is_file():
        raise FileNotFoundError(
            f"{retrieval}: no retrieval model (esr-tf train writes retrieval.keras next to model.keras "
            "unless retrieval.epochs=0; pass another with --retrieval)")
    return model, keras.saving.load_model(retrieval)


def stored_photos_for(model, args):
    """Photo feature maps to reuse: `--feature-store`, else the training run's own store (its
    config.json next to --model names it), when it holds maps of this model's encoders."""
    from esr_tf.training.stored_photos import StoredPhotos

    root = args.feature_store
    config = Path(args.model).parent / "config.json"
    if root is None and config.is_file():
        root = json.loads(config.read_text(encoding="utf-8")).get("feature_store") or None
    if not root:
        return None
    if not Path(root).is_dir():
        if args.feature_store:
            raise FileNotFoundError(f"--feature-store {root}: no such folder")
        return None
    stored = StoredPhotos.find(model, root)
    print(f"feature store {root}: " + (f"{len(stored):,} photos' feature maps to reuse" if stored else
                                       "nothing written by this model's encoders; computing every photo"))
    return stored


def cmd_index(args) -> int:
    from esr_tf.data import load_catalogue, load_products, read_product_ids
    from esr_tf.search.blend import describe
    from esr_tf.search.index import export_search_index, update_search_index

    updating = args.add or args.remove
    if bool(updating) == bool(args.data):
        raise UsageError("pass --data CATALOGUE (a new index) or --add / --remove (the next version)")
    if updating and (args.version is not None or args.overwrite or args.judgments):
        raise UsageError("--add / --remove write the next version; --version / --overwrite / --judgments are "
                         "for --data")
    model, towers = _load_models(args)
    stored = stored_photos_for(model, args)
    if updating:
        add = list(load_products(args.add, missing_images=args.missing_images).values()) if args.add else []
        if args.add and not add:
            raise UsageError(f"{args.add}: no products to add")
        remove = read_product_ids(args.remove) if args.remove else []
        path = update_search_index(model, towers, args.base, args.name, add=add, remove=remove,
                                   source=str(args.add or args.remove), stored=stored)
    else:
        catalogue = load_catalogue(args.data, missing_images=args.missing_images, label_set=model.label_set)
        path = export_search_index(model, towers, list(catalogue.products.values()), args.base, model_name=args.name,
                                   version=args.version, overwrite=args.overwrite, source=str(args.data),
                                   choose_on=catalogue, qrels=args.judgments, stored=stored)
    info = json.loads((path / "assets.extra" / "esr_tf_index.json").read_text())
    print(f"indexed {info['products']} products ({info['photos']} photos) in {path}")
    if "rerank" in info:
        print(describe(info["rerank"]))
    if args.no_verify:
        return 0
    from esr_tf.export.verify import verify_and_print

    return verify_and_print(path, cpp=not args.no_cpp, signatures=bool(args.verbose))  # the listing: -v


def _width(text: str) -> int:
    """Terminal columns of `text`: wide (CJK, emoji) characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _cell(text: str, width: int) -> str:
    """`text` cut to `width` columns (marked with "…") and padded to exactly `width`."""
    if _width(text) > width:
        while _width(text) > width - 1:
            text = text[:-1]
        text += "…"
    return text + " " * (width - _width(text))


def _table(rows: list[dict]) -> str:
    # Ids are printed whole (two ids cut to 16 characters printed the same, #33).
    id_width = max([10, *(_width(hit["product_id"]) for hit in rows)])
    lines = [f"{'#':>3}  {_cell('product_id', id_width)} {'label':<11} {'score':>6}  title"]
    for rank, hit in enumerate(rows, 1):
        lines.append(f"{rank:>3}  {_cell(hit['product_id'], id_width)} {_cell(hit['label'], 11)} "
                     f"{hit['score']:>6.3f}  {_cell(hit['title'], 70).rstrip()}")
    return "\n".join(lines)


def cmd_search(args) -> int:
    from esr_tf.search.client import SearchClient

    if args.evaluate:
        return _evaluate(args)
    _check_search_flags(args)
    client = SearchClient(args.model)
    if args.similar or args.complements:
        signature = "similar_products" if args.similar else "complements"
        results = client.products([args.similar or args.complements], signature)
    elif args.query:
        results = client.search([args.query], k=args.k, rerank=args.rerank)
    else:
        raise UsageError("pass a QUERY, --similar ID, --complements ID or --evaluate")
    print(json.dumps(results[0], indent=1) if args.json else _table(results[0]))
    return 0


def _check_search_flags(args) -> None:
    """Flags that would be silently ignored together are refused (exit 2)."""
    if args.similar and args.complements:
        raise UsageError("pass --similar ID or --complements ID, not both")
    if (args.similar or args.complements) and args.query:
        raise UsageError("pass a QUERY or --similar / --complements ID, not both")
    if (args.similar or args.complements) and (args.k is not None or args.rerank is not None):
        raise UsageError("--k / --rerank apply to a QUERY; --similar and --complements return 10 products")


def _evaluate(args) -> int:
    from esr_tf.data import load_catalogue
    from esr_tf.search.client import resolve_export
    from esr_tf.search.evaluate import evaluate_search

    if not args.data:
        raise UsageError("--evaluate needs --data CATALOGUE (its judged queries)")
    for flag, value in (("--rerank", args.rerank), ("--k", args.k)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be an integer >= 1, got {value}")
    catalogue = load_catalogue(args.data, missing_images=args.missing_images)
    report = evaluate_search(resolve_export(args.model), catalogue, split=args.split,
                             rerank=DEFAULT_RERANK if args.rerank is None else args.rerank,
                             upper_bound=not args.no_upper_bound, k=DEFAULT_K if args.k is None else args.k,
                             qrels=args.judgments)
    text = json.dumps(report, indent=2)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "search_metrics.json").write_text(text + "\n")
    print(text)
    return 0


def add_search_commands(sub) -> None:
    p = sub.add_parser("index", help="a search index export: the catalogue embedded, retrieval + re-ranking")
    p.add_argument("--model", required=True, help="model.keras from esr-tf train (retrieval.keras next to it)")
    p.add_argument("--retrieval", help="the two-tower model (default: retrieval.keras next to --model)")
    p.add_argument("--data", help="catalogue folder to index (a new index version)")
    p.add_argument("--add", help="products CSV / JSONL (or folder) to add to the newest version")
    p.add_argument("--remove", help="file of product ids (one per line, or a product_id column) to drop")
    p.add_argument("--base", required=True, help="TF Serving model base folder")
    p.add_argument("--name", default="search", help="model name (folder under --base)")
    p.add_argument("--version", type=int, help="version number (default: next free; not with --add)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--missing-images", default="no_image", choices=MISSING_IMAGE_POLICIES)
    p.add_argument("--judgments", metavar="QRELS", help="complete judgments (query_id,product_id,label) for the "
                   "valid queries that choose how search orders what it re-ranks (with --data)")
    p.add_argument("--feature-store", metavar="DIR", help="a training feature store whose photo feature maps "
                   "are reused (default: the run's own, from config.json next to --model)")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--no-cpp", action="store_true")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="query an index export: ranked products, similar products, complements")
    p.add_argument("--model", required=True, help="index export: <base>/<name> (newest version) or a version")
    p.add_argument("query", nargs="?", help="the shopper's query")
    p.add_argument("--k", type=int, help="products to return (default 10)")
    p.add_argument("--rerank", type=int,
                   help=f"retrieved products the model re-ranks (default {DEFAULT_RERANK}; 0: retrieval alone)")
    p.add_argument("--similar", metavar="PRODUCT_ID", help="products similar to this one")
    p.add_argument("--complements", metavar="PRODUCT_ID", help="complements of this product")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--evaluate", action="store_true", help="recall / nDCG over the whole catalogue (--data)")
    p.add_argument("--data", help="catalogue folder with judged queries (for --evaluate)")
    p.add_argument("--judgments", metavar="QRELS",
                   help="complete judgments (query_id,product_id,label; unlisted = irrelevant) for --evaluate, "
                        "instead of the catalogue's judged pairs")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--out", help="folder for search_metrics.json (with --evaluate)")
    p.add_argument("--no-upper-bound", action="store_true",
                   help="skip re-ranking the whole catalogue with the model (slow for big catalogues)")
    p.add_argument("--missing-images", default="no_image", choices=MISSING_IMAGE_POLICIES)
    p.set_defaults(func=cmd_search)
