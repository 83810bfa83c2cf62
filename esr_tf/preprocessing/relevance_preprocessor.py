"""The one preprocessing definition shared by training (`tf.data`) and serving (SavedModel).

Raw inputs `{"query", "title", "image"}` (strings; `image` = encoded file bytes, empty = none)
become the fused model's numeric inputs. Text goes through the KerasHub BERT tokenizer and
`MultiSegmentPacker` with the query and the product title as two segments; images through
`ImageDecoder`.

The computation always runs as a TF graph (wrapped in `tf.function` when called eagerly):
KerasHub tokenizers take a pure-Python path outside graphs, and serving must run exactly the
code that training ran.

Example:
>>> from esr_tf.models.backbones.text_backbone import load_text_backbone
>>> _, tokenizer = load_text_backbone({"num_layers": 1, "num_heads": 2, "hidden_dim": 16,
...     "intermediate_dim": 32, "max_sequence_length": 32}, weights="random")
>>> pre = RelevancePreprocessor(tokenizer, sequence_length=16, image_size=32)
>>> x = pre({"query": ["red shoes"], "title": ["Red running shoe"], "image": [b""]})
>>> sorted(x), x["token_ids"].shape
(['has_image', 'images', 'padding_mask', 'segment_ids', 'token_ids'], (1, 16))
"""

from __future__ import annotations

import keras
import keras_hub
import tensorflow as tf
from keras_hub.layers import MultiSegmentPacker

from esr_tf.preprocessing.image_decoder import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, ImageDecoder

RAW_INPUTS = ("query", "title", "image")


@keras.saving.register_keras_serializable(package="esr_tf")
class RelevancePreprocessor(keras_hub.models.Preprocessor):
    """Maps raw query / title / image bytes to token ids, masks and a decoded image.

    Args:
        tokenizer: a `keras_hub.models.BertTokenizer`.
        sequence_length: packed length of `[CLS] query [SEP] title [SEP]`.
        truncate: `"waterfall"` (default) trims the title first; `"round_robin"` needs the
            `RoundRobinTrim` op that TF Serving up to 2.19 lacks.
        image_size: side of the decoded square image.
        image_value_range: `(low, high)` pixel range the image backbone wants.
        max_image_pixels, max_image_side: header limits above which an image is refused.

    Outputs `token_ids`, `segment_ids`, `padding_mask` (int32: boolean masks cannot be averaged
    across replicas by `tf.distribute`), `images` (float32) and `has_image` (float32).
    """

    def __init__(
        self,
        tokenizer: keras_hub.models.BertTokenizer,
        sequence_length: int = 48,
        truncate: str = "waterfall",
        image_size: int = 160,
        image_value_range: tuple[float, float] = (-1.0, 1.0),
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        max_image_side: int = DEFAULT_MAX_SIDE,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.truncate = truncate
        self._image_size = int(image_size)
        self.image_value_range = (float(image_value_range[0]), float(image_value_range[1]))
        self.max_image_pixels = int(max_image_pixels)
        self.max_image_side = int(max_image_side)
        self.image_decoder = ImageDecoder(
            image_size=self.image_size,
            value_range=self.image_value_range,
            max_pixels=self.max_image_pixels,
            max_side=self.max_image_side,
            name="image_decoder",
        )
        self.packer: MultiSegmentPacker | None = None
        self._graph_call = tf.function(self._preprocess, reduce_retracing=True)

    @property
    def image_size(self) -> int:
        # KerasHub's base property reads an `image_converter`; this preprocessor decodes itself.
        return self._image_size

    def build(self, input_shape=None) -> None:
        # Built late so tokenizer assets are loaded when restoring a saved model (KerasHub pattern).
        self.packer = MultiSegmentPacker(
            start_value=self.tokenizer.start_token_id,
            end_value=self.tokenizer.end_token_id,
            pad_value=self.tokenizer.pad_token_id,
            truncate=self.truncate,
            sequence_length=self.sequence_length,
        )
        self.built = True

    def tokenize(self, query: tf.Tensor, title: tf.Tensor) -> dict[str, tf.Tensor]:
        """Packs query and title into `token_ids`, `segment_ids`, `padding_mask` (graph mode)."""
        if not self.built:
            self.build()
        token_ids, segment_ids = self.packer((self.tokenizer(query), self.tokenizer(title)))
        token_ids = tf.cast(token_ids, tf.int32)
        return {
            "token_ids": token_ids,
            "segment_ids": tf.cast(segment_ids, tf.int32),
            "padding_mask": tf.cast(token_ids != self.tokenizer.pad_token_id, tf.int32),
        }

    def preprocess_text(self, x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """First stage (graph mode): tokenizes `query` + `title`, passes `image` bytes through.

        Split from `preprocess_images` so that `tf.data` can cache the small, deterministic
        token ids and decode only images in later epochs; `_preprocess` runs both.
        """
        missing = [k for k in RAW_INPUTS if k not in x]
        if missing:
            raise KeyError(f"RelevancePreprocessor: raw inputs need keys {RAW_INPUTS}; missing {missing}")
        query = tf.convert_to_tensor(x["query"], tf.string)
        title = tf.convert_to_tensor(x["title"], tf.string)
        features = self.tokenize(query, title)
        features["image"] = tf.convert_to_tensor(x["image"], tf.string)
        return features

    def preprocess_images(self, x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Second stage (graph mode): replaces `image` bytes by `images` and `has_image`."""
        features = {k: v for k, v in x.items() if k != "image"}
        features["images"], features["has_image"] = self.image_decoder(x["image"])
        return features

    def _preprocess(self, x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.preprocess_images(self.preprocess_text(x))

    def call(self, x, y=None, sample_weight=None):
        if not isinstance(x, dict):
            raise TypeError(
                "RelevancePreprocessor takes a dict with keys 'query', 'title', 'image' "
                f"(got {type(x).__name__}); labels go in `y`, not in a tuple with the inputs."
            )
        if "token_ids" in x and not any(k in x for k in RAW_INPUTS):
            # Already preprocessed (e.g. by `make_dataset`): KerasHub tasks run their preprocessor
            # inside fit / predict, so features must pass through unchanged.
            return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        run = self._graph_call if tf.executing_eagerly() else self._preprocess
        features = run({k: x[k] for k in RAW_INPUTS})
        return keras.utils.pack_x_y_sample_weight(features, y, sample_weight)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "truncate": self.truncate,
                "image_size": self.image_size,
                "image_value_range": list(self.image_value_range),
                "max_image_pixels": self.max_image_pixels,
                "max_image_side": self.max_image_side,
            }
        )
        return config
