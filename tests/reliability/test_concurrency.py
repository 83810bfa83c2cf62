"""Concurrent requests on one loaded SavedModel (as TF Serving's request threads do).

Eight threads call `serving_default` at once, each with its own batch (JPEG, PNG and missing
photos of different sizes; accents, CJK, emoji), several times; every answer must equal the
sequential answer for that batch: no shared state leaks between concurrent calls.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf

THREADS = 8
CALLS_PER_THREAD = 3
# The tiny export reads the default product fields (model.product_text).
SIGNATURE_INPUTS = ("query", "title", "brand", "color", "image")


@pytest.fixture(scope="module")
def serving_default(tiny_export):
    import tensorflow_text  # noqa: F401  (registers the TF-Text ops of the graph)

    return tf.saved_model.load(str(tiny_export)).signatures["serving_default"]


def _batches() -> list[dict[str, tf.Tensor]]:
    from esr_tf.export.saved_model import sample_inputs

    batches = []
    for k in range(THREADS):
        x = sample_inputs(num=3 + k, seed=k)  # a different batch size and content per thread
        batches.append({name: tf.constant(list(x[name]), tf.string) for name in SIGNATURE_INPUTS})
    return batches


def _numpy(out: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in out.items()}


def test_eight_threads_get_the_sequential_outputs(serving_default):
    batches = _batches()
    expected = [_numpy(serving_default(**b)) for b in batches]
    start = threading.Barrier(THREADS)

    def worker(k: int) -> list[dict[str, np.ndarray]]:
        start.wait(timeout=60)  # all threads enter the graph together
        return [_numpy(serving_default(**batches[k])) for _ in range(CALLS_PER_THREAD)]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))

    for k, runs in enumerate(results):
        for out in runs:
            assert out["label"].tolist() == expected[k]["label"].tolist(), f"thread {k}"
            np.testing.assert_allclose(out["probabilities"], expected[k]["probabilities"],
                                       rtol=0, atol=1e-6, err_msg=f"thread {k}")
            np.testing.assert_allclose(out["score"], expected[k]["score"], rtol=0, atol=1e-6)


def test_concurrent_bad_request_does_not_disturb_good_ones(serving_default):
    """One thread keeps sending undecodable bytes while the others are served normally."""
    batches = _batches()[:4]
    expected = [_numpy(serving_default(**b)) for b in batches]
    bad = {"query": tf.constant(["x"]), "title": tf.constant(["y"]), "brand": tf.constant([""]),
           "color": tf.constant([""]), "image": tf.constant([b"not an image"])}
    start = threading.Barrier(len(batches) + 1)

    def good(k: int) -> list[dict[str, np.ndarray]]:
        start.wait(timeout=60)
        return [_numpy(serving_default(**batches[k])) for _ in range(CALLS_PER_THREAD)]

    def hostile() -> int:
        start.wait(timeout=60)
        errors = 0
        for _ in range(CALLS_PER_THREAD * 2):
            try:
                serving_default(**bad)
            except tf.errors.InvalidArgumentError:
                errors += 1
        return errors

    with ThreadPoolExecutor(len(batches) + 1) as pool:
        failing = pool.submit(hostile)
        results = list(pool.map(good, range(len(batches))))
        assert failing.result() == CALLS_PER_THREAD * 2
    for k, runs in enumerate(results):
        for out in runs:
            np.testing.assert_allclose(out["probabilities"], expected[k]["probabilities"],
                                       rtol=0, atol=1e-6)
