"""Training that is killed or diverges.

- `kill -9` in the middle of an epoch, then the same command again: `BackupAndRestore` resumes
  after the last finished epoch, so `history.csv` (appended by `CSVLogger`) ends with every epoch
  exactly once and `model.keras` is written.
- A NaN loss stops training with a `TrainingError` naming it (also in
  tests/training/test_trainer.py::test_nan_loss_stops_with_a_message). Here: the epoch / batch
  in the message, no model written, and the state left behind for a rerun (the message tells
  the user to lower the learning rate and rerun; it points at `<out>/checkpoints`).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import time

import pytest
from reliability.helpers import run_python, start_python, tail, wait_for

from esr_tf.training.trainer import TrainingError

pytestmark = pytest.mark.slow

EPOCHS = 4

# `python -c` child: the library's `train` plus a callback that sleeps after each batch, so an
# epoch lasts over a second and the kill lands inside one (the tiny model trains an epoch of
# cached features in milliseconds). Test scaffolding only: nothing in the library is patched.
TRAIN_CHILD = r"""
import sys, time
import keras
from esr_tf.training.config import parse_config
from esr_tf.training.trainer import train


class Slow(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        time.sleep(0.15)


fit = keras.Model.fit
keras.Model.fit = lambda self, *a, callbacks=None, **k: fit(
    self, *a, callbacks=[*(callbacks or []), Slow()], **k)
result = train(parse_config(sys.argv[1]), verbose=0)
print("FINISHED", result.epochs_run, flush=True)
"""


def finished_epochs(history) -> list[int]:
    if not history.exists():
        return []
    with open(history, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f) if row.get("epoch", "").isdigit()]


def _stored_files(store) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file() and p.suffix != ".json"}


def test_kill_9_mid_epoch_then_rerun_resumes_without_losing_an_epoch(tiny_config, tiny_catalogue, tmp_path):
    """Run with a `feature_store` (the resume itself, `BackupAndRestore` and the CSV log, is the
    same with the outputs in RAM): the rerun also reads the stored outputs, rewriting none."""
    out, store = tmp_path / "run", tmp_path / "features"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        **tiny_config.to_dict(), "data": str(tiny_catalogue.root), "out_dir": str(out),
        "epochs": EPOCHS, "early_stopping_patience": 0, "retrieval": {"epochs": 0},
        "feature_store": str(store),
    }))
    history, log = out / "history.csv", tmp_path / "first.log"

    first = start_python(TRAIN_CHILD, str(config), log=log)
    try:
        wait_for(lambda: 1 in finished_epochs(history), first, log, what="epoch 1 in history.csv")
        time.sleep(0.3)  # inside epoch 2 (each epoch sleeps >= 1 s in its batches)
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=60) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    assert finished_epochs(history) == [0, 1], tail(log)
    assert (out / "backup").is_dir() and not (out / "model.keras").exists()
    stored = _stored_files(store)
    assert any(name.endswith(".tfrecord") for name in stored)

    second = run_python(TRAIN_CHILD, str(config), timeout=600)
    assert second.returncode == 0, tail(second.stdout + second.stderr)
    assert "FINISHED" in second.stdout
    assert finished_epochs(history) == list(range(EPOCHS)), history.read_text()
    with open(history, newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["loss"]) == float(r["loss"]) for r in rows)  # finite numbers, not "NA"
    assert (out / "model.keras").is_file()
    assert not list(out.glob("*.partial*"))
    assert _stored_files(store) == stored, "the rerun rewrote stored features"


@pytest.fixture(scope="module")
def nan_run(tiny_config, tiny_catalogue, tmp_path_factory):
    """One training that diverges in its first epoch: `(out_dir, TrainingError message)`."""
    from esr_tf.training.config import parse_config
    from esr_tf.training.trainer import train

    out = tmp_path_factory.mktemp("nan_run")
    config = parse_config({**tiny_config.to_dict(), "out_dir": str(out), "epochs": 2,
                           "learning_rate": 1e30, "warmup_fraction": 0.0})
    with pytest.raises(TrainingError) as err:
        train(config, catalogue=tiny_catalogue, verbose=0)
    return out, str(err.value)


def non_finite_arrays(path) -> list[str]:
    """Names of the float arrays holding NaN / inf in a Keras `.weights.h5` file."""
    import h5py
    import numpy as np

    bad: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f":
            if not np.isfinite(obj[()]).all():
                bad.append(name)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return bad


def test_nan_stop_names_the_epoch_and_batch_and_saves_no_model(nan_run):
    out, message = nan_run
    assert "NaN" in message and re.search(r"epoch \d+", message), message
    assert "learning_rate" in message
    assert not (out / "model.keras").exists()
    assert not list(out.glob("model.keras*"))


def test_nan_stop_leaves_no_nan_backup_to_resume_from(nan_run):
    out, _ = nan_run
    backups = list((out / "backup").glob("*.h5")) if (out / "backup").exists() else []
    for path in backups:
        assert not non_finite_arrays(path), f"{path} holds NaN weights"


def test_nan_stop_checkpoint_is_a_good_state(nan_run):
    out, message = nan_run
    for path in (out / "checkpoints").glob("*.h5"):
        assert not non_finite_arrays(path), f"{path} holds NaN weights ({message})"


# --- a rerun into the same out_dir (issue #18, item 2) ------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tiny_config, tiny_catalogue, tmp_path_factory):
    """`(config dict, out_dir)` of one finished 1-epoch run (its backup/ is kept)."""
    from esr_tf.training.config import parse_config
    from esr_tf.training.trainer import train

    out = tmp_path_factory.mktemp("finished_run")
    config = {**tiny_config.to_dict(), "data": str(tiny_catalogue.root), "out_dir": str(out),
              "epochs": 1, "early_stopping_patience": 0}
    train(parse_config(config), catalogue=tiny_catalogue, verbose=0)
    assert (out / "backup").is_dir() and (out / "run.json").is_file()
    return config, out


def test_rerun_with_another_config_is_refused_naming_what_differs(finished_run, tmp_path, capsys):
    from esr_tf.cli import main

    config, out = finished_run
    before = (out / "config.json").read_text()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code = main(["train", "--config", str(path), "--set", "seed=1", "--set", "learning_rate=0.01",
                 "--set", "model.fusion=concat"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    for part in ("backup/", "seed 0 -> 1", "learning_rate 0.001 -> 0.01",
                 "model.fusion cross_attention -> concat", "--overwrite", "another --out"):
        assert part in err, (part, err)
    assert (out / "config.json").read_text() == before  # still describes the saved run


def test_rerun_with_other_data_is_refused(finished_run, tiny_catalogue):
    import dataclasses

    from esr_tf.training.config import parse_config
    from esr_tf.training.run_state import RunConflictError
    from esr_tf.training.trainer import train

    config, _ = finished_run
    fewer = dataclasses.replace(tiny_catalogue, examples=tiny_catalogue.examples[:-3])
    with pytest.raises(RunConflictError, match=r"catalogue \d+ examples, sha256 \w+ -> "):
        train(parse_config(config), catalogue=fewer, verbose=0)


def test_overwrite_starts_a_fresh_run(finished_run, tiny_catalogue, tmp_path):
    import shutil

    from esr_tf.training.config import parse_config
    from esr_tf.training.trainer import train

    config, old = finished_run
    out = tmp_path / "run"
    shutil.copytree(old, out)
    config = {**config, "out_dir": str(out), "seed": 1}
    result = train(parse_config(config), catalogue=tiny_catalogue, verbose=0, overwrite=True)
    assert result.epochs_run == 1  # trained, not restored from the old backup/
    assert finished_epochs(out / "history.csv") == [0]
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert json.loads((out / "run.json").read_text())["seed"] == 1
