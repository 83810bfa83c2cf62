"""The catalogue side of a search index as arrays: embedded once, extended without retraining.

`embed_catalogue` runs each product through the product tower and each distinct photo through
the image branch once (`training.product_embeddings`); `merge` adds, replaces and removes
products between index versions, re-embedding only what is new; `read_index` takes the arrays
back out of an exported version (its variables), so `esr-tf index --add` never recomputes the
products it already has. `models_digest` ties an index to the exact models that embedded it.

Example:
>>> arrays = embed_catalogue(model, towers, list(catalogue.products.values()))  # doctest: +SKIP
>>> arrays = merge(arrays, embed_catalogue(model, towers, new_products), remove={"p7"})  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from esr_tf.constants import PRODUCT_TEXT_FIELDS
from esr_tf.search.embeddings import photo_tokens, product_vectors
from esr_tf.search.towers import product_tower
from esr_tf.training.stored_photos import StoredPhotos


class IndexBuildError(ValueError):
    """A bad index request (empty catalogue, unknown ids, models that do not match)."""


@dataclass
class IndexArrays:
    product_ids: np.ndarray  # [N] str
    titles: np.ndarray  # [N] str
    embeddings: np.ndarray  # [N, d] float32, unit vectors
    photo_tokens: np.ndarray  # [U + 1, P, H] float32 (bfloat16 in the export), row 0 = no photo
    photo_row: np.ndarray  # [N] int32
    # The other product fields the relevance model reads when it re-ranks (brand, color, ...).
    fields: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [N] str

    def __len__(self) -> int:
        return len(self.product_ids)

    @property
    def nbytes(self) -> int:
        """Bytes of the catalogue's arrays in an export (tokens as bfloat16; ids and titles not counted)."""
        return int(self.embeddings.nbytes + self.photo_tokens.size * 2 + self.photo_row.nbytes)


def models_digest(*models) -> str:
    """sha1 over every weight of `models` (the relevance model and the towers)."""
    digest = hashlib.sha1()
    for model in models:
        for weight in model.weights:
            digest.update(weight.path.encode())
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def embed_catalogue(model, towers, products: Sequence, batch_size: int = 256,
                    stored: StoredPhotos | None = None) -> IndexArrays:
    """Index arrays of `products` (`data.Product`s), each photo file encoded once (read from
    `stored`, a training run's feature store, where it holds the photo)."""
    products = list(products)
    if not products:
        raise IndexBuildError("no products to index")
    tokens, rows = photo_tokens(model, [p.image for p in products], stored=stored)
    vectors = product_vectors(model, [p.title for p in products], tokens, rows)
    embeddings = product_tower(towers).predict(vectors, batch_size=batch_size, verbose=0)
    return IndexArrays(
        product_ids=np.array([p.product_id for p in products], dtype=object),
        titles=np.array([p.title for p in products], dtype=object),
        embeddings=np.asarray(embeddings, np.float32),
        photo_tokens=tokens,
        photo_row=rows.astype(np.int32),
        fields={f: np.array([getattr(p, f) for p in products], dtype=object)
                for f in model.preprocessor.product_fields if f != "title"},
    )


def _compact(arrays: IndexArrays) -> IndexArrays:
    """Drops photo-table rows no product points at (row 0 always stays)."""
    used = np.unique(np.concatenate([[0], arrays.photo_row]))
    remap = np.zeros(len(arrays.photo_tokens), np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)
    arrays.photo_tokens = arrays.photo_tokens[used]
    arrays.photo_row = remap[arrays.photo_row]
    return arrays


def merge(old: IndexArrays, new: IndexArrays | None = None, remove: Iterable[str] = ()) -> IndexArrays:
    """`old` with `remove` taken out and `new` added (a product id in both: `new` replaces it)."""
    remove = set(remove)
    unknown = sorted(remove - set(old.product_ids.tolist()) - (set(new.product_ids.tolist()) if new else set()))
    if unknown:
        raise IndexBuildError(f"--remove: unknown product ids {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    replaced = remove | (set(new.product_ids.tolist()) if new is not None else set())
    keep = np.array([pid not in replaced for pid in old.product_ids.tolist()], bool)
    parts = [(old, keep)]
    rows, tables = [old.photo_row[keep]], [old.photo_tokens]
    if new is not None:
        mask = np.array([pid not in remove for pid in new.product_ids.tolist()], bool)
        parts.append((new, mask))
        shift = len(old.photo_tokens) - 1  # new photo rows go after the old ones; row 0 stays "no photo"
        rows.append(np.where(new.photo_row[mask] > 0, new.photo_row[mask] + shift, 0))
        tables.append(new.photo_tokens[1:])
    if new is not None and set(new.fields) != set(old.fields):
        raise IndexBuildError(f"the index stores product fields {sorted(old.fields)} but the new products "
                              f"{sorted(new.fields)}; rebuild the index without --add / --remove")
    merged = IndexArrays(
        product_ids=np.concatenate([a.product_ids[m] for a, m in parts]),
        titles=np.concatenate([a.titles[m] for a, m in parts]),
        embeddings=np.concatenate([a.embeddings[m] for a, m in parts]),
        photo_tokens=np.concatenate(tables),
        photo_row=np.concatenate(rows).astype(np.int32),
        fields={f: np.concatenate([a.fields[f][m] for a, m in parts]) for f in old.fields},
    )
    if not len(merged):
        raise IndexBuildError("the index would hold no products (every product removed)")
    return _compact(merged)


def read_index(export_dir: str | Path) -> IndexArrays:
    """The arrays of an exported index version, read from its variables' checkpoint (the
    SavedModel's graphs are not loaded: milliseconds instead of a model load)."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(Path(export_dir) / "variables" / "variables"))
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise IndexBuildError(f"{export_dir}: no readable variables/ (not a SavedModel export?): {e}") from None
    names = ("product_ids", "titles", "embeddings", "photo_tokens", "photo_row")
    keys = {name: f"index/{name}/.ATTRIBUTES/VARIABLE_VALUE" for name in names}
    if not all(reader.has_tensor(key) for key in keys.values()):
        raise IndexBuildError(f"{export_dir}: not a search index export (no catalogue in it)")
    value = {name: reader.get_tensor(key) for name, key in keys.items()}
    fields = {f: f"index/fields/{f}/.ATTRIBUTES/VARIABLE_VALUE" for f in PRODUCT_TEXT_FIELDS}
    fields = {f: np.array([v.decode() for v in reader.get_tensor(key).tolist()], dtype=object)
              for f, key in fields.items() if reader.has_tensor(key)}
    return IndexArrays(
        product_ids=np.array([v.decode() for v in value["product_ids"].tolist()], dtype=object),
        titles=np.array([v.decode() for v in value["titles"].tolist()], dtype=object),
        embeddings=np.ascontiguousarray(value["embeddings"].T),  # stored [d, N]
        photo_tokens=np.asarray(value["photo_tokens"], np.float32),
        photo_row=value["photo_row"],
        fields=fields,
    )
