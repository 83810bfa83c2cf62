"""The one preprocessing definition shared by training (`tf.data`) and serving (SavedModel).

Raw inputs `{"query", <product fields>, "image"}` (strings; `image` = encoded file bytes, empty =
none) become the fused model's numeric inputs. Text goes through the KerasHub BERT tokenizer and
`MultiSegmentPacker` with the query as the first segment and the product text as the second:
the fields of `product_text` (e.g. title, brand, color), each cut to its token budget and
joined in order. An empty field adds no token, so a product with only a title packs exactly as
a title-only model packs it. Images go through `ImageDecoder`.

The computation always runs as a TF graph (wrapped in `tf.function` when called eagerly):
KerasHub tokenizers take a pure-Python path outside graphs, and serving must run exactly the
code that training ran.

Example:
>>> from esr_tf.models.backbones.text_backbone import load_text_backbone
>>> _, tokenizer = load_text_backbone({"num_layers": 1, "num_heads": 2, "hidden_dim": 16,
...     "intermediate_dim": 32, "max_sequence_length": 32}, weights="random")
>>> pre = RelevancePreprocessor(tokenizer, sequence_length=16, image_size=32,
...                             product_text={"title": 8, "brand": 2})
>>> pre.raw_inputs
('query', 'title', 'brand', 'image')
>>> x = pre({"query": ["red shoes"], "title": ["Red running shoe"], "brand": ["Acme"], "image": [b""]})
>>> sorted(x), tuple(x["token_ids"].shape)
(['has_image', 'images', 'padding_mask', 'segment_ids', 'token_ids'], (1, 16))
"""

from __future__ import annotations

import keras
import keras_hub
import tensorflow as tf
from keras_hub.layers import MultiSegmentPacker

from esr_tf.constants import PRODUCT_TEXT_FIELDS
from esr_tf.preprocessing.image_decoder import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, ImageDecoder
from esr_tf.preprocessing.pipeline import require_columns, require_equal_rows


def check_product_text(value, where: str = "product_text") -> dict[str, int]:
    """`{field: token budget}` in packing order; `ValueError` naming a bad field or budget."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value):
        items = [tuple(v) for v in value]
    else:
        raise ValueError(f"{where} must map product fields to token budgets, e.g. {{title: 16, brand: 4}}; "
                         f"got {value!r}")
    if not items:
        raise ValueError(f"{where} is empty: give at least one product field (e.g. title)")
    out: dict[str, int] = {}
    for name, budget in items:
        if name not in PRODUCT_TEXT_FIELDS:
            raise ValueError(f"{where}: unknown product field {name!r} (one of {', '.join(PRODUCT_TEXT_FIELDS)})")
        if name in out:
            raise ValueError(f"{where}: field {name!r} is given twice")
        if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= 4096:
            raise ValueError(f"{where}.{name}: the token budget must be an integer in [1, 4096], got {budget!r}")
        out[str(name)] = int(budget)
    return out


@keras.saving.register_keras_serializable(package="esr_tf")
class RelevancePreprocessor(keras_hub.models.Preprocessor):
    """Maps raw query / product text / image bytes to token ids, masks and a decoded image.

    Args:
        tokenizer: a `keras_hub.models.BertTokenizer`.
        sequence_length: packed length of `[CLS] query [SEP] product text [SEP]`.
        product_text: `{field: token budget}` (fields of `constants.PRODUCT_TEXT_FIELDS`) read
            in this order into the product segment; default the title alone, uncut (what
            models saved before product fields read).
        truncate: `"waterfall"` (default) trims the product segment from its end first (its
            last field first); `"round_robin"` needs the `RoundRobinTrim` op that TF Serving up
            to 2.19 lacks.
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
        product_text: dict[str, int] | None = None,
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
        self.product_text = check_product_text(product_text or {"title": self.sequence_length})
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
        self._graph_tokenize = tf.function(self._tokenize, reduce_retracing=True)

    @property
    def product_fields(self) -> tuple[str, ...]:
        """The product fields read, in packing order."""
        return tuple(self.product_text)

    @property
    def raw_inputs(self) -> tuple[str, ...]:
        """Keys of a raw input dict (and the serving signatures' text / image inputs)."""
        return ("query", *self.product_fields, "image")

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

    def product_tokens(self, product: dict[str, tf.Tensor] | None, like: tf.Tensor) -> tf.RaggedTensor:
        """The product segment: each field's WordPiece ids cut to its budget, joined in order.

        `product` maps every field of `product_fields` to a `[n]` string tensor; None = no
        product text (e.g. the retrieval tower's query side), `like` gives the row count.
        """
        if product is None:
            return self.tokenizer(tf.fill(tf.shape(like), ""))
        texts = {name: tf.convert_to_tensor(product[name], tf.string) for name in self.product_text}
        axis = 0 if like.shape.rank == 0 else 1  # one example (a `tf.data` map per row) or a batch
        parts = [self.tokenizer(texts[name])[:budget] if axis == 0 else self.tokenizer(texts[name])[:, :budget]
                 for name, budget in self.product_text.items()]
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=axis)

    def tokenize(self, query: tf.Tensor, product: dict[str, tf.Tensor] | None) -> dict[str, tf.Tensor]:
        """Packs query and product text into `token_ids`, `segment_ids`, `padding_mask` (runs
        as a graph, traced once, when called eagerly)."""
        if not self.built:
            self.build()
        if tf.executing_eagerly():
            return self._graph_tokenize(query, product)
        return self._tokenize(query, product)

    def _tokenize(self, query, product) -> dict[str, tf.Tensor]:
        query = tf.convert_to_tensor(query, tf.string)
        token_ids, segment_ids = self.packer((self.tokenizer(query), self.product_tokens(product, query)))
        token_ids = tf.cast(token_ids, tf.int32)
        return {
            "token_ids": token_ids,
            "segment_ids": tf.cast(segment_ids, tf.int32),
            "padding_mask": tf.cast(token_ids != self.tokenizer.pad_token_id, tf.int32),
        }

    def check_raw(self, x) -> None:
        """`KeyError` naming the raw inputs `x` lacks (every product field read must be there);
        `ValueError` naming the inputs whose row counts differ."""
        require_columns(x, self.raw_inputs, "RelevancePreprocessor (raw inputs)")
        require_equal_rows(x, self.raw_inputs, "RelevancePreprocessor (raw inputs)")

    def preprocess_text(self, x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """First stage (graph mode): tokenizes `query` + product text, passes `image` bytes through.

        Split from `preprocess_images` so that `tf.data` can cache the small, deterministic
        token ids and decode only images in later epochs; `_preprocess` runs both.
        """
        self.check_raw(x)
        features = self.tokenize(x["query"], {k: x[k] for k in self.product_fields})
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
                f"RelevancePreprocessor takes a dict with keys {self.raw_inputs} "
                f"(got {type(x).__name__}); labels go in `y`, not in a tuple with the inputs."
            )
        if "token_ids" in x and not any(k in x for k in self.raw_inputs):
            # Already preprocessed (e.g. by `make_dataset`): KerasHub tasks run their preprocessor
            # inside fit / predict, so features must pass through unchanged.
            return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        run = self._graph_call if tf.executing_eagerly() else self._preprocess
        self.check_raw(x)
        features = run({k: x[k] for k in self.raw_inputs})
        return keras.utils.pack_x_y_sample_weight(features, y, sample_weight)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "truncate": self.truncate,
                "product_text": dict(self.product_text),
                "image_size": self.image_size,
                "image_value_range": list(self.image_value_range),
                "max_image_pixels": self.max_image_pixels,
                "max_image_side": self.max_image_side,
            }
        )
        return config
