"""Serving measurements behind `run_benchmarks`: the exported SavedModel against the Keras model.

Paired measurements (serving vs numeric model, re-ranking with and without cached image
features) are interleaved call by call, so that load from other processes on a shared machine
hits both sides alike.

Example:
>>> import numpy as np
>>> request = raw_examples({"query": np.array(["red mug"]), "title": np.array(["Red mug"]),
...                         "image": np.array([""])}, 1)
>>> request["image"][0]
b''
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.bench.timing import summarize, time_calls


def raw_examples(columns, n: int, offset: int = 0, fields=("title",)) -> dict[str, np.ndarray]:
    """Raw request inputs: query, the product `fields` (a model's `product_fields`) and the
    photo file's bytes (b"" when none)."""
    rows = slice(offset, offset + n)
    images = [Path(p).read_bytes() if p else b"" for p in np.asarray(columns["image"])[rows]]
    text = {k: np.asarray(columns[k])[rows].astype(str).astype(object) for k in ("query", *fields)}
    return {**text, "image": np.array(images, dtype=object)}


def tf_inputs(raw: Mapping[str, np.ndarray], rows: slice) -> dict[str, tf.Tensor]:
    """The rows `rows` of raw request inputs as string tensors."""
    return {k: tf.constant(list(v[rows]), tf.string) for k, v in raw.items()}


def _interleaved(a, b, repeats: int) -> tuple[list[float], list[float]]:
    """Times `a(i)` and `b(i)` alternately (after one warm-up each)."""
    a(0), b(0)
    ta, tb = [], []
    for i in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - start)
    return ta, tb


def graph_preprocess(model) -> tf.function:
    """`model.preprocessor` traced once for any batch size (raw string batches -> numeric)."""
    spec = {k: tf.TensorSpec([None], tf.string) for k in model.preprocessor.raw_inputs}
    return tf.function(lambda x: model.preprocessor(x), input_signature=[spec])


def _numeric_model(model, example: dict) -> tf.function:
    """The Keras model on numeric inputs, traced once for any batch size."""
    spec = {k: tf.TensorSpec([None, *v.shape[1:]], v.dtype) for k, v in example.items()}
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


def measure_serving(
    model, loaded, raw, preprocess, *, batch_size: int, repeats_b1: int, repeats_b: int
) -> dict:
    """`serving_default` of the loaded export vs the Keras model on preprocessed tensors.

    `preprocess` is `graph_preprocess(model)`; the numeric inputs are computed before timing.
    """
    signature = loaded.signatures["serving_default"]
    n = min(len(raw["query"]), max(batch_size, repeats_b1))
    numeric_all = preprocess(tf_inputs(raw, slice(0, n)))
    numeric = _numeric_model(model, numeric_all)
    m = min(n, repeats_b1)
    singles = [tf_inputs(raw, slice(i, i + 1)) for i in range(m)]
    single_numeric = [{k: v[i : i + 1] for k, v in numeric_all.items()} for i in range(m)]
    full = tf_inputs(raw, slice(0, batch_size))
    full_numeric = {k: v[:batch_size] for k, v in numeric_all.items()}
    _fetch(signature(**full))  # the first call of a loaded function optimises its graph
    b1_sig, b1_num = _interleaved(
        lambda i: _fetch(signature(**singles[i % m])),
        lambda i: _fetch(numeric(single_numeric[i % m])),
        repeats_b1,
    )
    b_sig, b_num = _interleaved(
        lambda i: _fetch(signature(**full)), lambda i: _fetch(numeric(full_numeric)), repeats_b
    )
    return {
        "b1_serving": summarize(b1_sig),
        "b1_numeric": summarize(b1_num),
        f"b{batch_size}_serving": summarize(b_sig),
        f"b{batch_size}_numeric": summarize(b_num),
        "batch_size": batch_size,
    }


def _fetch(outputs) -> None:
    for value in outputs.values():
        value.numpy()


def product_sample(columns, n: int, fields=("title",)) -> dict[str, np.ndarray]:
    """Up to `n` distinct products (product `fields` + photo bytes) from the catalogue."""
    seen: dict[str, int] = {}
    for i, pid in enumerate(np.asarray(columns["product_id"])):
        if pid not in seen:
            seen[pid] = i
        if len(seen) == n:
            break
    rows = np.array(list(seen.values()))
    picked = {k: np.asarray(columns[k])[rows] for k in ("query", *fields, "image")}
    return raw_examples(picked, len(rows), fields=fields)


def measure_rerank(loaded, products: dict[str, np.ndarray], *, query: str, repeats: int) -> dict:
    """Scoring N products for one query: cached image tokens vs `serving_default`."""
    n = len(products["title"])
    text = {"query": tf.constant([query] * n), **{k: tf.constant(list(v)) for k, v in products.items()
                                                   if k not in ("query", "image")}}
    image_t = tf.constant(list(products["image"]))
    embed = loaded.signatures["embed_images"]
    start = time.perf_counter()
    cached = embed(image=image_t)
    embed_s = time.perf_counter() - start
    scored = loaded.signatures["score_with_image_features"]
    full = loaded.signatures["serving_default"]
    t_cached, t_full = _interleaved(
        lambda i: _fetch(scored(**text, **cached)),
        lambda i: _fetch(full(**text, image=image_t)),
        repeats,
    )
    tokens = cached["image_tokens"]
    return {
        "products": n,
        "cached": summarize(t_cached),
        "full": summarize(t_full),
        "embed_ms_per_product": 1e3 * embed_s / n,
        "token_kb_per_product": tokens.shape[1] * tokens.shape[2] * 4 / 1024,
    }


def measure_cpp(
    export_dir: Path, loaded, requests: dict, *, repeats: int, enabled: bool = True
) -> dict:
    """Batch-1 latency through the C++ client, bracketed by the same request in Python.

    Python's `serving_default` on the same single request is timed just before and just after
    the C++ run, so that both sides see about the same machine load. Returns
    `{"skipped": reason}` without a toolchain.
    """
    import subprocess

    from esr_tf.export.cpp_client import cpp_toolchain_available, run_cpp_client

    reason = "disabled (cpp=False)" if not enabled else cpp_toolchain_available()
    if reason is not None:
        return {"skipped": reason}
    one = {k: list(v[:1]) for k, v in requests.items()}
    signature = loaded.signatures["serving_default"]
    inputs = tf_inputs(requests, slice(0, 1))

    def python_ms() -> list[float]:
        return time_calls(lambda: _fetch(signature(**inputs)), repeats=repeats, warmup=1)

    before = python_ms()
    try:
        result = run_cpp_client(export_dir, one, repeats=repeats)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        # A failed build or run is a result to report, not a reason to lose the other figures.
        return {"skipped": f"esr_predict failed: {str(error)[:500]}"}
    after = python_ms()
    keys = ("ms_per_run", "ms_per_example", "load_ms", "first_run_ms")
    return {
        "b1": {k: result[k] for k in keys},
        "python_b1_mean_ms": 1e3 * float(np.mean(before + after)),
        "repeats": repeats,
    }
