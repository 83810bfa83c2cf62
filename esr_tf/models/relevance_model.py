"""The fused relevance model: a KerasHub task over a BERT and an EfficientNet backbone.

relevance(query, product) = Fusion(BERT([CLS] query [SEP] title [SEP]), EfficientNet(photo)),
where text tokens attend over image patch tokens with `keras.layers.MultiHeadAttention`.

The graph is built functionally from four sub-models, so that parts can be run alone:
`text_encoder` (BERT), `image_encoder` (EfficientNet, BatchNorm always in inference mode),
`image_projector` (feature map -> patch tokens; what the `embed_images` signature returns) and
`fusion_head` (-> `probabilities`, `score`). With frozen backbones, `head_model()` trains on
backbone outputs computed once (see `esr_tf.training.feature_cache`).

Example:
>>> from esr_tf.models.builder import build_relevance_model
>>> model = build_relevance_model(text="tiny", image="tiny", image_size=32, sequence_length=16)
>>> out = model.predict({"query": ["red shoe"], "title": ["Red running shoe"], "image": [b""]},
...                     verbose=0)
>>> out["probabilities"].shape, out["score"].shape
((1, 4), (1,))
"""

from __future__ import annotations

import keras
import keras_hub

from esr_tf.labels import LabelSet
from esr_tf.models import fusion_layers as fl

FUSION_MODES = ("cross_attention", "concat", "gated", "text_only", "image_only")
TEXT_INPUTS = ("token_ids", "segment_ids", "padding_mask")


@keras.saving.register_keras_serializable(package="esr_tf")
class RelevanceModel(keras_hub.models.Task):
    """ESCI relevance classifier and ranking scorer over (query, title, photo).

    Args:
        text_backbone: a `keras_hub.models.BertBackbone`.
        image_backbone: a Keras model mapping `[B, S, S, 3]` images to a `[B, h, w, C]` map,
            with BatchNorm in inference mode (see `build_image_backbone`).
        preprocessor: a `RelevancePreprocessor` (lets `fit` / `predict` take raw strings and
            image bytes), or `None` to feed numeric features.
        fusion: one of `FUSION_MODES`. `"text_only"` ignores the photo; `"image_only"` hides
            the title from BERT (the query is still read: relevance needs it).
        hidden_dim, num_heads, intermediate_dim, num_fusion_layers: fusion sizes.
        text_self_attention: a trainable self-attention over text in each fusion block.
        dropout: dropout inside the fusion head.
        modality_dropout: share of training examples whose photo is hidden.
        label_set: labels and ranking gains (default ESCI).
        freeze_text, freeze_image: make the backbone weights non-trainable.
    """

    def __init__(
        self,
        text_backbone: keras.Model,
        image_backbone: keras.Model,
        preprocessor=None,
        fusion: str = "cross_attention",
        hidden_dim: int = 256,
        num_heads: int = 4,
        intermediate_dim: int = 512,
        num_fusion_layers: int = 1,
        text_self_attention: bool = True,
        dropout: float = 0.1,
        modality_dropout: float = 0.1,
        label_set: LabelSet | dict | None = None,
        freeze_text: bool = False,
        freeze_image: bool = False,
        special_token_ids: list[int] | None = None,
        **kwargs,
    ) -> None:
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion={fusion!r}: expected one of {FUSION_MODES}")
        label_set = LabelSet.coerce(label_set)
        text_backbone.trainable = not freeze_text
        image_backbone.trainable = not freeze_image
        self.text_backbone = text_backbone
        self.image_backbone = image_backbone
        self.preprocessor = preprocessor
        self.fusion = fusion  # read by the encode / score methods while the graph is built

        # === Sub-models ===
        text_in = {k: keras.Input((None,), dtype="int32", name=k) for k in TEXT_INPUTS}
        mask = text_in["padding_mask"]
        if fusion == "image_only":
            # Only the query segment (segment 0) stays visible to BERT and to pooling.
            mask = fl.QueryOnlyMask(name="query_only_mask")(mask, text_in["segment_ids"])
        seq = text_backbone({**text_in, "padding_mask": mask})["sequence_output"]
        self.text_encoder = keras.Model(text_in, {"sequence_output": seq, "text_mask": mask}, name="text_encoder")

        image_shape = tuple(image_backbone.input.shape[1:])
        images = keras.Input(image_shape, name="images")
        # The backbone runs its BatchNorm in inference mode by construction (it wraps itself in
        # `InferenceModeBackbone`: a bare training=False here would be overridden in Keras 3).
        features = image_backbone(images)
        colours = fl.PatchColours(tuple(features.shape[1:3]), name="patch_colours")(images)
        features = keras.layers.Concatenate(name="features_and_colours")([features, colours])
        self.image_encoder = keras.Model(images, features, name="image_encoder")
        # Rows without a photo skip the backbone; see `GatherPhotoRows`. (Two weightless
        # layers around `image_encoder`, not a wrapper: .keras files key weights by layer order.)
        self.gather_photos = fl.GatherPhotoRows(name="gather_photo_rows")
        self.scatter_photos = fl.ScatterPhotoRows(name="scatter_photo_rows")
        # text_only has no photo path at all; image inputs are still accepted, so that every
        # mode shares one interface.
        self.no_image_tokens = fl.EmptyImageTokens(name="no_image_tokens")
        feature_shape = tuple(self.image_encoder.output.shape[1:])
        feature_map = keras.Input(feature_shape, name="feature_map")
        self.image_projector = keras.Model(
            feature_map,
            fl.ImagePatchTokens(hidden_dim, colour_channels=colours.shape[-1], name="patch_tokens")(feature_map),
            name="image_projector",
        )
        self.fusion_head = _build_fusion_head(
            fusion=fusion,
            text_dim=seq.shape[-1],
            token_shape=tuple(self.image_projector.output.shape[1:]),
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            intermediate_dim=intermediate_dim,
            num_fusion_layers=num_fusion_layers,
            text_self_attention=text_self_attention,
            dropout=dropout,
            modality_dropout=modality_dropout,
            label_set=label_set,
            special_token_ids=special_token_ids or _special_token_ids(preprocessor),
            token_embedding=text_backbone.token_embedding,
        )

        # === Functional model ===
        inputs = {k: keras.Input((None,), dtype="int32", name=k) for k in TEXT_INPUTS}
        inputs["images"] = keras.Input(image_shape, name="images")
        inputs["has_image"] = keras.Input((), name="has_image")
        text = self.encode_text(inputs)
        tokens = self.encode_images(inputs["images"], inputs["has_image"])
        outputs = self.score(text, inputs, tokens, inputs["has_image"])
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.num_fusion_layers = num_fusion_layers
        self.text_self_attention = text_self_attention
        self.dropout = dropout
        self.modality_dropout = modality_dropout
        self.label_set = label_set
        self.freeze_text = freeze_text
        self.freeze_image = freeze_image
        self.special_token_ids = self.fusion_head.get_layer("cross_segment_match").special_token_ids

    # === The parts every path calls: this graph, head_model(), the export, the feature cache ===

    @property
    def reads_photos(self) -> bool:
        """Whether the photo reaches the output (all modes but `text_only`)."""
        return self.fusion != "text_only"

    def encode_text(self, packed, training=None) -> dict:
        """BERT over packed ids: `{"sequence_output" [B, L, H], "text_mask" [B, L]}`."""
        return self.text_encoder({k: packed[k] for k in TEXT_INPUTS}, training=training)

    def encode_images(self, images, has_image, training=None):
        """Image tokens of decoded `images` (`[B, P, hidden_dim]`; `[B, 1, 1]` zeros for
        `text_only`). Rows whose `has_image` is 0 skip the image backbone: the fusion head
        masks their tokens anyway."""
        if not self.reads_photos:
            return self.no_image_tokens(images)
        photos = self.image_encoder(self.gather_photos(images, has_image), training=training)
        return self.image_tokens(self.scatter_photos(photos, has_image), training=training)

    def image_tokens(self, feature_map, training=None):
        """Image tokens from `image_encoder` feature maps (cached ones, in `head_model()`)."""
        if not self.reads_photos:
            return self.no_image_tokens(feature_map)
        return self.image_projector(feature_map, training=training)

    def score(self, text: dict, packed, image_tokens, has_image, training=None) -> dict:
        """`{"probabilities", "score"}` from `encode_text` outputs, the packed ids and image tokens."""
        head_inputs = {
            "sequence_output": text["sequence_output"],
            "text_mask": text["text_mask"],
            "token_ids": packed["token_ids"],
            "segment_ids": packed["segment_ids"],
            "image_tokens": image_tokens,
            "has_image": has_image,
        }
        return self.fusion_head(head_inputs, training=training)

    def head_model(self) -> keras.Model:
        """The trainable part above the backbones: (BERT output, feature map) -> outputs.

        Shares its weights with this model; train it on cached backbone outputs when both
        backbones are frozen.
        """
        seq = keras.Input(tuple(self.text_encoder.output["sequence_output"].shape[1:]), name="sequence_output")
        inputs = {
            "sequence_output": seq,
            "text_mask": keras.Input((None,), dtype="int32", name="text_mask"),
            "token_ids": keras.Input((None,), dtype="int32", name="token_ids"),
            "segment_ids": keras.Input((None,), dtype="int32", name="segment_ids"),
            "feature_map": keras.Input(tuple(self.image_encoder.output.shape[1:]), name="feature_map"),
            "has_image": keras.Input((), name="has_image"),
        }
        tokens = self.image_tokens(inputs["feature_map"])
        outputs = self.score(inputs, inputs, tokens, inputs["has_image"])
        return keras.Model(inputs, outputs, name="head_model")

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "text_backbone": keras.layers.serialize(self.text_backbone),
                "image_backbone": keras.layers.serialize(self.image_backbone),
                "fusion": self.fusion,
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "num_fusion_layers": self.num_fusion_layers,
                "text_self_attention": self.text_self_attention,
                "dropout": self.dropout,
                "modality_dropout": self.modality_dropout,
                "label_set": self.label_set.get_config(),
                "freeze_text": self.freeze_text,
                "freeze_image": self.freeze_image,
                "special_token_ids": self.special_token_ids,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        for key in ("text_backbone", "image_backbone"):
            if isinstance(config.get(key), dict):
                config[key] = keras.layers.deserialize(config[key])
        return super().from_config(config)


def _special_token_ids(preprocessor) -> list[int]:
    """[CLS], [SEP], [PAD] ids, which must never count as a query-title match."""
    tokenizer = getattr(preprocessor, "tokenizer", None)
    ids = {tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id} if tokenizer is not None else set()
    if not ids or None in ids:
        raise ValueError(
            "RelevanceModel needs the tokenizer's [CLS]/[SEP]/[PAD] ids: pass a preprocessor with a loaded "
            "tokenizer, or special_token_ids"
        )
    return sorted(ids)


def _build_fusion_head(
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
    label_set: LabelSet,
    special_token_ids: list[int],
    token_embedding: keras.layers.Layer,
) -> keras.Model:
    """(BERT tokens, text mask, token/segment ids, image tokens, has_image) -> outputs."""
    seq = keras.Input((None, text_dim), name="sequence_output")
    text_mask = keras.Input((None,), dtype="int32", name="text_mask")
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    segment_ids = keras.Input((None,), dtype="int32", name="segment_ids")
    image_tokens = keras.Input(token_shape if fusion != "text_only" else (1, 1), name="image_tokens")
    has_image = keras.Input((), name="has_image")
    inputs = {
        "sequence_output": seq,
        "text_mask": text_mask,
        "token_ids": token_ids,
        "segment_ids": segment_ids,
        "image_tokens": image_tokens,
        "has_image": has_image,
    }

    text = keras.layers.Dense(hidden_dim, name="text_projection")(seq)
    match = fl.CrossSegmentMatch(special_token_ids, name="cross_segment_match")(token_ids, segment_ids, text_mask)
    match = keras.layers.Reshape((-1, 1), name="match_feature")(match)
    match = keras.layers.Dense(hidden_dim, name="match_embedding")(match)
    # BERT's own (frozen) input embedding of each token: word identity that the contextual
    # outputs of a sentence encoder blur ("red" and "blue" end up close together there).
    identity = keras.layers.Dense(hidden_dim, name="token_identity")(token_embedding(token_ids))
    text = keras.layers.Add(name="text_with_match")([text, match, identity])
    text = keras.layers.LayerNormalization(epsilon=1e-6, name="text_projection_norm")(text)
    text_cls = fl.FirstToken(name="cls_token")(text)
    text_mean = fl.MaskedMeanPool(name="text_mean")(text, text_mask)
    pooled_text = keras.layers.Concatenate(name="text_pooled")([text_cls, text_mean])

    if fusion in ("text_only",):
        features = pooled_text
    else:
        visible = fl.ModalityDropout(modality_dropout, name="modality_dropout")(has_image)
        tokens, image_mask = fl.NoImageToken(name="no_image_token")(image_tokens, visible)
        if fusion in ("cross_attention", "image_only"):
            x = text
            for i in range(num_fusion_layers):
                x = fl.CrossAttentionBlock(
                    num_heads=num_heads,
                    hidden_dim=hidden_dim,
                    intermediate_dim=intermediate_dim,
                    dropout=dropout,
                    self_attention=text_self_attention,
                    name=f"fusion_block_{i}",
                )(x, tokens, text_mask, image_mask)
            cls = fl.FirstToken(name="fused_cls")(x)
            features = keras.layers.Concatenate(name="fused_pooled")(
                [cls, fl.MaskedMeanPool(name="fused_mean")(x, text_mask)]
            )
        else:
            image_vec = fl.MaskedMeanPool(name="image_mean")(tokens, image_mask)
            if fusion == "concat":
                features = keras.layers.Concatenate(name="concat")([pooled_text, image_vec])
            else:  # gated: the text decides how much of the photo to let through, per channel.
                gate = keras.layers.Dense(hidden_dim, activation="sigmoid", name="gate")(pooled_text)
                gated = keras.layers.Multiply(name="gated_image")([gate, image_vec])
                features = keras.layers.Concatenate(name="gated_concat")([pooled_text, gated])

    x = keras.layers.Dropout(dropout, name="head_dropout")(features)
    x = keras.layers.Dense(hidden_dim, activation="gelu", name="head_dense")(x)
    logits = keras.layers.Dense(label_set.num_labels, name="logits")(x)
    # float32 outputs keep softmax and scores exact under mixed precision.
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(logits)
    score = fl.ExpectedGain(label_set.gains, name="score", dtype="float32")(probabilities)
    return keras.Model(inputs, {"probabilities": probabilities, "score": score}, name="fusion_head")
