"""`--strategy default|mirrored|multiworker`, and the Keras workarounds in `distribute.py`.

Multi-worker tests start two worker processes on 127.0.0.1 (free ports, `TF_CONFIG`), since a
MultiWorkerMirroredStrategy must be the first TF work of its process. Each worker saves its
final weights; the test compares them. The upstream guard runs the unpatched Keras path and
fails once upstream fixes an issue, so the workaround gets removed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from esr_tf.training import distribute

_WORKER_TIMEOUT_S = 600  # a hang (e.g. a collective one worker never joins) must not block CI
# Once a worker has died, how long the others get to finish before they are killed: a worker
# left waiting on a collective of the dead one would otherwise hang until the timeout.
_GRACE_AFTER_DEATH_S = 15

# Runs train() for each entry of spec["runs"] and prints one RESULT line per run.
_TRAIN_SCRIPT = r"""
import json, os, sys, traceback
spec = json.loads(sys.argv[1])
if spec.get("logical_cpus"):
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * spec["logical_cpus"])
import numpy as np
from esr_tf.models.builder import TINY_MODEL
from esr_tf.training.config import parse_config
from esr_tf.training.trainer import train

for run in spec["runs"]:
    if run.get("shard_examples"):  # a feature store of several shards: one per worker at least
        from esr_tf.training import feature_store
        feature_store.SHARD_EXAMPLES = run["shard_examples"]
    base = {"epochs": 1, "batch_size": 8, "demo_size": "tiny", "out_dir": run["out_dir"],
            "model": TINY_MODEL}
    try:
        result = train(parse_config(base, run["overrides"]), verbose=0)
    except Exception:
        print("RESULT " + json.dumps({"name": run["name"], "error": traceback.format_exc()}), flush=True)
        os._exit(3)  # at once: the other workers must not wait on this one's collectives
    weights, spread, replicas = {}, 0.0, 1
    for i, v in enumerate(result.model.weights):
        weights[f"{i:03d} {v.path}"] = np.asarray(v)
        copies = getattr(v.value, "values", None) or ()  # MirroredVariable: one per replica
        replicas = max(replicas, len(copies))
        for copy in copies[1:]:
            spread = max(spread, float(np.max(np.abs(np.asarray(copy) - np.asarray(copies[0])))))
    np.savez(run["weights"], **weights)
    print("RESULT " + json.dumps({"name": run["name"], "loss": result.history["loss"],
                                  "replicas": replicas, "replica_spread": spread,
                                  "out_dir": str(result.out_dir)}))
sys.stdout.flush()
if spec.get("barrier"):  # let both workers finish before the coordination service goes away
    import tensorflow as tf
    from esr_tf.training.distribute import make_strategy
    strategy = make_strategy("multiworker")
    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
os._exit(0)  # skips TF's shutdown handshake, which can hang once a worker has failed
"""

# Fits a 2-input (dict) model under MultiWorkerMirroredStrategy with some, none or all patches.
_GUARD_SCRIPT = r"""
import json, os
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()  # the first TF op of the process
import keras
import numpy as np
from esr_tf.training.distribute import UPSTREAM_ISSUES, keras_multiworker_patches

def fit():
    keras.utils.set_random_seed(0)
    x = np.random.RandomState(0).rand(32, 4).astype("float32")
    with strategy.scope():
        a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
        model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(keras.layers.Add()([a, b])))
        model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    ds = tf.data.Dataset.from_tensor_slices(({"a": x, "b": x}, x.sum(1))).batch(8).repeat()
    history = model.fit(ds, epochs=1, steps_per_epoch=4, verbose=0)
    return history.history["loss"], [w.tolist() for w in model.get_weights()]

results = {}
for case, issues in (("none", ()), ("only#20329", ("keras-team/keras#20329",)),
                     ("all", UPSTREAM_ISSUES)):
    try:
        with keras_multiworker_patches(issues):
            loss, weights = fit()
        results[case] = {"loss": loss, "weights": weights}
    except Exception as error:  # the known failures raise while tracing, on both workers
        results[case] = {"error": f"{type(error).__name__}: {error}"[:4000]}
print("RESULT " + json.dumps(results), flush=True)
os._exit(0)
"""


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run(script: str, args: list[str], folder: Path, workers: int) -> list[list[dict]]:
    """Runs `script` in `workers` processes (a TF_CONFIG cluster when > 1); their RESULT lines."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "script.py"
    path.write_text(script)
    cluster = [f"127.0.0.1:{p}" for p in _free_ports(workers)]
    procs, logs = [], []
    for index in range(workers):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if workers > 1:
            env["TF_CONFIG"] = json.dumps(
                {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
            )
        log = folder / f"worker_{index}.log"
        logs.append(log)
        with log.open("w") as out:
            cmd = [sys.executable, str(path), *args]
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=folder, env=env))
    try:
        dead = _wait(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()  # SIGKILL: MWMS catches SIGTERM for preemption handling
                proc.wait()
    if dead is not None:
        index, code = dead
        text = logs[index].read_text(errors="replace")
        raise AssertionError(f"worker {index} exited with {code}; its log ends with:\n{text[-3000:]}")
    results = []
    for log in logs:
        text = log.read_text(errors="replace")
        lines = [json.loads(x[7:]) for x in text.splitlines() if x.startswith("RESULT ")]
        assert lines, f"{log.name} printed no result; its log ends with:\n{text[-3000:]}"
        results.append(lines)
    return results


def _wait(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
    """Waits for every worker; returns `(index, exit code)` of the first that failed, if any.

    A failed worker's peers get `_GRACE_AFTER_DEATH_S` to finish, then are killed by the caller.
    """
    start, died_at, dead = time.monotonic(), None, None
    while time.monotonic() - start < _WORKER_TIMEOUT_S:
        codes = [proc.poll() for proc in procs]
        for index, code in enumerate(codes):
            if code not in (None, 0) and dead is None:
                dead, died_at = (index, code), time.monotonic()
        if all(code is not None for code in codes):
            break
        if died_at is not None and time.monotonic() - died_at > _GRACE_AFTER_DEATH_S:
            break
        time.sleep(0.5)
    return dead


def _weights(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)


def _check_no_error(result: dict) -> None:
    assert "error" not in result, f"{result['name']} failed:\n{result['error']}"


# ----------------------------------------------------------------- fast, in-process checks


def test_make_strategy_default_and_bad_name(tmp_path):
    strategy = distribute.make_strategy("default")
    assert strategy.num_replicas_in_sync == 1
    assert not distribute.is_multi_worker(strategy)
    assert distribute.worker_out_dir(tmp_path, strategy) == tmp_path
    with pytest.raises(ValueError, match="multiworker"):
        distribute.make_strategy("tpu")


def test_patches_are_scoped_and_restorable():
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = (tf_trainer.TensorFlowTrainer._maybe_symbolic_build, tf_trainer.reduce_per_replica)
    with distribute.keras_multiworker_patches():
        assert tf_trainer.reduce_per_replica is not original[1]
        assert tf_trainer.TensorFlowTrainer._maybe_symbolic_build is not original[0]
        with distribute.keras_multiworker_patches(("keras-team/keras#20585",)):
            pass  # nested: the outer patches stay
        assert tf_trainer.reduce_per_replica is not original[1]
    assert (tf_trainer.TensorFlowTrainer._maybe_symbolic_build, tf_trainer.reduce_per_replica) == (
        original
    )
    distribute.patch_keras_for_multiworker()
    distribute.patch_keras_for_multiworker()  # idempotent
    distribute.unpatch_keras()
    assert tf_trainer.reduce_per_replica is original[1]


def test_bad_tf_config_names_the_variable(monkeypatch):
    monkeypatch.setattr(distribute, "_MULTIWORKER", None)
    for raw in ("not json", '{"task": {"index": 0}}', '{"cluster": {"ps": ["h:1"]}}'):
        monkeypatch.setenv("TF_CONFIG", raw)
        with pytest.raises(ValueError, match="TF_CONFIG"):
            distribute.make_strategy("multiworker")


def test_multiworker_after_a_tf_op_says_so(monkeypatch):
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # the eager context now exists; collectives can't be configured
    monkeypatch.setattr(distribute, "_MULTIWORKER", None)
    cluster = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": 0}})
    )
    with pytest.raises(RuntimeError, match="create the strategy first"):
        distribute.make_strategy("multiworker")


# ----------------------------------------------------------------- subprocess runs (slow)


@pytest.mark.slow
def test_upstream_keras_still_needs_the_workarounds(tmp_path):
    """Fails with 'upstream fixed ...' when a patch in distribute.py is no longer needed."""
    workers = _run(_GUARD_SCRIPT, [], tmp_path, workers=2)
    for (results,) in workers:
        none, only_first, patched = results["none"], results["only#20329"], results["all"]
        if "error" not in none or "Attempt to convert a value ({" not in none["error"]:
            pytest.fail(
                "upstream fixed keras-team/keras#20329 (dict inputs under "
                "MultiWorkerMirroredStrategy): remove that workaround from distribute.py. "
                f"Unpatched run gave: {none}"
            )
        if "Invalid reduction dimension 0" not in only_first.get("error", ""):
            pytest.fail(
                "upstream fixed keras-team/keras#20585 (scalar reduce_per_replica under "
                "MultiWorkerMirroredStrategy): remove that workaround from distribute.py. "
                f"Run with only #20329 patched gave: {only_first}"
            )
        assert "error" not in patched, patched["error"]
    (first,), (second,) = workers
    assert first["all"] == second["all"]  # same loss and weights on both workers


# Worker 1 dies right after joining the cluster; worker 0 then waits on a collective forever.
_DYING_WORKER_SCRIPT = r"""
import json, os, sys
import tensorflow as tf
from esr_tf.training.distribute import make_strategy
strategy = make_strategy("multiworker")
if json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 1:
    print("worker 1: simulated failure", flush=True)
    os._exit(3)
strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
print("RESULT {}", flush=True)
"""


@pytest.mark.slow
def test_a_dead_worker_fails_the_run_within_a_minute(tmp_path):
    start = time.monotonic()
    with pytest.raises(AssertionError, match="worker 1 exited with 3(.|\n)*simulated failure"):
        _run(_DYING_WORKER_SCRIPT, [], tmp_path, workers=2)
    assert time.monotonic() - start < 60 + _GRACE_AFTER_DEATH_S


def test_multiworker_validation_batch_gives_every_replica_rows(monkeypatch):
    from esr_tf.training import trainer

    class TwoWorkers:  # what validation_batch_size reads of a MultiWorkerMirroredStrategy
        num_replicas_in_sync = 2

    assert trainer.validation_batch_size(9, 8, distribute.make_strategy("default")) == 8
    monkeypatch.setattr(trainer, "is_multi_worker", lambda strategy: True)
    assert trainer.validation_batch_size(9, 8, TwoWorkers()) == 8  # 1 example left out, no empty share
    assert trainer.validation_batch_size(5, 8, TwoWorkers()) == 4
    assert trainer.validation_batch_size(2, 8, TwoWorkers()) == 2
    with pytest.raises(trainer.TrainingError, match="fewer than the 2 replicas"):
        trainer.validation_batch_size(1, 8, TwoWorkers())


@pytest.fixture(scope="module")
def multiworker_runs(tmp_path_factory):
    """Two workers train the cached-feature head, then the full model (image backbone
    trainable, so BatchNorm would update if it were not in inference mode)."""
    folder = tmp_path_factory.mktemp("multiworker")
    runs = {
        "cached": ["strategy=multiworker"],
        "full": ["strategy=multiworker", "cache_features=false", "model.freeze_image=false"],
        # both workers find (or write) the same feature store
        "store": ["strategy=multiworker", f"feature_store={folder / 'store'}"],
        "store_by_file": ["strategy=multiworker", f"feature_store={folder / 'store_by_file'}"],
    }
    shard_examples = {"store_by_file": 16}
    outputs = []
    for index in range(2):
        spec = {
            "barrier": True,
            "runs": [
                {
                    "name": name,
                    "overrides": overrides,
                    "out_dir": str(folder / name),
                    "weights": str(folder / f"{name}_{index}.npz"),
                    "shard_examples": shard_examples.get(name),
                }
                for name, overrides in runs.items()
            ],
        }
        outputs.append(json.dumps(spec))
    # Each worker gets its own spec (weights file name); the out_dir is shared on purpose.
    script = _TRAIN_SCRIPT.replace(
        "spec = json.loads(sys.argv[1])",
        "spec = json.loads(sys.argv[1 + json.loads(os.environ['TF_CONFIG'])['task']['index']])",
    )
    results = _run(script, outputs, folder / "logs", workers=2)
    return folder, [{r["name"]: r for r in worker} for worker in results]


@pytest.mark.slow
def test_multiworker_cached_head_identical_weights(multiworker_runs):
    folder, (chief, other) = multiworker_runs
    _check_no_error(chief["cached"])
    _check_no_error(other["cached"])
    assert chief["cached"]["loss"] == other["cached"]["loss"]
    assert np.isfinite(chief["cached"]["loss"]).all()
    _assert_same_weights(_weights(folder / "cached_0.npz"), _weights(folder / "cached_1.npz"))
    # Only the chief writes to out_dir; the other worker to a folder of its own.
    assert Path(chief["cached"]["out_dir"]) == folder / "cached"
    assert Path(other["cached"]["out_dir"]) == folder / "cached" / "worker_1"
    for out in (folder / "cached", folder / "cached" / "worker_1"):
        assert (out / "model.keras").is_file() and (out / "history.csv").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("run", ["store", "store_by_file"])
def test_multiworker_trains_from_one_feature_store(multiworker_runs, run):
    """Both workers find (or write) one store; with a train shard per worker or more, each
    reads its own shards (FILE sharding), else all read every shard and share the examples."""
    folder, (chief, other) = multiworker_runs
    for worker in (chief, other):
        _check_no_error(worker[run])
    assert chief[run]["loss"] == other[run]["loss"] and np.isfinite(chief[run]["loss"]).all()
    _assert_same_weights(_weights(folder / f"{run}_0.npz"), _weights(folder / f"{run}_1.npz"))
    # one train folder per photo table: each worker generated its own demo shop (other paths)
    for split in (folder / run).glob("*/train-*"):
        assert (len(list(split.glob("*.tfrecord"))) >= 2) == (run == "store_by_file"), split
    assert not list((folder / run).rglob("*.partial"))


@pytest.mark.slow
def test_multiworker_full_model_identical_weights_and_batchnorm_frozen(multiworker_runs):
    folder, (chief, other) = multiworker_runs
    _check_no_error(chief["full"])
    _check_no_error(other["full"])
    full = _weights(folder / "full_0.npz")
    _assert_same_weights(full, _weights(folder / "full_1.npz"))
    # Same seed, so the cached run (image backbone frozen) holds the initial image weights.
    initial = _weights(folder / "cached_0.npz")
    moving = [k for k in full if "moving_mean" in k or "moving_variance" in k]
    kernels = [k for k in full if "conv_" in k and k.endswith("kernel")]
    assert moving and kernels
    for key in moving:  # BatchNorm ran in inference mode: statistics never moved
        np.testing.assert_array_equal(full[key], initial[key], err_msg=key)
    assert any(not np.array_equal(full[k], initial[k]) for k in kernels), "image backbone frozen?"


@pytest.mark.slow
def test_mirrored_two_logical_cpus_keeps_replicas_in_sync(tmp_path):
    spec = {
        "logical_cpus": 2,
        "runs": [
            {
                "name": "mirrored",
                "overrides": ["strategy=mirrored"],
                "out_dir": str(tmp_path / "out"),
                "weights": str(tmp_path / "weights.npz"),
            }
        ],
    }
    ((result,),) = _run(_TRAIN_SCRIPT, [json.dumps(spec)], tmp_path / "logs", workers=1)
    _check_no_error(result)
    assert np.isfinite(result["loss"]).all()
    assert result["replicas"] == 2
    assert result["replica_spread"] == 0.0  # every MirroredVariable equal on both CPUs
