"""Two-tower retrieval over the relevance model's frozen parts: query -> products of a catalogue.

The cross-attention model scores a (query, product) pair at ~12 ms per pair on 2 cores, too slow
for a whole catalogue. Retrieval embeds queries and products apart, so a product is embedded once
(at index time) and a query costs one BERT pass plus a dot product with every product:

- `sentence_embedding(model, texts)`: BERT (the model's own frozen text encoder) over one text,
  mean-pooled over its tokens, as sentence-transformers pools MiniLM.
- query tower: sentence embedding of the query -> unit vector;
- product tower: sentence embedding of the product text + the mean of the product's image
  tokens (`image_vector`: `RelevanceModel.encode_images`, cached per photo for re-ranking
  anyway; zeros without a photo) + `has_image` -> unit vector.

`build_two_tower` returns one functional `keras.Model` holding both towers; `query_tower()` /
`product_tower()` are views of it that share its weights. Training (in-batch and judged hard
negatives, keras_rs layers) is `esr_tf.search.fit`.

Example:
>>> towers = build_two_tower(text_dim=8, image_dim=4, embedding_dim=16)
>>> import numpy as np
>>> out = towers({"query_embedding": np.ones((2, 8)), "product_embedding": np.ones((2, 8)),
...               "image_vector": np.zeros((2, 4)), "has_image": np.zeros(2)})
>>> tuple(out["query"].shape), tuple(out["product"].shape)
((2, 16), (2, 16))
"""

from __future__ import annotations

import keras
import tensorflow as tf

QUERY_INPUTS = ("query_embedding",)
PRODUCT_INPUTS = ("product_embedding", "image_vector", "has_image")


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of `values` [B, L, H] over the positions where `mask` [B, L] is 1 (0 for none)."""
    mask = tf.cast(mask, values.dtype)[..., None]
    return tf.reduce_sum(values * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def trim_padding(packed: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Packed ids cut after the longest row's last real token: BERT's cost grows with the width,
    and masked positions change no output (attention and every pooling mask them)."""
    width = tf.maximum(tf.reduce_max(tf.reduce_sum(packed["padding_mask"], axis=1)), 1)
    return {k: v[:, :width] for k, v in packed.items()}


def sentence_embedding(model, texts: tf.Tensor, packed: dict | None = None) -> tf.Tensor:
    """`[B, H]`: the model's frozen BERT over each text alone (segment 0), mean-pooled.

    `packed`: the texts' `preprocessor.tokenize(texts, None)` where the caller has it already.
    """
    if packed is None:
        packed = model.preprocessor.tokenize(tf.convert_to_tensor(texts, tf.string), None)
    packed = trim_padding(packed)
    out = model.encode_text(packed, training=False)
    return masked_mean(tf.cast(out["sequence_output"], tf.float32), out["text_mask"])


def build_two_tower(
    *, text_dim: int, image_dim: int, embedding_dim: int = 128, dropout: float = 0.1
) -> keras.Model:
    """Both towers as one functional model: inputs `QUERY_INPUTS + PRODUCT_INPUTS`, outputs
    `{"query": [B, d], "product": [B, d]}`, unit vectors (a dot product is a cosine)."""
    q_in = keras.Input((text_dim,), name="query_embedding")
    t_in = keras.Input((text_dim,), name="product_embedding")
    i_in = keras.Input((image_dim,), name="image_vector")
    h_in = keras.Input((), name="has_image")

    q = keras.layers.LayerNormalization(name="query_norm")(q_in)
    q = keras.layers.Dropout(dropout, name="query_dropout")(q)
    q = keras.layers.Dense(embedding_dim, name="query_projection")(q)
    query = keras.layers.UnitNormalization(name="query")(q)

    has = keras.layers.Reshape((1,), name="has_image_column")(h_in)
    text = keras.layers.LayerNormalization(name="product_text_norm")(t_in)
    # A product without a photo gets a zero image part (LayerNorm's offset would leak otherwise).
    image = keras.layers.Multiply(name="image_part")([keras.layers.LayerNormalization(name="image_norm")(i_in), has])
    p = keras.layers.Concatenate(name="product_features")([text, image, has])
    p = keras.layers.Dropout(dropout, name="product_dropout")(p)
    p = keras.layers.Dense(embedding_dim, name="product_projection")(p)
    product = keras.layers.UnitNormalization(name="product")(p)
    inputs = {"query_embedding": q_in, "product_embedding": t_in, "image_vector": i_in, "has_image": h_in}
    return keras.Model(inputs, {"query": query, "product": product}, name="two_tower")


def query_tower(towers: keras.Model) -> keras.Model:
    """`query_embedding` -> query vector, sharing `towers`' weights."""
    return keras.Model(towers.get_layer("query_embedding").output, towers.get_layer("query").output,
                       name="query_tower")


def product_tower(towers: keras.Model) -> keras.Model:
    """(`product_embedding`, `image_vector`, `has_image`) -> product vector, sharing weights."""
    inputs = {k: towers.get_layer(k).output for k in PRODUCT_INPUTS}
    return keras.Model(inputs, towers.get_layer("product").output, name="product_tower")
