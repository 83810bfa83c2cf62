"""`RelevanceBackbone`: the part of the model that is frozen, cached and fingerprinted.

A KerasHub `Backbone` over the two pretrained encoders: BERT over the packed
`[CLS] query [SEP] title [SEP]` ids (`text_encoder`) and the image backbone plus per-cell patch
colours over the decoded photos (`image_encoder`). Its outputs are what
`esr_tf.training.feature_cache` stores and what the `RelevanceModel` task's fusion head reads.

Example:
>>> import numpy as np
>>> from esr_tf.models.builder import TINY_MODEL, build_relevance_model
>>> backbone = build_relevance_model(**TINY_MODEL).backbone
>>> out = backbone({"token_ids": np.ones((2, 8), "int32"), "segment_ids": np.zeros((2, 8), "int32"),
...                 "padding_mask": np.ones((2, 8), "int32"), "images": np.zeros((2, 64, 64, 3), "float32"),
...                 "has_image": np.array([1.0, 0.0], "float32")})
>>> tuple(out["sequence_output"].shape), tuple(out["feature_map"].shape)
((2, 8, 32), (2, 8, 8, 35))
"""

from __future__ import annotations

import keras
import keras_hub

from esr_tf.models import fusion_layers as fl
from esr_tf.models import photo_rows

TEXT_INPUTS = ("token_ids", "segment_ids", "padding_mask")


def _text_encoder(text_backbone: keras.Model, query_only: bool) -> keras.Model:
    """Packed ids -> `{"sequence_output", "text_mask"}`."""
    text_in = {k: keras.Input((None,), dtype="int32", name=k) for k in TEXT_INPUTS}
    mask = text_in["padding_mask"]
    if query_only:
        # Only the query segment (segment 0) stays visible to BERT and to pooling.
        mask = fl.QueryOnlyMask(name="query_only_mask")(mask, text_in["segment_ids"])
    seq = text_backbone({**text_in, "padding_mask": mask})["sequence_output"]
    return keras.Model(text_in, {"sequence_output": seq, "text_mask": mask}, name="text_encoder")


def _image_encoder(image_backbone: keras.Model) -> keras.Model:
    """Images -> the backbone's feature map with each cell's mean colour appended."""
    images = keras.Input(tuple(image_backbone.input.shape[1:]), name="images")
    # The backbone runs its BatchNorm in inference mode by construction (it wraps itself in
    # `InferenceModeBackbone`: a bare training=False here would be overridden in Keras 3).
    features = image_backbone(images)
    colours = fl.PatchColours(tuple(features.shape[1:3]), name="patch_colours")(images)
    features = keras.layers.Concatenate(name="features_and_colours")([features, colours])
    return keras.Model(images, features, name="image_encoder")


@keras.saving.register_keras_serializable(package="esr_tf")
class RelevanceBackbone(keras_hub.models.Backbone):
    """BERT and the image backbone, as one KerasHub `Backbone`.

    Inputs: `token_ids`, `segment_ids`, `padding_mask` `[B, L]` int32, `images` `[B, S, S, 3]`
    and `has_image` `[B]`. Outputs: `sequence_output` `[B, L, H]`, `text_mask` `[B, L]` and
    `feature_map` `[B, h, w, C + 3]`, zero for rows without a photo: those never reach the
    image backbone (see `GatherPhotoRows`).

    Args:
        text_backbone: a `keras_hub.models.BertBackbone`.
        image_backbone: a Keras model mapping `[B, S, S, 3]` images to a `[B, h, w, C]` map,
            with BatchNorm in inference mode (see `build_image_backbone`).
        query_only: BERT and pooling see the query segment only (the `image_only` ablation).
        reads_photos: False for `text_only`: no photo goes through, `feature_map` is zeros.
    """

    def __init__(
        self,
        text_backbone: keras.Model,
        image_backbone: keras.Model,
        query_only: bool = False,
        reads_photos: bool = True,
        dtype=None,
        **kwargs,
    ) -> None:
        # === Layers ===
        self.text_backbone = text_backbone
        self.image_backbone = image_backbone
        self.text_encoder = _text_encoder(text_backbone, query_only)
        self.image_encoder = _image_encoder(image_backbone)
        # Two weightless layers around `image_encoder`, not a wrapper, so that the encoder stays
        # a direct layer of the graph (see esr_tf.models.legacy for why layer order matters).
        self.gather_photos = photo_rows.GatherPhotoRows(name="gather_photo_rows")
        self.scatter_photos = photo_rows.ScatterPhotoRows(name="scatter_photo_rows")
        self.no_photos = fl.ZeroFeatureMap(tuple(self.image_encoder.output.shape[1:]), name="no_photos")
        self.reads_photos = bool(reads_photos)

        # === Functional model ===
        inputs = {k: keras.Input((None,), dtype="int32", name=k) for k in TEXT_INPUTS}
        inputs["images"] = keras.Input(tuple(image_backbone.input.shape[1:]), name="images")
        inputs["has_image"] = keras.Input((), name="has_image")
        outputs = {**self.encode_text(inputs), "feature_map": self.encode_photos(inputs["images"], inputs["has_image"])}
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.query_only = bool(query_only)
        self.token_embedding = text_backbone.token_embedding

    def encode_text(self, packed, training=None) -> dict:
        """BERT over packed ids: `{"sequence_output" [B, L, H], "text_mask" [B, L]}`."""
        return self.text_encoder({k: packed[k] for k in TEXT_INPUTS}, training=training)

    def encode_photos(self, images, has_image, training=None):
        """Feature maps of decoded `images`; zeros where `has_image` is 0 (backbone skipped)."""
        if not self.reads_photos:
            return self.no_photos(images)
        photos = self.image_encoder(self.gather_photos(images, has_image), training=training)
        return self.scatter_photos(photos, has_image)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "text_backbone": keras.layers.serialize(self.text_backbone),
                "image_backbone": keras.layers.serialize(self.image_backbone),
                "query_only": self.query_only,
                "reads_photos": self.reads_photos,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> RelevanceBackbone:
        config = dict(config)
        for key in ("text_backbone", "image_backbone"):
            if isinstance(config.get(key), dict):
                config[key] = keras.layers.deserialize(config[key])
        return super().from_config(config)
