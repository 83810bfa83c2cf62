"""SavedModel export for TF Serving: raw-input signatures, warm-up requests, atomic versions.

Layout: `<base>/<model_name>/<version>/` with `saved_model.pb`, `variables/`, `assets/` and
`assets.extra/` (`tf_serving_warmup_requests`, plus `esr_tf_reference.npz`: sample raw inputs and
the Keras model's outputs on them, which `esr-tf verify` compares against). The version is built
in a hidden sibling folder and renamed into place, so a polling server never sees half of it.

Signatures (all take raw strings / bytes; tokenization and decoding run in the graph). `TEXT`
stands for `query` plus the product fields the model reads (`model.product_text`, in its order:
`title, brand, color` by default), each a `tf.string [n]` input; empty strings are allowed:
- `serving_default(TEXT, image)` -> `probabilities`, `label`, `score`;
- `embed_images(image)` -> `image_tokens`, `has_image` (compute once per product);
- `score_with_image_features(TEXT, image_tokens, has_image)` -> as `serving_default`;
- `explain(TEXT, image)` -> `attention` [n, L, h, w], `tokens` [n, L] (only for fusion modes
  with cross-attention: `cross_attention`, `image_only`).

Example:
>>> path = export_saved_model(model, "serving_models", model_name="esr", version=1)  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.export.archive import ServingArchive
from esr_tf.export.versions import (  # noqa: F401  (next_version: re-exported)
    check_model_name,
    check_version,
    export_lock,
    next_version,
    recover_versions,
    swap_in,
)
from esr_tf.models.attention_maps import has_attention, token_strings
from esr_tf.preprocessing.pipeline import ANY_RANK_STRINGS, one_value_per_row
from esr_tf.serving.requests import WARMUP_FILE_NAME, warmup_records, write_warmup_file

REFERENCE_FILE = "esr_tf_reference.npz"
# Rows one request may hold. Work and memory grow with the rows (a decoded photo alone is
# 300 KB at 160 px), so a bigger request is refused, not left to exhaust the server; TF Serving's
# batching (export/batching_parameters.txt) merges requests into batches of at most 64.
MAX_REQUEST_ROWS = 1024
# TF-Text ops the export may contain: all bundled with TF Serving 2.13+ (TF-Text 2.12.1).
# `RoundRobinTrim` is not (TF Serving <= 2.19), hence waterfall truncation in the preprocessor.
EXPECTED_TF_TEXT_OPS = frozenset(
    {"CaseFoldUTF8", "FastWordpieceTokenizeWithOffsets", "RegexSplitWithOffsets", "NormalizeUTF8"}
)


def _outputs(model, probabilities: tf.Tensor, score: tf.Tensor) -> dict[str, tf.Tensor]:
    names = tf.constant(list(model.label_set.names))
    label = tf.gather(names, tf.argmax(probabilities, axis=-1, output_type=tf.int32))
    return {
        "probabilities": tf.cast(probabilities, tf.float32),
        "label": label,
        "score": tf.cast(score, tf.float32),
    }


def _check_request(names: Sequence[str], *inputs: tf.Tensor) -> list[tf.Tensor]:
    """`inputs`, usable only once the request passed the `MAX_REQUEST_ROWS` check and every
    input has the first's row count (InvalidArgumentError naming them otherwise), so that no
    decoding starts before it."""
    inputs = [x if x.shape.rank is not None else one_value_per_row(x, name) for name, x in zip(names, inputs,
                                                                                                strict=True)]
    rows = [tf.shape(x)[0] for x in inputs]
    too_many = f"request refused: more than {MAX_REQUEST_ROWS} rows (MAX_REQUEST_ROWS); split it"
    checks = [tf.debugging.assert_less_equal(rows[0], MAX_REQUEST_ROWS, message=too_many)]
    for name, count in zip(names[1:], rows[1:], strict=True):
        checks.append(tf.debugging.Assert(tf.equal(count, rows[0]), [
            f"every input needs one value per row: {names[0]} has", rows[0], f"rows, {name} has", count]))
    with tf.control_dependencies(checks):
        return [tf.identity(x) for x in inputs]


def _check_image_features(image_tokens: tf.Tensor, has_image: tf.Tensor) -> tf.Tensor:
    """`image_tokens` as given, after refusing non-finite tokens and `has_image` not in {0, 1}."""
    binary = tf.reduce_all(tf.logical_or(tf.equal(has_image, 0.0), tf.equal(has_image, 1.0)))
    tf.debugging.Assert(binary, ["score_with_image_features: has_image must be 0 or 1 (from embed_images)"])
    return tf.debugging.assert_all_finite(
        image_tokens, "score_with_image_features: image_tokens must be finite (from embed_images)"
    )


_TEXT_SPEC = tf.TensorSpec(**ANY_RANK_STRINGS)


def _text_specs(pre) -> list[tf.TensorSpec]:
    """Named string specs of `query` and the product fields (signature input names): 1-D, checked
    when a request runs (`one_value_per_row`)."""
    return [tf.TensorSpec(**ANY_RANK_STRINGS, name=k) for k in ("query", *pre.product_fields)]


def build_signatures(model) -> dict:
    """The raw-input signatures of `model` (a `RelevanceModel`) as `tf.function`s."""
    pre = model.preprocessor
    if pre is None:
        raise ValueError(
            "export needs the model's RelevancePreprocessor (model.preprocessor is None)"
        )
    if not pre.built:  # e.g. right after `keras.saving.load_model`
        pre.build()
    token_shape = [None, *model.fusion_head.input["image_tokens"].shape[1:]]
    image_tokens = _image_tokens_fn(model, token_shape)
    score = _score_fn(model)
    signatures = {
        "serving_default": _serving_default(pre, image_tokens, score),
        "embed_images": _embed_images(image_tokens),
        "score_with_image_features": _score_with_image_features(pre, score, token_shape),
    }
    if has_attention(model):  # text_only / concat / gated have no attention map to explain
        signatures["explain"] = _explain(model, image_tokens)
    return signatures


def _image_tokens_fn(model, token_shape: list):
    """Raw image bytes -> (image tokens, has_image); the backbone is skipped for a request
    without any photo."""
    pre = model.preprocessor

    def image_tokens(image):
        images, has_image = pre.image_decoder(image)

        def encode():
            return tf.cast(model.encode_images(images, has_image, training=False), tf.float32)

        def no_photo():  # the whole request has no photo (or no row): skip the backbone
            return tf.zeros([tf.shape(image)[0], *token_shape[1:]])

        if not model.reads_photos:
            return no_photo(), has_image
        return tf.cond(tf.reduce_any(has_image > 0), encode, no_photo), has_image

    return image_tokens


def _score_fn(model):
    """Raw query and product text plus image tokens -> the signature outputs (`_outputs`)."""
    pre = model.preprocessor

    def score(query, product, tokens, has_image):
        packed = pre.tokenize(query, product)
        out = model.score(model.encode_text(packed, training=False), packed, tokens, has_image, training=False)
        return _outputs(model, out["probabilities"], out["score"])

    return score


def _serving_default(pre, image_tokens, score) -> tf.types.experimental.PolymorphicFunction:
    """`serving_default(query, <product fields>, image)`: the whole model on raw inputs."""
    fields = pre.product_fields

    @tf.function(input_signature=[*_text_specs(pre), tf.TensorSpec(**ANY_RANK_STRINGS, name="image")])
    def serving_default(query, *rest):
        query, *rest = _check_request(("query", *fields, "image"), query, *rest)
        tokens, has_image = image_tokens(rest[-1])
        return score(query, dict(zip(fields, rest[:-1], strict=True)), tokens, has_image)

    return serving_default


def _embed_images(image_tokens) -> tf.types.experimental.PolymorphicFunction:
    """`embed_images(image)`: image tokens to cache per product."""
    @tf.function(input_signature=[_TEXT_SPEC])
    def embed_images(image):
        (image,) = _check_request(("image",), image)
        tokens, has_image = image_tokens(image)
        return {"image_tokens": tf.cast(tokens, tf.float32), "has_image": has_image}

    return embed_images


def _score_with_image_features(pre, score, token_shape: list) -> tf.types.experimental.PolymorphicFunction:
    """`score_with_image_features(query, <product fields>, image_tokens, has_image)`: scoring
    with cached tokens."""
    fields = pre.product_fields
    spec = [*_text_specs(pre), tf.TensorSpec(token_shape, tf.float32, name="image_tokens"),
            tf.TensorSpec([None], tf.float32, name="has_image")]

    @tf.function(input_signature=spec)
    def score_with_image_features(query, *rest):
        query, *rest = _check_request(("query", *fields, "image_tokens", "has_image"), query, *rest)
        *text, image_tokens, has_image = rest
        product = dict(zip(fields, text, strict=True))
        return score(query, product, _check_image_features(image_tokens, has_image), has_image)

    return score_with_image_features


def _explain(model, image_tokens) -> tf.types.experimental.PolymorphicFunction:
    """`explain(query, <product fields>, image)`: `attention` [n, L, h, w] (each text token's
    head-averaged attention over the patch grid in the last fusion block) and its WordPiece
    `tokens` [n, L]."""
    pre = model.preprocessor
    fields = pre.product_fields

    @tf.function(input_signature=[*_text_specs(pre), tf.TensorSpec(**ANY_RANK_STRINGS, name="image")])
    def explain(query, *rest):
        query, *rest = _check_request(("query", *fields, "image"), query, *rest)
        tokens, has_image = image_tokens(rest[-1])
        packed = pre.tokenize(query, dict(zip(fields, rest[:-1], strict=True)))
        text = model.encode_text(packed, training=False)
        attention = model.attention_maps(text, packed, tokens, has_image)
        return {"attention": tf.cast(attention, tf.float32), "tokens": token_strings(model, packed["token_ids"])}

    return explain


def build_archive(model, signatures: dict | None = None, **children: tf.Module) -> ServingArchive:
    """The `ServingArchive` of `model`'s signatures (`build_signatures` by default) and `children`."""
    return ServingArchive(signatures or build_signatures(model), **children)


def sample_inputs(num: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Raw sample inputs (JPEG, PNG and missing photos; accents, CJK, emoji; empty fields) for
    checks, with every product text field (a model reads those of its `product_text`)."""
    rng = np.random.default_rng(seed)
    queries = [
        "red sneakers",
        "blue mug",
        "Café crème hoodie",
        "防水ジャケット 红色",
        "socks 🧦",
        "green cap",
    ]
    titles = [
        "Red running sneaker",
        "Blue ceramic mug",
        "Beige hoodie",
        "waterproof jacket",
        "Wool socks",
        "",
    ]
    images = []
    for i in range(num):
        pixels = (rng.random((48 + 8 * i, 64, 3)) * 255).astype(np.uint8)
        if i % 3 == 2:
            images.append(b"")
        elif i % 3 == 1:
            images.append(tf.io.encode_png(pixels).numpy())
        else:
            images.append(tf.io.encode_jpeg(pixels).numpy())
    extra = {"brand": ["Acme", "", "Maison Café", "山田", "", "Nordwind"],
             "color": ["red", "blue", "", "红色", "grey", ""],
             "description": ["Light and fast.", "", "Soft cotton.", "", "Warm.", ""],
             "bullets": ["Breathable\nVegan", "", "", "", "Wool blend", ""]}
    text = {"title": titles, **extra}
    return {
        "query": np.array([queries[i % 6] for i in range(num)], dtype=object),
        **{k: np.array([v[i % 6] for i in range(num)], dtype=object) for k, v in text.items()},
        "image": np.array(images, dtype=object),
    }


def signature_inputs(model, inputs: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
    """The `serving_default` / `explain` inputs of `model` from raw `inputs` columns, in
    signature order (`KeyError` naming a product field it reads that `inputs` lacks). A loaded
    export takes them as keywords; the in-memory `build_signatures` functions by position."""
    model.preprocessor.check_raw(inputs)
    return {k: tf.constant(list(inputs[k])) for k in model.preprocessor.raw_inputs}


def reference_outputs(model, signatures: dict, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the in-memory (Keras) signatures, stored next to the export for `verify`
    (with the raw inputs the model reads, as `input/<name>`)."""
    args = signature_inputs(model, inputs)
    out = signatures["serving_default"](*args.values())  # in memory: inputs by position
    emb = signatures["embed_images"](args["image"])
    ref = {f"input/{k}": np.asarray(inputs[k]) for k in args}
    ref.update({f"serving_default/{k}": v.numpy() for k, v in out.items()})
    ref.update({f"embed_images/{k}": v.numpy() for k, v in emb.items()})
    if "explain" in signatures:
        explained = signatures["explain"](*args.values())
        ref.update({f"explain/{k}": v.numpy() for k, v in explained.items()})
    return ref


def export_saved_model(
    model,
    base_dir: str | Path,
    *,
    model_name: str = "esr",
    version: int | None = None,
    overwrite: bool = False,
    warmup: dict[str, np.ndarray] | None = None,
    num_warmup_records: int = 32,
) -> Path:
    """Exports `model` to `<base_dir>/<model_name>/<version>/` atomically; returns that path.

    Args:
        model_name: one folder name (`ExportError`, a `ValueError`, for a path such as `../x`).
        version: a positive integer; default the next one after the existing versions.
        overwrite: replace an existing version (refused otherwise: servers cache versions).
        warmup: raw inputs for warm-up requests (default `sample_inputs()`), at most 1000.

    See `write_version` for how versions appear atomically and parallel exports take turns.
    """
    return write_version(
        base_dir, model_name, version, overwrite,
        lambda target: _write_export(model, target, model_name, warmup, num_warmup_records),
    )


def write_version(
    base_dir: str | Path, model_name: str, version: int | None, overwrite: bool, write: Callable[[Path], None]
) -> Path:
    """Runs `write(folder)` into a hidden staging folder, then swaps it in as
    `<base_dir>/<model_name>/<version>` (the next version when `version` is None).

    Exports into one model folder take turns (`versions.export_lock`), so parallel exports get
    distinct versions, and repair what a killed one left (`versions.recover_versions`).
    """
    model_dir = Path(base_dir) / check_model_name(model_name)
    if version is not None:
        version = check_version(version)
    model_dir.mkdir(parents=True, exist_ok=True)
    with export_lock(model_dir):
        recover_versions(model_dir)
        version = next_version(model_dir) if version is None else version
        final = model_dir / str(version)
        if final.exists() and not overwrite:
            raise FileExistsError(
                f"{final} already exists; pass overwrite=True (--overwrite) or a new --version"
            )
        # A dot-prefixed sibling: same filesystem (atomic rename) and not a number, so TF
        # Serving's version policy never picks it up.
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_dir))
        try:
            target = staging / "export"
            write(target)
            swap_in(target, final, overwrite=overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _write_export(model, target: Path, model_name: str, warmup, num_warmup_records: int) -> None:
    """The SavedModel plus `assets.extra/` (warm-up requests, reference outputs) at `target`."""
    signatures = build_signatures(model)
    # Reference answers first: their traces are reused by the save, not the reverse (faster).
    reference = reference_outputs(model, signatures, sample_inputs())
    archive = build_archive(model, signatures)
    archive.write_out(str(target), verbose=False)
    extra = target / "assets.extra"
    extra.mkdir(exist_ok=True)
    samples = warmup if warmup is not None else sample_inputs()
    records = model_warmup_records(model, samples, num_warmup_records, model_name)
    write_warmup_file(extra / WARMUP_FILE_NAME, records)
    np.savez(extra / REFERENCE_FILE, **reference)


def model_warmup_records(model, samples: dict[str, np.ndarray], num: int, model_name: str) -> list[bytes]:
    """`serving_default` warm-up records of the first `num` raw `samples` (with the product
    fields the model reads: `KeyError` naming one `samples` lacks)."""
    model.preprocessor.check_raw(samples)
    n = min(num, len(samples["query"]))
    return warmup_records(
        list(samples["query"][:n]), list(samples["title"][:n]), list(samples["image"][:n]), model_name=model_name,
        fields={k: list(samples[k][:n]) for k in model.preprocessor.product_fields if k != "title"},
    )


def list_ops(export_dir: str | Path) -> set[str]:
    """Every op type in the SavedModel's graph and function library."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(export_dir) / "saved_model.pb").read_bytes())
    ops: set[str] = set()
    for meta in proto.meta_graphs:
        ops.update(node.op for node in meta.graph_def.node)
        for function in meta.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops
