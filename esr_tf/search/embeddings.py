"""What retrieval and the search index compute once per query, product and photo (numpy).

- `text_embeddings`: `sentence_embedding` of many texts, batched, each distinct text once;
- `photo_tokens`: the model's image tokens of each distinct photo file (`encode_images`), the
  table the search index re-ranks from, plus each product's row in it;
- `product_vectors`: the product tower's inputs for products (text + mean image token).

Example:
>>> tokens, rows = photo_tokens(model, ["a.jpg", "", "a.jpg"])  # doctest: +SKIP
>>> rows.tolist()  # doctest: +SKIP
[1, 0, 1]
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from esr_tf.search.towers import sentence_embedding
from esr_tf.training.encoder_pass import distinct_photos, photo_feature_maps
from esr_tf.training.stored_photos import StoredPhotos

# One traced function per (model, kind), kept as long as the model: a new `tf.function` on every
# call retraced each time (TF's "triggered retracing" warning in the retrieval stage, #33).
_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _traced(model, kind: str, make: Callable[[], Callable]) -> Callable:
    """`make()`'s function for `model`, made once; `make` reaches the model through `held()` (a
    weak reference: a strong one in a value would keep the key alive forever)."""
    functions = _TRACED.setdefault(model, {})
    if kind not in functions:
        functions[kind] = make()
    return functions[kind]


def text_embeddings(model, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """`[N, H]` float32 sentence embeddings of `texts` (repeated texts are computed once)."""
    texts = np.asarray(texts, dtype=object).astype(str)
    unique, inverse = np.unique(texts, return_inverse=True)
    width = model.text_encoder.output["sequence_output"].shape[-1]
    if not len(unique):
        return np.zeros((0, width), np.float32)
    held = weakref.ref(model)
    embed = _traced(model, "sentence_embedding", lambda: tf.function(
        lambda t: sentence_embedding(held(), t), input_signature=[tf.TensorSpec([None], tf.string)]))
    # Similar lengths batched together: each batch runs only up to its longest text.
    order = np.argsort([len(t) for t in unique], kind="stable")
    out = np.zeros((len(unique), width), np.float32)
    for start in range(0, len(unique), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = embed(tf.constant(unique[rows].tolist())).numpy()
    return out[inverse.reshape(-1)]


# Photos encoded per `photo_feature_maps` call while the index is built.
PHOTO_CHUNK = 1024


def _feature_maps(model, paths: list[str], batch_size: int, stored: StoredPhotos | None) -> np.ndarray:
    """The image backbone's maps of `paths`: read from `stored` where it has them, else computed."""
    known = np.array([p in stored for p in paths], bool) if stored is not None else np.zeros(len(paths), bool)
    if not known.any():
        return photo_feature_maps(model, paths, batch_size)
    maps = np.empty((len(paths), *model.image_encoder.output.shape[1:]), np.float32)
    maps[known] = stored.maps([p for p, k in zip(paths, known, strict=True) if k])
    if not known.all():
        maps[~known] = photo_feature_maps(model, [p for p, k in zip(paths, known, strict=True) if not k], batch_size)
    return maps


def photo_tokens(model, paths: Sequence[str], batch_size: int = 32,
                 stored: StoredPhotos | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(`[U + 1, P, H]` float32 image tokens, `[N]` int32 row of each path).

    Row 0 is "no photo" (zeros), row i + 1 the i-th distinct photo of `distinct_photos`, whose
    feature maps come from the training features' own encoder pass (`photo_feature_maps`), or
    from a feature store that holds them (`stored`), and go through the model's `image_tokens`.
    `text_only` models read no photo: one zero row.
    """
    paths = [str(p) for p in paths]
    unique = distinct_photos({"image": np.array(paths, dtype=object)}) if model.reads_photos else []
    row = {p: i + 1 for i, p in enumerate(unique)}
    rows = np.array([row.get(p, 0) for p in paths], np.int32)
    shape = tuple(model.fusion_head.input["image_tokens"].shape[1:])
    table = np.zeros((len(unique) + 1, *shape), np.float32)
    if not unique:
        return table, rows
    spec = tf.TensorSpec([None, *model.image_encoder.output.shape[1:]], tf.float32)
    held = weakref.ref(model)
    project = _traced(model, "image_tokens", lambda: tf.function(
        lambda m: held().image_tokens(m, training=False), input_signature=[spec], autograph=False))
    # Feature maps are ~10x the size of the tokens (7x7x1283 vs 49x128 floats): encode and project
    # a chunk at a time, so that RAM holds the token table and one chunk of maps, not every map.
    for chunk in range(0, len(unique), PHOTO_CHUNK):
        maps = _feature_maps(model, unique[chunk : chunk + PHOTO_CHUNK], batch_size, stored)
        for start in range(0, len(maps), batch_size):
            rows_at = 1 + chunk + start
            table[rows_at : rows_at + batch_size] = project(tf.constant(maps[start : start + batch_size])).numpy()
    return table, rows


def product_vectors(model, texts: Sequence[str], tokens: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The product tower's inputs: `product_embedding`, `image_vector`, `has_image`."""
    rows = np.asarray(rows, np.int32)
    has_image = (rows > 0).astype(np.float32)
    means = tokens.mean(axis=1, dtype=np.float32)  # per photo, not per product: photos repeat
    vectors = means[rows] * has_image[:, None]
    return {"product_embedding": text_embeddings(model, texts), "image_vector": vectors, "has_image": has_image}
