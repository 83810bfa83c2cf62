"""`esr-tf index`: a versioned SavedModel that searches a whole catalogue (`search_index`).

The version holds the relevance model's own signatures (`serving_default`, `embed_images`,
`score_with_image_features`, `explain`) next to `search`, `search_top`, `similar_products` and
`complements`, the catalogue as variables, TF Serving warm-up requests for all of them and the
in-memory answers `esr-tf verify` compares against (`assets.extra/esr_tf_reference.npz`, calls
stored as `call/<signature>/...`). `assets.extra/esr_tf_index.json` says which models embedded
the catalogue (`models_digest`), so `--add` / `--remove` refuse to mix in another model's vectors.

Versions are written like every export (`saved_model.write_version`: staged, swapped in, one
export at a time). `update_search_index` reads the latest version's arrays back, embeds only the
new products and writes the next version.

Example:
>>> path = export_search_index(model, towers, catalogue, "serving_models", model_name="shop")  # doctest: +SKIP
>>> path = update_search_index(model, towers, "serving_models", "shop", add=new_products)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.export.saved_model import (
    REFERENCE_FILE,
    build_archive,
    build_signatures,
    model_warmup_records,
    reference_outputs,
    sample_inputs,
    write_version,
)
from esr_tf.export.versions import check_model_name, version_numbers
from esr_tf.search.blend import choose_ranking
from esr_tf.search.catalogue import (
    IndexArrays,
    IndexBuildError,
    embed_catalogue,
    merge,
    models_digest,
    read_index,
)
from esr_tf.search.graph import CatalogueSearch
from esr_tf.search.ranking import weights_of
from esr_tf.search.requests import search_warmup_records
from esr_tf.serving.requests import WARMUP_FILE_NAME, write_warmup_file
from esr_tf.training.stored_photos import StoredPhotos

INDEX_INFO_FILE = "esr_tf_index.json"


def _calls(search: CatalogueSearch, arrays: IndexArrays) -> list[tuple[str, dict]]:
    """Sample calls of the search signatures: product titles as queries, the first product ids."""
    titles = [t for t in arrays.titles.tolist() if t.strip()][:3] or ["product"]
    ids = arrays.product_ids[:2].tolist()
    calls = [("search", {"query": titles}),
             ("search_top", {"query": titles[:1], "k": min(3, len(arrays)), "rerank": 8}),
             ("retrieve_top", {"query": titles[:2], "k": min(5, len(arrays))})]
    if len(arrays) > 1:
        calls += [(name, {"product_id": ids}) for name in ("similar_products", "complements")
                  if name in search.signatures()]
    return calls


def _search_reference(search: CatalogueSearch, arrays: IndexArrays) -> dict[str, np.ndarray]:
    ref = {}
    for name, inputs in _calls(search, arrays):
        fn = search.signatures()[name]
        out = fn(**{k: tf.constant(v, tf.int32) if isinstance(v, int) else tf.constant(v) for k, v in inputs.items()})
        ref.update({f"call/{name}/input/{k}": np.asarray(v, np.int32 if isinstance(v, int) else object)
                    for k, v in inputs.items()})
        ref.update({f"call/{name}/output/{k}": v.numpy() for k, v in out.items()})
    return ref


def _write_index(search: CatalogueSearch, arrays: IndexArrays, target: Path, model_name: str, info: dict) -> None:
    model = search.model
    signatures = {**build_signatures(model), **search.signatures()}
    samples = sample_inputs()
    # Reference answers first: tracing for these calls is reused by the save, not the reverse (2x faster).
    reference = {**reference_outputs(model, signatures, samples), **_search_reference(search, arrays)}
    # `read_index` finds the catalogue arrays under `index`.
    build_archive(model, signatures, index=search.catalogue).write_out(target)
    extra = target / "assets.extra"
    extra.mkdir(exist_ok=True)
    records = model_warmup_records(model, samples, len(samples["query"]), model_name)
    records += search_warmup_records(arrays.titles[:4].tolist(), arrays.product_ids[:2].tolist(),
                                     model_name=model_name, signatures=list(search.signatures()))
    write_warmup_file(extra / WARMUP_FILE_NAME, records)
    np.savez(extra / REFERENCE_FILE, **reference)
    (extra / INDEX_INFO_FILE).write_text(json.dumps(info, indent=2))


def _info(model, towers, arrays: IndexArrays, source: str) -> dict:
    return {
        "models_digest": models_digest(model, towers),
        "products": len(arrays),
        "photos": len(arrays.photo_tokens) - 1,
        "embedding_dim": int(arrays.embeddings.shape[1]),
        "source": source,
        "catalogue_bytes": int(arrays.nbytes),
    }


def export_search_index(model, towers, products: Sequence, base_dir: str | Path, *, model_name: str = "search",
                        version: int | None = None, overwrite: bool = False, source: str = "",
                        choose_on=None, qrels: str | Path | None = None, stored: StoredPhotos | None = None) -> Path:
    """Embeds `products` (`data.Product`s) and writes a search index version; returns its path.

    `choose_on`: a catalogue whose valid queries choose how `search` orders what it re-ranks
    (`search.blend`: a blend of the model's score with retrieval's, or a list head fitted on its
    train or, cross-fitted, its valid queries; judged by `qrels` if given); without one the
    model's order alone.
    `stored`: photo feature maps a feature store holds (`StoredPhotos`), read instead of computed."""
    arrays = embed_catalogue(model, towers, products, stored=stored)
    return write_index(model, towers, arrays, base_dir, model_name=model_name, version=version,
                       overwrite=overwrite, source=source, choose_on=choose_on, qrels=qrels)


def write_index(model, towers, arrays: IndexArrays, base_dir: str | Path, *, model_name: str = "search",
                version: int | None = None, overwrite: bool = False, source: str = "",
                choose_on=None, qrels: str | Path | None = None) -> Path:
    """Writes already embedded `arrays` as a search index version (`choose_on`: see `export_search_index`)."""
    search = CatalogueSearch(model, towers, arrays)
    info = _info(model, towers, arrays, source)
    if choose_on is not None:
        info["rerank"] = choose_ranking(search, choose_on, qrels=qrels)
        search.catalogue.rank_weights.assign(info["rerank"]["rank_weights"])
    return write_version(base_dir, model_name, version, overwrite,
                         lambda target: _write_index(search, arrays, target, model_name, info))


def latest_version(base_dir: str | Path, model_name: str) -> Path:
    model_dir = Path(base_dir) / check_model_name(model_name)
    versions = version_numbers(model_dir)
    if not versions:
        raise IndexBuildError(f"{model_dir}: no index version to update (build one first, without --add/--remove)")
    return model_dir / str(versions[0])


def update_search_index(model, towers, base_dir: str | Path, model_name: str, *, add: Sequence = (),
                        remove: Iterable[str] = (), source: str = "", stored: StoredPhotos | None = None) -> Path:
    """The next version of the latest index: `add` products embedded (same id: replaced),
    `remove` ids dropped; the other products keep their stored vectors."""
    new = embed_catalogue(model, towers, add, stored=stored) if len(add) else None
    digest = models_digest(model, towers)

    def write(target: Path) -> None:  # under the export lock: no other version lands in between
        previous = latest_version(base_dir, model_name)
        info_path = previous / "assets.extra" / INDEX_INFO_FILE
        if not info_path.is_file():
            raise IndexBuildError(f"{previous}: not a search index version (no assets.extra/{INDEX_INFO_FILE})")
        previous_info = json.loads(info_path.read_text())
        if previous_info["models_digest"] != digest:
            raise IndexBuildError(
                f"{previous} was embedded by other models than --model (its model.keras / retrieval.keras "
                "differ); rebuild the index without --add / --remove")
        arrays = merge(read_index(previous), new, remove)
        info = _info(model, towers, arrays, source)
        rerank = previous_info.get("rerank")  # the ranking chosen when the catalogue was indexed carries over
        if rerank:
            info["rerank"] = rerank
        search = CatalogueSearch(model, towers, arrays, weights_of(rerank, model.label_set.num_labels))
        _write_index(search, arrays, target, model_name, info)

    latest_version(base_dir, model_name)  # a clear error before anything is written
    return write_version(base_dir, model_name, None, False, write)
