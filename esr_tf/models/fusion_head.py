"""The fusion head: BERT tokens + image tokens -> label probabilities and the ranking score.

`build_fusion_head` returns a functional `keras.Model` taking `sequence_output`, `text_mask`,
`token_ids`, `segment_ids`, `image_tokens` and `has_image`; `fusion` picks how the photo is
read (`cross_attention`, `concat`, `gated`, `image_only` like `cross_attention`, `text_only`
not at all).

Example:
>>> import keras
>>> head = build_fusion_head(fusion="concat", text_dim=8, token_shape=(4, 8), hidden_dim=8, num_heads=2,
...     intermediate_dim=16, num_fusion_layers=1, text_self_attention=True, dropout=0.1,
...     modality_dropout=0.1, photo_summary=True, label_set=LabelSet(), special_token_ids=[0],
...     token_embedding=keras.layers.Embedding(10, 8))
>>> sorted(head.output)
['probabilities', 'score']
"""

from __future__ import annotations

import keras

from esr_tf.labels import LabelSet
from esr_tf.models import fusion_layers as fl


def head_inputs(text: dict, packed, image_tokens, has_image) -> dict:
    """The fusion head's inputs from `encode_text` outputs, the packed ids and image tokens."""
    return {
        "sequence_output": text["sequence_output"],
        "text_mask": text["text_mask"],
        "token_ids": packed["token_ids"],
        "segment_ids": packed["segment_ids"],
        "image_tokens": image_tokens,
        "has_image": has_image,
    }


def _head_inputs(text_dim: int, token_shape: tuple) -> dict:
    return {
        "sequence_output": keras.Input((None, text_dim), name="sequence_output"),
        "text_mask": keras.Input((None,), dtype="int32", name="text_mask"),
        "token_ids": keras.Input((None,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input((None,), dtype="int32", name="segment_ids"),
        "image_tokens": keras.Input(token_shape, name="image_tokens"),
        "has_image": keras.Input((), name="has_image"),
    }


def _text_tokens(inputs: dict, hidden_dim: int, special_token_ids: list[int], token_embedding):
    """Projected text tokens: BERT's outputs + a query-title exact-match flag + word identity."""
    text = keras.layers.Dense(hidden_dim, name="text_projection")(inputs["sequence_output"])
    match = fl.CrossSegmentMatch(special_token_ids, name="cross_segment_match")(
        inputs["token_ids"], inputs["segment_ids"], inputs["text_mask"]
    )
    match = keras.layers.Reshape((-1, 1), name="match_feature")(match)
    match = keras.layers.Dense(hidden_dim, name="match_embedding")(match)
    # BERT's own (frozen) input embedding of each token: word identity that the contextual
    # outputs of a sentence encoder blur ("red" and "blue" end up close together there).
    identity = keras.layers.Dense(hidden_dim, name="token_identity")(token_embedding(inputs["token_ids"]))
    text = keras.layers.Add(name="text_with_match")([text, match, identity])
    return keras.layers.LayerNormalization(epsilon=1e-6, name="text_projection_norm")(text)


def _cross_attention(text, pooled_text, tokens, text_mask, image_mask, *, num_fusion_layers: int,
                     photo_summary: bool, **block):
    """Fusion blocks (text attends over the photo), pooled to `[CLS]` + masked mean.

    With `photo_summary`, the text also attends to a pooled whole-photo key, and the classifier
    reads the mean image token and the unfused pooled text next to the fused ones: on real
    photos (dev_photos, #15) the attention path alone passed little of the photo to `[CLS]`.
    """
    keys, key_mask = tokens, image_mask
    if photo_summary:
        keys, key_mask = fl.GlobalImageToken(name="global_image_token")(tokens, image_mask)
    x = text
    for i in range(num_fusion_layers):
        x = fl.CrossAttentionBlock(**block, name=f"fusion_block_{i}")(x, keys, text_mask, key_mask)
    fused = [fl.FirstToken(name="fused_cls")(x), fl.MaskedMeanPool(name="fused_mean")(x, text_mask)]
    if photo_summary:
        fused += [fl.MaskedMeanPool(name="image_mean")(tokens, image_mask), pooled_text]
    return keras.layers.Concatenate(name="fused_pooled")(fused)


def _pooled_fusion(fusion: str, pooled_text, tokens, image_mask, hidden_dim: int):
    """`concat` / `gated`: the pooled text next to the mean image token."""
    image_vec = fl.MaskedMeanPool(name="image_mean")(tokens, image_mask)
    if fusion == "concat":
        return keras.layers.Concatenate(name="concat")([pooled_text, image_vec])
    # gated: the text decides how much of the photo to let through, per channel.
    gate = keras.layers.Dense(hidden_dim, activation="sigmoid", name="gate")(pooled_text)
    gated = keras.layers.Multiply(name="gated_image")([gate, image_vec])
    return keras.layers.Concatenate(name="gated_concat")([pooled_text, gated])


def _query_photo_interaction(inputs: dict, text, tokens, image_mask, hidden_dim: int):
    """The query's mean token times the mean photo token, each projected: low-rank bilinear pooling.

    Exact vs Substitute often turns on "does the query's colour word match the photo" while the
    title is the same for both (#29, `dev_variants`). Attention and the classifier's MLP reach
    such a product of two signals only after a long plateau; an element-wise product of two
    projections (Kim et al., ICLR 2017) offers it from the first step.
    """
    query_mask = fl.QueryOnlyMask(name="interaction_query_mask")(inputs["text_mask"], inputs["segment_ids"])
    query = fl.MaskedMeanPool(name="interaction_query_mean")(text, query_mask)
    photo = fl.MaskedMeanPool(name="interaction_image_mean")(tokens, image_mask)
    query = keras.layers.Dense(hidden_dim, name="interaction_query")(query)
    photo = keras.layers.Dense(hidden_dim, name="interaction_photo")(photo)
    return keras.layers.Multiply(name="query_photo_interaction")([query, photo])


def _logits(features, *, hidden_dim: int, dropout: float, label_set: LabelSet, prefix: str = ""):
    x = keras.layers.Dropout(dropout, name=f"{prefix}head_dropout")(features)
    x = keras.layers.Dense(hidden_dim, activation="gelu", name=f"{prefix}head_dense")(x)
    return keras.layers.Dense(label_set.num_labels, name=f"{prefix}logits")(x)


def _outputs(logits, label_set: LabelSet) -> dict:
    # float32 outputs keep softmax and scores exact under mixed precision.
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(logits)
    score = fl.ExpectedGain(label_set.gains, name="score", dtype="float32")(probabilities)
    return {"probabilities": probabilities, "score": score}


def build_fusion_head(
    *,
    fusion: str,
    text_dim: int,
    token_shape: tuple,
    hidden_dim: int,
    num_heads: int,
    intermediate_dim: int,
    num_fusion_layers: int,
    text_self_attention: bool,
    dropout: float,
    modality_dropout: float,
    photo_summary: bool,
    label_set: LabelSet,
    concat_path: bool = False,
    interaction: bool = True,
    special_token_ids: list[int],
    token_embedding: keras.layers.Layer,
) -> keras.Model:
    """(BERT tokens, text mask, token / segment ids, image tokens, has_image) -> outputs."""
    inputs = _head_inputs(text_dim, token_shape if fusion != "text_only" else (1, 1))
    text = _text_tokens(inputs, hidden_dim, special_token_ids, token_embedding)
    text_mask = inputs["text_mask"]
    pooled_text = keras.layers.Concatenate(name="text_pooled")(
        [fl.FirstToken(name="cls_token")(text), fl.MaskedMeanPool(name="text_mean")(text, text_mask)]
    )
    if fusion == "text_only":
        features = pooled_text
    else:
        visible = fl.ModalityDropout(modality_dropout, name="modality_dropout")(inputs["has_image"])
        tokens, image_mask = fl.NoImageToken(name="no_image_token")(inputs["image_tokens"], visible)
        if fusion in ("cross_attention", "image_only"):
            block = {"num_heads": num_heads, "hidden_dim": hidden_dim, "intermediate_dim": intermediate_dim,
                     "dropout": dropout, "self_attention": text_self_attention}
            features = _cross_attention(text, pooled_text, tokens, text_mask, image_mask,
                                        num_fusion_layers=num_fusion_layers, photo_summary=photo_summary, **block)
            if interaction:
                product = _query_photo_interaction(inputs, text, tokens, image_mask, hidden_dim)
                features = keras.layers.Concatenate(name="fused_with_interaction")([features, product])
        else:
            features = _pooled_fusion(fusion, pooled_text, tokens, image_mask, hidden_dim)
    sizes = {"hidden_dim": hidden_dim, "dropout": dropout, "label_set": label_set}
    logits = _logits(features, **sizes)
    if concat_path and fusion == "cross_attention":
        # A `concat` classifier of its own beside the fused one, logits summed: what concat
        # reads stays readable however the attention path trains (#29).
        concat = keras.layers.Concatenate(name="concat_path_features")(
            [pooled_text, fl.MaskedMeanPool(name="concat_path_image_mean")(tokens, image_mask)])
        logits = keras.layers.Add(name="summed_logits")([logits, _logits(concat, prefix="concat_path_", **sizes)])
    return keras.Model(inputs, _outputs(logits, label_set), name="fusion_head")
