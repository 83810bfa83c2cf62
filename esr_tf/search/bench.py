"""`esr-tf bench --suite search`: catalogue search latency, retrieval vs faiss, index size and cost.

For synthetic catalogues of 10k, 100k and 1M products (random unit vectors, synthetic titles, 64
photos shared by all products: size is what matters here), the same `CatalogueSearch` graph the
export holds is timed at batch 1:

- `search_top(query, k=10, rerank=N)` at N = 50 (the default) and 20: p50 / p99 over distinct
  queries (retrieval + BERT and cross-attention over N candidates);
- the stages: `retrieve_top(query, k=10)` (retrieval alone: tokenizer, the query's BERT and
  tower, matmul, `top_k`), the query tower alone, and so the re-ranking's cost per candidate;
- retrieval alone (matmul + `top_k`, the graph's own `retrieve`) against faiss-cpu
  `IndexFlatIP` (exact inner-product search, the CPU reference) on the same vectors and k,
  interleaved call by call in this one process, faiss with its default OpenMP threads and with
  one thread: the ratio to faiss's faster setting is the figure;
- index build time per product (photo decoding, image branch, BERT, product tower) on the demo
  shop's real products, and the bytes per product of an export's catalogue variables.

Results go to `<out>/search.json` and `<out>/search.md`, with the load average.

Example:
>>> result = run_search_bench("esr_bench", quick=True, model_overrides=TINY_MODEL)  # doctest: +SKIP
>>> result["rows"][0]["search_p50_ms"]  # doctest: +SKIP
61.2
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.bench.timing import load_average, machine_info, summarize
from esr_tf.constants import DEFAULT_RERANK
from esr_tf.data import generate_demo_shop, load_catalogue
from esr_tf.models.builder import ModelConfig, build_relevance_model
from esr_tf.search.catalogue import IndexArrays, embed_catalogue
from esr_tf.search.graph import CatalogueSearch
from esr_tf.search.index import write_index
from esr_tf.search.towers import build_two_tower
from esr_tf.training.feature_store import FeatureStore
from esr_tf.training.stored_photos import StoredPhotos

SIZES = {False: (10_000, 100_000, 1_000_000), True: (2_000, 10_000)}
QUERIES = {False: 40, True: 8}
RERANK = 20
WORDS = ("red blue green black white wool cotton leather running trail rain winter kids men women slim "
         "classic sneaker sock cap hoodie jacket mug teapot bottle backpack case headphones").split()
TARGETS = {"search_default_p50_ms_100k": "<= 150", "retrieval_vs_faiss_100k": "<= 2.0"}


def synthetic_index(size: int, dim: int, token_shape: tuple, seed: int = 0, photos: int = 64,
                    fields: tuple[str, ...] = ()) -> IndexArrays:
    """`size` random products; `fields`: the other product fields a model reads (synthetic words)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((size, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = rng.integers(len(WORDS), size=(size, 4))
    return IndexArrays(
        product_ids=np.array([f"p{i:07d}" for i in range(size)], dtype=object),
        titles=np.array([" ".join(WORDS[w] for w in row) for row in words], dtype=object),
        embeddings=vectors,
        photo_tokens=rng.standard_normal((photos + 1, *token_shape), dtype=np.float32) * 0.1,
        photo_row=rng.integers(0, photos + 1, size, dtype=np.int32),
        fields={f: np.array([WORDS[w] for w in rng.integers(len(WORDS), size=size)], dtype=object) for f in fields},
    )


def _faiss(vectors: np.ndarray):
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def _interleaved(calls: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn so load changes hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        fn(0)  # warm-up / tracing
    for i in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn(i)
            times[name].append(time.perf_counter() - start)
    return times


def _size_row(model, towers, size: int, queries: int) -> dict:
    token_shape = tuple(model.fusion_head.input["image_tokens"].shape[1:])
    fields = tuple(f for f in model.preprocessor.product_fields if f != "title")
    arrays = synthetic_index(size, towers.get_layer("query").output.shape[-1], token_shape, fields=fields)
    search = CatalogueSearch(model, towers, arrays)
    texts = [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(3)) for i in range(queries + 1)]
    vectors = search.query_vectors(tf.constant(texts)).numpy()
    retrieve = tf.function(lambda v: search.retrieve(v, RERANK), input_signature=[tf.TensorSpec([None, None])])
    tower = tf.function(search.query_vectors, input_signature=[tf.TensorSpec([None], tf.string)])
    flat = _faiss(arrays.embeddings)

    def top(i, rerank):
        return search.search_top(tf.constant([texts[i]]), tf.constant(10), tf.constant(rerank))

    calls = {
        "search_default": lambda i: top(i, DEFAULT_RERANK),
        "search": lambda i: top(i, RERANK),
        "retrieve_top": lambda i: search.retrieve_top(tf.constant([texts[i]]), tf.constant(10)),
        "query_tower": lambda i: tower(tf.constant([texts[i]])),
        "retrieval": lambda i: retrieve(tf.constant(vectors[i : i + 1]))[1].numpy(),
    }
    if flat is not None:
        import faiss

        threads = faiss.omp_get_max_threads()

        def faiss_threads(n: int):
            def call(i):
                faiss.omp_set_num_threads(n)
                flat.search(vectors[i : i + 1], RERANK)
                faiss.omp_set_num_threads(threads)
            return call

        # Its OpenMP threads can spin against TensorFlow's pools on 2 busy cores: time both.
        calls["faiss"] = faiss_threads(threads)
        calls["faiss_1_thread"] = faiss_threads(1)
    times = _interleaved(calls, queries)
    p50 = {name: 1000 * float(np.median(t)) for name, t in times.items()}
    row = {"products": size, "search_p50_ms": p50["search"],
           "search_p99_ms": 1000 * float(np.percentile(times["search"], 99)),
           "search_default_p50_ms": p50["search_default"],
           "search_default_p99_ms": 1000 * float(np.percentile(times["search_default"], 99)),
           **{name: summarize(times[name]) for name in ("retrieve_top", "query_tower", "retrieval")},
           "rerank_ms_per_candidate": (p50["search_default"] - p50["retrieve_top"]) / DEFAULT_RERANK,
           "catalogue_bytes_per_product": arrays.nbytes / size}
    if flat is not None:
        row["faiss_flat"] = summarize(times["faiss"])
        row["faiss_flat_1_thread"] = summarize(times["faiss_1_thread"])
        best = min(np.median(times["faiss"]), np.median(times["faiss_1_thread"]))
        row["retrieval_vs_faiss"] = float(np.median(times["retrieval"]) / best)  # against faiss's faster setting
    else:
        row["faiss_flat"] = "skipped: faiss-cpu is not installed (pip install 'esr_tf[bench]')"
    return row


def _stored_build(model, towers, shop: Path, products: list, computed: IndexArrays, out: Path) -> dict:
    """The build again, warm, side by side: computing every photo, and reading the photos a
    training feature store holds (written here untimed over the catalogue's judged pairs, as
    `train` with `feature_store` does); how far the stored float16 maps move the tokens."""
    catalogue = load_catalogue(shop, missing_images="no_image")
    parts = {split: catalogue.columns(split) for split in catalogue.splits()}
    with tempfile.TemporaryDirectory(dir=out) as root:
        FeatureStore.build(model, parts, root)
        stored = StoredPhotos.find(model, root)
        times, token_diff = {}, 0.0
        for name, source in (("computed", None), ("stored", stored), ("computed_again", None)):
            start = time.perf_counter()
            arrays = embed_catalogue(model, towers, products, stored=source)
            times[name] = 1000 * (time.perf_counter() - start) / len(products)
            if source is not None:
                token_diff = float(np.abs(arrays.photo_tokens - computed.photo_tokens).max())
    return {"build_warm_ms_per_product": (times["computed"] + times["computed_again"]) / 2,
            "build_stored_ms_per_product": times["stored"], "photos_stored": len(stored or ()),
            "stored_token_max_abs_diff": token_diff}


def _build_cost(model, towers, out: Path, quick: bool) -> dict:
    """Index build seconds per product on real demo-shop products, and the export's size."""
    shop = generate_demo_shop(out / "demo_shop", size="small" if quick else "default")
    products = list(load_catalogue(shop, missing_images="no_image").products.values())
    start = time.perf_counter()
    arrays = embed_catalogue(model, towers, products)
    embed_s = time.perf_counter() - start
    cost = {"products": len(products), "photos": len(arrays.photo_tokens) - 1,
            "build_ms_per_product": 1000 * embed_s / len(products),
            "catalogue_bytes_per_product": arrays.nbytes / len(products),
            **_stored_build(model, towers, shop, products, arrays, out)}
    if quick:  # the export itself is the slow part (tracing every signature): full runs only
        return cost
    with tempfile.TemporaryDirectory(dir=out) as base:
        path = write_index(model, towers, arrays, base, model_name="bench")
        cost["export_variables_bytes"] = sum(f.stat().st_size for f in (path / "variables").glob("*"))
        cost["export_bytes"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return cost


def run_search_bench(out_dir: str | Path, quick: bool = False, *, model_overrides: Mapping | None = None) -> dict:
    """Runs the search suite; writes and returns `search.json` (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_relevance_model(ModelConfig(**dict(model_overrides or {})))
    text_dim = model.text_encoder.output["sequence_output"].shape[-1]
    image_dim = model.fusion_head.input["image_tokens"].shape[-1]
    towers = build_two_tower(text_dim=text_dim, image_dim=image_dim)
    load = {"before": load_average()}
    rows = [_size_row(model, towers, size, QUERIES[quick]) for size in SIZES[quick]]
    build = _build_cost(model, towers, out, quick)
    load["after"] = load_average()
    result = {"rows": rows, "build": build, "rerank": RERANK, "k": 10, "targets": TARGETS,
              "load_average": load, "machine": machine_info(), "quick": quick,
              "note": "synthetic catalogues (random unit vectors, 64 shared photos); batch 1; "
                      "the model's head is untrained (speed does not depend on it)"}
    (out / "search.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (out / "search.md").write_text(search_markdown(result))
    return result


def search_markdown(result: dict) -> str:
    lines = [f"| products | search p50 / p99 ms (re-rank {DEFAULT_RERANK}, the default) | re-rank {RERANK} p50 ms | "
             "retrieve_top p50 ms | query tower p50 ms | re-rank ms / candidate | retrieval ms (p50) | "
             "faiss flat ms (p50, all / 1 thread) | retrieval / faiss (faster) | catalogue bytes / product |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        faiss = r["faiss_flat"]
        one = r.get("faiss_flat_1_thread")
        faiss_ms = f"{faiss['p50_ms']:.2f} / {one['p50_ms']:.2f}" if isinstance(faiss, dict) else "skipped"
        ratio = f"{r['retrieval_vs_faiss']:.2f}" if "retrieval_vs_faiss" in r else "-"
        lines.append(f"| {r['products']:,} | {r['search_default_p50_ms']:.1f} / {r['search_default_p99_ms']:.1f} | "
                     f"{r['search_p50_ms']:.1f} | {r['retrieve_top']['p50_ms']:.1f} | "
                     f"{r['query_tower']['p50_ms']:.1f} | "
                     f"{r['rerank_ms_per_candidate']:.2f} | {r['retrieval']['p50_ms']:.2f} | {faiss_ms} | {ratio} | "
                     f"{r['catalogue_bytes_per_product']:.0f} |")
    b = result["build"]
    size = f"export {b['export_bytes'] / 1e6:.1f} MB in all" if "export_bytes" in b else "no export (quick run)"
    lines.append(f"\nIndex build: {b['build_ms_per_product']:.1f} ms per product ({b['products']} demo-shop products, "
                 f"{b['photos']} photos; the first build in the process, tracing included); warm, side by side: "
                 f"{b['build_warm_ms_per_product']:.1f} ms computing every photo, "
                 f"{b['build_stored_ms_per_product']:.1f} ms reading {b['photos_stored']} photos' maps from a "
                 f"training feature store (tokens within {b['stored_token_max_abs_diff']:.1e}); {size}. "
                 f"Load average before / after: {result['load_average']['before']} / "
                 f"{result['load_average']['after']}.")
    return "\n".join(lines) + "\n"
