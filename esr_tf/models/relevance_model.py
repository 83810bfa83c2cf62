"""The fused relevance model: a KerasHub task over `RelevanceBackbone`.

relevance(query, product) = Fusion(BERT([CLS] query [SEP] title [SEP]), EfficientNet(photo)),
where text tokens attend over image patch tokens with `keras.layers.MultiHeadAttention`.

As in KerasHub (`BertTextClassifier` over `BertBackbone`), the model is a `Task`: a backbone
(`RelevanceBackbone`: BERT and the image backbone, what is frozen, cached and fingerprinted),
a preprocessor (`RelevancePreprocessor`: raw strings and image bytes in) and the trainable
layers on top, `image_projector` (feature map -> patch tokens) and `fusion_head`
(-> `probabilities`, `score`). Every path runs the same methods: `encode_text`,
`encode_images` / `image_tokens` and `score` build this graph, `head_model()` (training on
cached backbone outputs), each export signature and the feature cache.

Example:
>>> from esr_tf.models.builder import build_relevance_model
>>> model = build_relevance_model(text="tiny", image="tiny", image_size=32, sequence_length=16)
>>> raw = {"query": ["red shoe"], "title": ["Red running shoe"], "brand": [""], "color": [""], "image": [b""]}
>>> out = model.predict(raw, verbose=0)
>>> out["probabilities"].shape, out["score"].shape
((1, 4), (1,))
"""

from __future__ import annotations

import keras
import keras_hub

from esr_tf.constants import FUSION_MODES
from esr_tf.labels import LabelSet
from esr_tf.models import attention_maps as am
from esr_tf.models import fusion_layers as fl
from esr_tf.models.config import MODEL_DEFAULTS
from esr_tf.models.fusion_head import build_fusion_head, head_inputs
from esr_tf.models.relevance_backbone import TEXT_INPUTS, RelevanceBackbone
from esr_tf.preprocessing.relevance_preprocessor import RelevancePreprocessor

__all__ = ["FUSION_MODES", "TEXT_INPUTS", "RelevanceBackbone", "RelevanceModel"]


def backbone_for(fusion: str, text_backbone: keras.Model, image_backbone: keras.Model, **kwargs) -> RelevanceBackbone:
    """The `RelevanceBackbone` a `fusion` mode needs (the one place text_only / image_only
    change the encoders: image_only's BERT sees the query only, text_only reads no photo)."""
    if fusion not in FUSION_MODES:
        raise ValueError(f"fusion={fusion!r}: expected one of {FUSION_MODES}")
    return RelevanceBackbone(
        text_backbone,
        image_backbone,
        query_only=fusion == "image_only",
        reads_photos=fusion != "text_only",
        **kwargs,
    )


# Fusion-head sizes: `RelevanceModel` arguments, attributes and config entries alike.
HEAD_CONFIG = (
    "hidden_dim",
    "num_heads",
    "intermediate_dim",
    "num_fusion_layers",
    "text_self_attention",
    "dropout",
    "modality_dropout",
    "photo_summary",
    "concat_path",
    "interaction",
)


def _backbone_part(name: str) -> property:
    """`model.<name>` for `model.backbone.<name>`: the names the rest of esr_tf uses."""
    return property(lambda self: getattr(self.backbone, name), doc=f"`self.backbone.{name}`")


def model_inputs(backbone: RelevanceBackbone) -> dict:
    """Symbolic inputs of the model: packed ids, decoded images, has_image."""
    inputs = {k: keras.Input((None,), dtype="int32", name=k) for k in TEXT_INPUTS}
    inputs["images"] = keras.Input(tuple(backbone.image_backbone.input.shape[1:]), name="images")
    inputs["has_image"] = keras.Input((), name="has_image")
    return inputs


def _image_projector(image_encoder: keras.Model, hidden_dim: int) -> keras.Model:
    """Feature map (backbone channels + patch colours) -> `[B, h*w, hidden_dim]` patch tokens."""
    feature_map = keras.Input(tuple(image_encoder.output.shape[1:]), name="feature_map")
    colour_channels = image_encoder.get_layer("patch_colours").output.shape[-1]
    patch_tokens = fl.ImagePatchTokens(hidden_dim, colour_channels=colour_channels, name="patch_tokens")
    return keras.Model(feature_map, patch_tokens(feature_map), name="image_projector")


@keras.saving.register_keras_serializable(package="esr_tf")
class RelevanceModel(keras_hub.models.Task):
    """ESCI relevance classifier and ranking scorer over (query, title, photo).

    Args:
        backbone: a `RelevanceBackbone` (see `backbone_for`).
        preprocessor: a `RelevancePreprocessor` (lets `fit` / `predict` take raw strings and
            image bytes), or `None` to feed numeric features.
        fusion: one of `FUSION_MODES`. `"text_only"` ignores the photo; `"image_only"` hides
            the title from BERT (the query is still read: relevance needs it).
        hidden_dim, num_heads, intermediate_dim, num_fusion_layers: fusion sizes.
        text_self_attention: a trainable self-attention over text in each fusion block.
        dropout: dropout inside the fusion head.
        modality_dropout: share of training examples whose photo is hidden.
        photo_summary: cross-attention also reads a pooled whole-photo key, and the classifier
            the mean image token and the unfused pooled text (#15; models saved before it
            have no such entry and load without).
        concat_path: cross-attention's logits plus those of a `concat` classifier of its own over
            the pooled text and the mean image token (models saved before it load without).
        interaction: cross-attention's classifier also reads the element-wise product of the
            projected mean query token and mean photo token (models saved before it load without).
        label_set: labels and ranking gains (default ESCI).
        freeze_text, freeze_image: make the backbone weights non-trainable.
        special_token_ids: `[CLS]`, `[SEP]`, `[PAD]` ids (default: from the preprocessor).
    """

    backbone_cls = RelevanceBackbone
    preprocessor_cls = RelevancePreprocessor

    def __init__(
        self,
        backbone: RelevanceBackbone,
        preprocessor=None,
        fusion: str = MODEL_DEFAULTS.fusion,
        hidden_dim: int = MODEL_DEFAULTS.hidden_dim,
        num_heads: int = MODEL_DEFAULTS.num_heads,
        intermediate_dim: int = MODEL_DEFAULTS.intermediate_dim,
        num_fusion_layers: int = MODEL_DEFAULTS.num_fusion_layers,
        text_self_attention: bool = MODEL_DEFAULTS.text_self_attention,
        dropout: float = MODEL_DEFAULTS.dropout,
        modality_dropout: float = MODEL_DEFAULTS.modality_dropout,
        photo_summary: bool = MODEL_DEFAULTS.photo_summary,
        concat_path: bool = MODEL_DEFAULTS.concat_path,
        interaction: bool = MODEL_DEFAULTS.interaction,
        label_set: LabelSet | dict | None = None,
        freeze_text: bool = MODEL_DEFAULTS.freeze_text,
        freeze_image: bool = MODEL_DEFAULTS.freeze_image,
        special_token_ids: list[int] | None = None,
        **kwargs,
    ) -> None:
        _check_backbone(backbone, fusion)
        label_set = LabelSet.coerce(label_set)
        backbone.text_backbone.trainable = not freeze_text
        backbone.image_backbone.trainable = not freeze_image
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.fusion = fusion  # read by the encode / score methods while the graph is built

        # === Layers ===
        sizes = (hidden_dim, num_heads, intermediate_dim, num_fusion_layers, text_self_attention, dropout)
        head = dict(zip(HEAD_CONFIG, (*sizes, modality_dropout, bool(photo_summary), bool(concat_path),
                                          bool(interaction)), strict=True))
        self.image_projector = _image_projector(backbone.image_encoder, hidden_dim)
        # text_only has no photo path; image inputs are still accepted (one interface for all).
        self.no_image_tokens = fl.ZeroFeatureMap((1, 1), name="no_image_tokens")
        self.fusion_head = build_fusion_head(
            fusion=fusion,
            text_dim=backbone.text_encoder.output["sequence_output"].shape[-1],
            token_shape=tuple(self.image_projector.output.shape[1:]),
            label_set=label_set,
            special_token_ids=special_token_ids or _special_token_ids(preprocessor),
            token_embedding=backbone.token_embedding,
            **head,
        )

        # === Functional model ===
        inputs = model_inputs(backbone)
        encoded = backbone(inputs)
        tokens = self.image_tokens(encoded["feature_map"])
        outputs = self.score(encoded, inputs, tokens, inputs["has_image"])
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        for key, value in head.items():
            setattr(self, key, value)
        self.label_set = label_set
        self.freeze_text = freeze_text
        self.freeze_image = freeze_image
        self.special_token_ids = self.fusion_head.get_layer("cross_segment_match").special_token_ids

    # === The backbone's parts, under the names the rest of esr_tf uses ===

    text_backbone = _backbone_part("text_backbone")
    image_backbone = _backbone_part("image_backbone")
    text_encoder = _backbone_part("text_encoder")
    image_encoder = _backbone_part("image_encoder")

    # === The parts every path calls: this graph, head_model(), the export, the feature cache ===

    @property
    def reads_photos(self) -> bool:
        """Whether the photo reaches the output (all modes but `text_only`)."""
        return self.fusion != "text_only"

    def encode_text(self, packed, training=None) -> dict:
        """BERT over packed ids: `{"sequence_output" [B, L, H], "text_mask" [B, L]}`."""
        return self.backbone.encode_text(packed, training=training)

    def encode_images(self, images, has_image, training=None):
        """Image tokens of decoded `images` (`[B, P, hidden_dim]`; `[B, 1, 1]` zeros for
        `text_only`). Rows whose `has_image` is 0 skip the image backbone: the fusion head
        masks their tokens anyway."""
        return self.image_tokens(self.backbone.encode_photos(images, has_image, training=training), training=training)

    def image_tokens(self, feature_map, training=None):
        """Image tokens from `image_encoder` feature maps (cached ones, in `head_model()`)."""
        if not self.reads_photos:
            return self.no_image_tokens(feature_map)
        return self.image_projector(feature_map, training=training)

    def score(self, text: dict, packed, image_tokens, has_image, training=None) -> dict:
        """`{"probabilities", "score"}` from `encode_text` outputs, the packed ids and image tokens."""
        return self.fusion_head(head_inputs(text, packed, image_tokens, has_image), training=training)

    def head_model(self) -> keras.Model:
        """The trainable part above the backbone: (BERT output, feature map) -> outputs.

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

    # === Explaining a prediction: where each text token looks in the photo ===

    @property
    def has_attention(self) -> bool:
        """Whether text tokens attend over image patches (`cross_attention`, `image_only`)."""
        return am.has_attention(self)

    def attention_maps(self, text: dict, packed, image_tokens, has_image):
        """`[B, L, h, w]`: each text token's head-averaged attention over the patch grid in the
        last fusion block (same inputs as `score`; `ValueError` without cross-attention)."""
        return am.attention_maps(self, text, packed, image_tokens, has_image)

    def explain(self, inputs: dict, batch_size: int = 64) -> dict:
        """Raw `{"query", "title", "image"}` -> numpy `attention` [n, L, h, w], `tokens` [n, L]
        (str), `token_ids`, `segment_ids`: what the export's `explain` signature returns.

        Example:
        >>> out = model.explain({"query": ["red shoe"], "title": ["Red shoe"], "image": [b""]})  # doctest: +SKIP
        >>> out["attention"].shape, out["tokens"][0][:3].tolist()  # doctest: +SKIP
        ((1, 48, 7, 7), ['[CLS]', 'red', 'shoe'])
        """
        return am.explain(self, inputs, batch_size=batch_size)

    def predict(self, x, *args, **kwargs):
        """Keras `predict`; raw inputs are checked first (a missing product field or inputs of
        different lengths is one error naming them, not a failure deep inside the graph)."""
        if self.preprocessor is not None and isinstance(x, dict) and "query" in x:
            self.preprocessor.check_raw(x)
        return super().predict(x, *args, **kwargs)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "fusion": self.fusion,
            **{key: getattr(self, key) for key in HEAD_CONFIG},
            "label_set": self.label_set.get_config(),
            "freeze_text": self.freeze_text,
            "freeze_image": self.freeze_image,
            "special_token_ids": self.special_token_ids,
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config.setdefault("photo_summary", False)  # saved before #15: built without it
        config.setdefault("concat_path", False)  # saved before #29
        config.setdefault("interaction", False)  # saved before #29's query-photo product
        if "text_backbone" in config:  # a model saved before the Backbone / Task split
            encoders = [config.pop(k) for k in ("text_backbone", "image_backbone")]
            encoders = [keras.layers.deserialize(e) if isinstance(e, dict) else e for e in encoders]
            config["backbone"] = backbone_for(config.get("fusion", "cross_attention"), *encoders)
        return super().from_config(config)


def _check_backbone(backbone: RelevanceBackbone, fusion: str) -> None:
    if fusion not in FUSION_MODES:
        raise ValueError(f"fusion={fusion!r}: expected one of {FUSION_MODES}")
    expected = (fusion == "image_only", fusion != "text_only")
    if (backbone.query_only, backbone.reads_photos) != expected:
        raise ValueError(
            f"fusion={fusion!r} needs a RelevanceBackbone with query_only={expected[0]}, "
            f"reads_photos={expected[1]} (build it with backbone_for)"
        )


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
