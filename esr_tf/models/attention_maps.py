"""Where each text token looks in the photo: the last fusion block's cross-attention.

`RelevanceModel.attention_maps` / `explain` and the export's `explain` signature use these.
Nothing here adds weights or layers: `block_inputs_model` is a view of the fusion head's own
graph up to the last `CrossAttentionBlock`'s inputs, and `cross_attention_scores` calls that
block's own `cross_attn` sublayer (same weights) with `return_attention_scores=True`, so the
model's layout, saved files and outputs stay exactly as they were.

Example:
>>> from esr_tf.models.builder import TINY_MODEL, build_relevance_model
>>> model = build_relevance_model(**TINY_MODEL)
>>> out = model.explain({"query": ["red shoe"], "title": ["Red shoe"], "brand": [""], "color": [""], "image": [b""]})
>>> out["attention"].shape, out["tokens"].shape  # [n, L, h, w], [n, L]
((1, 24, 8, 8), (1, 24))
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from esr_tf.models.fusion_head import head_inputs

# Fusion modes whose text tokens attend over image patches (the others have no attention map).
ATTENTION_FUSIONS = ("cross_attention", "image_only")


def has_attention(model) -> bool:
    """Whether `model` (a `RelevanceModel`) has cross-attention maps to explain."""
    return getattr(model, "fusion", None) in ATTENTION_FUSIONS


def check_attention(model) -> None:
    """Raises `ValueError` for fusion modes without cross-attention (text_only, concat, gated)."""
    if not has_attention(model):
        raise ValueError(
            f"explain needs text-over-image cross-attention (fusion in {ATTENTION_FUSIONS}); "
            f"this model has fusion={getattr(model, 'fusion', None)!r}"
        )


def last_fusion_block(fusion_head: keras.Model) -> keras.layers.Layer:
    """The last `fusion_block_<i>` (a `CrossAttentionBlock`) of the fusion head."""
    blocks = [layer for layer in fusion_head.layers if layer.name.startswith("fusion_block_")]
    if not blocks:
        raise ValueError("the fusion head has no fusion_block_<i> layer (no cross-attention)")
    return max(blocks, key=lambda layer: int(layer.name.rsplit("_", 1)[1]))


def block_inputs_model(fusion_head: keras.Model) -> keras.Model:
    """fusion-head inputs -> the last block's inputs `[text, image tokens, text_mask, image_mask]`.

    Built from the head's own graph (the block's one inbound node), so it shares every weight.
    """
    node = last_fusion_block(fusion_head)._inbound_nodes[0]
    return keras.Model(fusion_head.input, list(node.input_tensors), name="fusion_block_inputs")


def cross_attention_scores(block, text, image, text_mask, image_mask):
    """`[B, heads, L, keys]` softmax weights of `block`'s cross-attention (key 0: "no image",
    then the P patches, then the whole-photo key with `photo_summary`).

    The same masks as `CrossAttentionBlock.call`; only the scores are kept.
    """
    text_mask = ops.cast(text_mask, "bool")
    image_mask = ops.cast(image_mask, "bool")
    cross_mask = ops.logical_and(text_mask[:, :, None], image_mask[:, None, :])
    _, scores = block.cross_attn(
        query=text, value=image, key=image, attention_mask=cross_mask,
        return_attention_scores=True, training=False,
    )
    return scores


def patch_attention(scores, text_mask, grid: tuple[int, int]):
    """Head-averaged attention over the patch grid, `[B, L, h, w]` float32.

    The "no image" key (column 0) and the whole-photo key after the patches (`photo_summary`)
    are dropped, so a row sums to 1 minus what went to them (0 for a product without a photo);
    padding positions are set to 0.
    """
    mean = ops.mean(ops.cast(scores, "float32"), axis=1)[:, :, 1 : 1 + grid[0] * grid[1]]
    mean = mean * ops.cast(text_mask, "float32")[:, :, None]
    shape = ops.shape(mean)
    return ops.reshape(mean, (shape[0], shape[1], grid[0], grid[1]))


_INPUTS_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inputs_model(fusion_head: keras.Model) -> keras.Model:
    # Cached outside the model: an attribute holding a keras.Model would be walked (and its
    # weights written a second time) by `model.save`.
    if fusion_head not in _INPUTS_MODELS:
        _INPUTS_MODELS[fusion_head] = block_inputs_model(fusion_head)
    return _INPUTS_MODELS[fusion_head]


def attention_maps(model, text: dict, packed, image_tokens, has_image):
    """`[B, L, h, w]` attention of each text token over the patch grid (see `patch_attention`).

    Same inputs as `RelevanceModel.score`: `encode_text` outputs, the packed ids, image tokens.
    """
    check_attention(model)
    head = model.fusion_head
    inputs = head_inputs(text, packed, image_tokens, has_image)
    x, tokens, text_mask, image_mask = _inputs_model(head)(inputs, training=False)
    scores = cross_attention_scores(last_fusion_block(head), x, tokens, text_mask, image_mask)
    return patch_attention(scores, text_mask, tuple(model.image_projector.input.shape[1:3]))


def token_strings(model, token_ids):
    """The WordPiece token (bytes, string tensor) of each id: a `tf.gather` from the vocabulary,
    so the export needs no op beyond stock TF."""
    vocabulary = tf.constant(model.preprocessor.tokenizer.get_vocabulary())
    return tf.gather(vocabulary, token_ids)


def explain(model, inputs: dict, batch_size: int = 64) -> dict[str, np.ndarray]:
    """`RelevanceModel.explain`: raw inputs -> numpy `attention`, `tokens`, `token_ids`, `segment_ids`."""
    check_attention(model)
    model.preprocessor.check_raw(inputs)
    if not len(inputs["query"]):
        raise ValueError("explain: no rows given (inputs['query'] is empty)")
    parts = []
    for start in range(0, len(inputs["query"]), batch_size):
        rows = {k: list(inputs[k][start : start + batch_size]) for k in model.preprocessor.raw_inputs}
        x = model.preprocessor(rows)
        image_tokens = model.encode_images(x["images"], x["has_image"], training=False)
        text = model.encode_text(x, training=False)
        maps = attention_maps(model, text, x, image_tokens, x["has_image"])
        parts.append({"attention": maps, "token_ids": x["token_ids"], "segment_ids": x["segment_ids"]})
    out = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    tokens = token_strings(model, out["token_ids"]).numpy()
    out["tokens"] = np.vectorize(bytes.decode, otypes=[str])(tokens)
    return out
