"""tf.distribute strategies for `esr-tf train --strategy default|mirrored|multiworker`.

`multiworker` reads the cluster from `TF_CONFIG` and must be created before any other TF op
runs in the process (it configures collective ops on the eager context), so `train()` calls
`make_strategy` first. It also applies two small patches to Keras 3's TensorFlow trainer,
which does not run under `MultiWorkerMirroredStrategy` as released (both checked by
`tests/training/test_distribute.py`, which fails once upstream fixes them):

* keras-team/keras#20329: `fit` fails with `Attempt to convert a value ({'token_ids':
  PerReplica...}) with an unsupported type (<class 'dict'>) to a Tensor` (any nested batch,
  even an `(x, y)` tuple). `TensorFlowTrainer._maybe_symbolic_build` averages the first batch
  across replicas with `strategy.reduce("MEAN", batch, axis=None)` only to learn its shapes,
  and `CollectiveAllReduceExtended._reduce_to` (unlike `MirroredExtended`) does not map over
  nested structures. Patch: take the first local replica's batch (same shapes and dtypes,
  no cross-worker traffic, and no averaging of bool masks).
* keras-team/keras#20585 (tensorflow/tensorflow#72388): `Invalid reduction dimension 0 for
  input with 0 dimensions`. `reduce_per_replica` reduces every per-replica output with
  `strategy.reduce("MEAN", v, axis=0)` in multi-worker mode, but loss and metric results are
  scalars. Patch: use `axis=None` (the cross-replica mean, as the single-worker path does)
  for scalars.

The patches are applied by `make_strategy("multiworker")` for the rest of the process (or
inside `keras_multiworker_patches()`), never at import time.

Example:
>>> make_strategy("default").num_replicas_in_sync
1
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import tensorflow as tf
from keras import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

from esr_tf.constants import STRATEGIES

log = logging.getLogger("esr_tf.training")

_MULTIWORKER: tf.distribute.MultiWorkerMirroredStrategy | None = None
_ORIGINALS: dict[str, object] = {}


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """Returns the strategy for `name`: `default`, `mirrored` or `multiworker`.

    `mirrored` replicates over all GPUs, or over all logical CPU devices when there is no GPU
    (one CPU device unless `tf.config.set_logical_device_configuration` split it).
    `multiworker` reads `TF_CONFIG`, is created once per process and patches Keras (see the
    module docstring); call it before any other TF op.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multiworker":
        return _multiworker_strategy()
    raise ValueError(f"strategy {name!r}: expected one of {STRATEGIES}")


def _multiworker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    global _MULTIWORKER
    if _MULTIWORKER is None:
        raw = os.environ.get("TF_CONFIG")
        if not raw:
            log.warning("TF_CONFIG is not set: multiworker runs as a single local worker")
        else:
            try:
                cluster = json.loads(raw)["cluster"]
                if not (cluster.get("worker") or cluster.get("chief")):
                    raise KeyError("worker")
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ValueError(
                    'TF_CONFIG: expected JSON like {"cluster": {"worker": ["host:port", ...]}, '
                    f'"task": {{"type": "worker", "index": 0}}}}, got {raw!r}'
                ) from None
        try:
            _MULTIWORKER = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as error:  # tensorflow/python/eager/context.py
            if "program startup" not in str(error):
                raise
            raise RuntimeError(
                "multiworker: TensorFlow already ran an op in this process, so collective ops "
                "can no longer be configured; create the strategy first (esr_tf.training.train "
                "does when it is the first TF work of the process)"
            ) from error
    patch_keras_for_multiworker()
    return _MULTIWORKER


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` spans several worker processes (they must see data in one order)."""
    multi = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    return multi and strategy.extended._in_multi_worker_mode()


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """How many worker processes `strategy` spans (each runs its own input pipeline)."""
    if not is_multi_worker(strategy):
        return 1
    return strategy.cluster_resolver.cluster_spec().num_tasks("worker")


def worker_out_dir(out_dir: str | Path, strategy: tf.distribute.Strategy) -> Path:
    """`out_dir` for the chief; `<out_dir>/worker_<index>` for the other workers.

    Every worker must run the same saves (reading metric variables is a collective op), so
    non-chief workers write their identical checkpoints and logs to a folder of their own,
    kept so that `BackupAndRestore` resumes them too.
    """
    out_dir = Path(out_dir)
    if strategy.extended.should_checkpoint:
        return out_dir
    return out_dir / f"worker_{strategy.cluster_resolver.task_id}"


@contextlib.contextmanager
def local_predict(*models) -> Iterator[None]:
    """Inside the block, `predict` on `models` runs on this worker alone, on all its data.

    `predict` under MultiWorkerMirroredStrategy shards the data and gathers every batch across
    workers; for the frozen-backbone feature cache, which every worker needs in full, that was
    2-3x slower on CPU than computing everything locally. Outside any `strategy.scope()`, a
    model whose strategy is unset uses the default strategy, which reads mirrored weights.
    """
    # Private attribute: Keras has no local-predict option (esr_tf.upstream:
    # "keras-predict-local-under-multiworker").
    saved = [m._distribute_strategy for m in models]
    for m in models:
        m._distribute_strategy = None
    try:
        yield
    finally:
        for m, strategy in zip(models, saved, strict=True):
            m._distribute_strategy = strategy


def _first_replica_symbolic_build(self, iterator=None, data_batch=None):
    """`TensorFlowTrainer._maybe_symbolic_build` that takes the first local replica's batch.

    Upstream averages the per-replica batches with `strategy.reduce("MEAN", ...)`, which
    fails on dicts under MultiWorkerMirroredStrategy (keras-team/keras#20329); only the
    shapes and dtypes are used, and every replica's batch has the same ones.
    """
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            data_batch = tree.map_structure(
                lambda x: self.distribute_strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues)
                else x,
                next(it),
            )
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _scalar_safe_reduce_per_replica(values, strategy, reduction):
    """`reduce_per_replica` that reduces multi-worker scalars with `axis=None`.

    Upstream calls `strategy.reduce("MEAN", v, axis=0)` on every output under
    MultiWorkerMirroredStrategy, which fails on scalar losses and metrics
    (keras-team/keras#20585, tensorflow/tensorflow#72388).
    """
    original = _ORIGINALS["keras-team/keras#20585"]
    multi_worker = tf_trainer._collective_all_reduce_multi_worker(strategy)
    if reduction in ("auto", "mean") and multi_worker:

        def reduce(v):
            local = strategy.experimental_local_results(v)[0]
            if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                return strategy.reduce("MEAN", v, axis=None)
            return original(v, strategy, reduction)

        return tree.map_structure(reduce, values)
    return original(values, strategy, reduction)


# Upstream issue -> (object, attribute, replacement). Each entry is guarded by a test that fails
# once the unpatched Keras stops failing with the issue's error.
_PATCHES = {
    "keras-team/keras#20329": (
        tf_trainer.TensorFlowTrainer,
        "_maybe_symbolic_build",
        _first_replica_symbolic_build,
    ),
    "keras-team/keras#20585": (tf_trainer, "reduce_per_replica", _scalar_safe_reduce_per_replica),
}
UPSTREAM_ISSUES = tuple(_PATCHES)


def patch_keras_for_multiworker(issues: tuple[str, ...] = UPSTREAM_ISSUES) -> None:
    """Applies the Keras workarounds for `issues` (see the module docstring); idempotent."""
    for issue in issues:
        if issue not in _ORIGINALS:
            owner, name, replacement = _PATCHES[issue]
            _ORIGINALS[issue] = getattr(owner, name)
            setattr(owner, name, replacement)


def unpatch_keras(issues: tuple[str, ...] | None = None) -> None:
    """Restores the Keras functions `patch_keras_for_multiworker` replaced (all, or `issues`)."""
    for issue in list(_ORIGINALS) if issues is None else issues:
        owner, name, _ = _PATCHES[issue]
        setattr(owner, name, _ORIGINALS.pop(issue))


@contextlib.contextmanager
def keras_multiworker_patches(issues: tuple[str, ...] = UPSTREAM_ISSUES) -> Iterator[None]:
    """Keras patched for MultiWorkerMirroredStrategy inside the block only.

    Example:
    >>> with keras_multiworker_patches():
    ...     pass  # model.fit(...) under a MultiWorkerMirroredStrategy
    """
    already = set(_ORIGINALS)
    patch_keras_for_multiworker(issues)
    try:
        yield
    finally:
        unpatch_keras(tuple(set(_ORIGINALS) - already))
