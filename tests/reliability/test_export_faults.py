"""Exports that are killed half-way, and exports onto an existing version.

A TF Serving model server polls `<base>/<name>/` for numeric folders and loads any it finds, so
a numeric folder must never be visible before it is complete. `export_saved_model` builds the
version in a hidden `.N.partial-*` sibling and renames it into place at the end.

Already covered in tests/export/test_saved_model.py: a second export of an existing version
raises `FileExistsError` and leaves it untouched; a finished export leaves no staging folder.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest
from reliability.helpers import start_python, tail, wait_for

from esr_tf.export.saved_model import export_saved_model, next_version
from esr_tf.export.versions import ExportError, export_lock, recover_versions

# Real export of the trained tiny model; `write_out` is wrapped to hang once the SavedModel is
# on disk, so the process is certainly still exporting when the parent kills it (the parent
# kills as soon as the staging folder has `variables/`, usually before that point).
EXPORT_CHILD = r"""
import sys, time
from esr_tf.export.archive import ServingArchive
from esr_tf.export.saved_model import export_saved_model
from esr_tf.models.builder import load_model

write_out = ServingArchive.write_out

def hang_after_write(self, filepath, *args, **kwargs):
    write_out(self, filepath, *args, **kwargs)
    print("WRITTEN", filepath, flush=True)
    time.sleep(600)

ServingArchive.write_out = hang_after_write
export_saved_model(load_model(sys.argv[1]), sys.argv[2], model_name="esr", version=1)
print("EXPORTED", flush=True)
"""

# The version swap of `overwrite=True` alone: the archive is a stand-in writing a marker file
# (the swap does not look inside it), and deleting the replaced version hangs.
OVERWRITE_CHILD = r"""
import pathlib, shutil, sys, time
import esr_tf.export.saved_model as sm


class Archive:
    def write_out(self, filepath, **kwargs):
        (pathlib.Path(filepath) / "variables").mkdir(parents=True)
        (pathlib.Path(filepath) / "saved_model.pb").write_text("new")


sm.build_signatures = lambda model: {}
sm.build_archive = lambda model, signatures=None: Archive()
sm.reference_outputs = lambda *args: {}
sm.model_warmup_records = lambda *args: []  # the stand-in model has no preprocessor
rmtree = shutil.rmtree

def hang_on_old(path, *args, **kwargs):
    if ".old-" in pathlib.Path(path).name:
        print("REMOVING", path, flush=True)
        time.sleep(600)
    return rmtree(path, *args, **kwargs)

shutil.rmtree = hang_on_old
sm.export_saved_model(None, sys.argv[1], model_name="esr", version=1, overwrite=True)
print("EXPORTED", flush=True)
"""


def numeric_versions(model_dir) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name.isdigit())


def kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


@pytest.mark.slow
def test_kill_during_export_leaves_no_partial_version(tiny_trained, tmp_path):
    base, log = tmp_path / "serving", tmp_path / "export.log"
    model_dir = base / "esr"
    proc = start_python(EXPORT_CHILD, str(tiny_trained.model_path), str(base), log=log)
    try:
        def writing() -> bool:
            return model_dir.is_dir() and any(model_dir.glob(".1.partial-*/export/variables"))

        wait_for(writing, proc, log, what="the export to start writing")
        kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "EXPORTED" not in log.read_text()
    # TF Serving sees nothing: no numeric folder, complete or not.
    assert numeric_versions(model_dir) == [], tail(log)
    assert next_version(model_dir) == 1
    # What is left: exactly the hidden staging folder (`finally` never ran). Reported as litter;
    # TF Serving ignores it (not a number), the next export makes a new one beside it.
    leftovers = sorted(p.name for p in model_dir.iterdir())
    assert len(leftovers) == 1 and leftovers[0].startswith(".1.partial-"), leftovers
    # The next export (under the folder's lock, so nobody else is writing it) removes it.
    with export_lock(model_dir):
        assert recover_versions(model_dir) == [f"removed {leftovers[0]}"]
    assert list(model_dir.iterdir()) == []


def test_overwrite_true_replaces_the_version_and_leaves_nothing(tiny_export, tmp_path, monkeypatch):
    import esr_tf.export.saved_model as sm

    model_dir = tmp_path / "serving" / "esr"
    shutil.copytree(tiny_export, model_dir / "1")
    (model_dir / "1" / "sentinel").write_text("old version")
    with pytest.raises(FileExistsError, match=r"esr[/\\]1 already exists; pass overwrite=True"):
        export_saved_model(None, model_dir.parent, model_name="esr", version=1)
    assert (model_dir / "1" / "sentinel").exists()
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]

    class Archive:  # the swap does not look inside the archive; keep this test fast
        def write_out(self, filepath, **kwargs):
            os.makedirs(os.path.join(filepath, "variables"))
            with open(os.path.join(filepath, "saved_model.pb"), "w") as f:
                f.write("new")

    monkeypatch.setattr(sm, "build_signatures", lambda model: {})
    monkeypatch.setattr(sm, "build_archive", lambda model, signatures=None: Archive())
    monkeypatch.setattr(sm, "reference_outputs", lambda *args: {})
    monkeypatch.setattr(sm, "model_warmup_records", lambda *args: [])
    path = export_saved_model(None, model_dir.parent, model_name="esr", version=1, overwrite=True)
    assert path == model_dir / "1"
    assert (path / "saved_model.pb").read_text() == "new" and not (path / "sentinel").exists()
    assert (path / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]  # no .old / .partial left


@pytest.mark.parametrize("version", [0, -3])
def test_non_positive_version_is_refused(tmp_path, version):
    with pytest.raises(ValueError, match=f"version must be a positive integer, got {version}"):
        export_saved_model(None, tmp_path, model_name="esr", version=version)


def test_cli_export_onto_existing_version_exits_2_with_the_path(tiny_trained, tiny_export,
                                                                capsys):
    from esr_tf.cli import main

    before = (tiny_export / "saved_model.pb").stat().st_mtime_ns
    code = main(["export", "--model", str(tiny_trained.model_path), "--base",
                 str(tiny_export.parent.parent), "--name", "esr", "--version", "1",
                 "--no-verify"])
    assert code == 2
    assert f"{tiny_export} already exists" in capsys.readouterr().err
    assert (tiny_export / "saved_model.pb").stat().st_mtime_ns == before


@pytest.mark.slow
def test_kill_during_overwrite_keeps_a_complete_version(tiny_export, tmp_path):
    model_dir, log = tmp_path / "serving" / "esr", tmp_path / "overwrite.log"
    shutil.copytree(tiny_export, model_dir / "1")
    proc = start_python(OVERWRITE_CHILD, str(model_dir.parent), log=log)
    try:
        wait_for(lambda: "REMOVING" in log.read_text(), proc, log, what="the old version's delete")
        kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (model_dir / "1" / "saved_model.pb").is_file(), sorted(os.listdir(model_dir))
    assert (model_dir / "1" / "saved_model.pb").read_text() == "new"
    with export_lock(model_dir):  # what the next export does first: drop the replaced copy
        recover_versions(model_dir)
    assert sorted(os.listdir(model_dir)) == ["1"]


# --- several exporters, one model folder (issue #18, item 3) ------------------------------------

# A stand-in archive whose write takes 3 s and records the exporting process, so that two exports
# started together overlap; prints EXPORTED <path> or REFUSED <error>.
PARALLEL_CHILD = r"""
import os, pathlib, sys, time
import esr_tf.export.saved_model as sm


class Archive:
    def write_out(self, filepath, **kwargs):
        time.sleep(3)
        (pathlib.Path(filepath) / "variables").mkdir(parents=True)
        (pathlib.Path(filepath) / "saved_model.pb").write_text(f"pid {os.getpid()}")


sm.build_signatures = lambda model: {}
sm.build_archive = lambda model, signatures=None: Archive()
sm.reference_outputs = lambda *args: {}
sm.model_warmup_records = lambda *args: []  # the stand-in model has no preprocessor
version = int(sys.argv[2]) if len(sys.argv) > 2 else None
try:
    path = sm.export_saved_model(None, sys.argv[1], model_name="esr", version=version)
except FileExistsError as error:
    print("REFUSED", error, flush=True)
else:
    print("EXPORTED", path, (path / "saved_model.pb").read_text(), flush=True)
"""


def _run_two(tmp_path, *args: str) -> list[str]:
    base = tmp_path / "serving"
    procs = [start_python(PARALLEL_CHILD, str(base), *args, log=tmp_path / f"{i}.log") for i in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    return [(tmp_path / f"{i}.log").read_text() for i in range(2)]


@pytest.mark.slow
def test_parallel_exports_get_distinct_complete_versions(tmp_path):
    logs = _run_two(tmp_path)
    model_dir = tmp_path / "serving" / "esr"
    assert numeric_versions(model_dir) == ["1", "2"], logs
    exported = sorted(line.split()[1] for log in logs for line in log.splitlines()
                      if line.startswith("EXPORTED"))
    assert exported == [str(model_dir / "1"), str(model_dir / "2")], logs
    marks = {(model_dir / v / "saved_model.pb").read_text() for v in ("1", "2")}
    assert len(marks) == 2  # each version holds its own exporter's files
    assert sorted(os.listdir(model_dir)) == ["1", "2"]


@pytest.mark.slow
def test_parallel_exports_of_one_version_refuse_the_later_one(tmp_path):
    logs = _run_two(tmp_path, "1")
    model_dir = tmp_path / "serving" / "esr"
    outcomes = sorted(log.strip().splitlines()[-1].split()[0] for log in logs)
    assert outcomes == ["EXPORTED", "REFUSED"], logs
    winner = next(log for log in logs if "EXPORTED" in log).strip().splitlines()[-1]
    assert winner.endswith((model_dir / "1" / "saved_model.pb").read_text())  # not replaced
    assert "already exists" in next(log for log in logs if "REFUSED" in log)


def test_kill_between_the_overwrite_renames_is_repaired_by_the_next_export(tiny_export, tmp_path,
                                                                          monkeypatch):
    """Killed after moving version 1 aside and before renaming the new one in: the next export
    puts version 1 back (and removes a stale staging folder) before choosing its number."""
    import esr_tf.export.saved_model as sm

    model_dir = tmp_path / "serving" / "esr"
    shutil.copytree(tiny_export, model_dir / ".1.old-999")
    (model_dir / ".2.partial-x" / "export").mkdir(parents=True)

    class Archive:
        def write_out(self, filepath, **kwargs):
            os.makedirs(os.path.join(filepath, "variables"))

    monkeypatch.setattr(sm, "build_signatures", lambda model: {})
    monkeypatch.setattr(sm, "build_archive", lambda model, signatures=None: Archive())
    monkeypatch.setattr(sm, "reference_outputs", lambda *args: {})
    monkeypatch.setattr(sm, "model_warmup_records", lambda *args: [])
    assert export_saved_model(None, model_dir.parent, model_name="esr") == model_dir / "2"
    assert sorted(os.listdir(model_dir)) == ["1", "2"]
    assert (model_dir / "1" / "saved_model.pb").read_bytes() == (tiny_export / "saved_model.pb").read_bytes()


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "ABSOLUTE", "..", ".", "", " ", "a\\b", "x\0y"])
def test_model_name_must_be_one_folder_name(tmp_path, name):
    base = tmp_path / "base"
    name = str(tmp_path / "elsewhere") if name == "ABSOLUTE" else name  # never the real /
    with pytest.raises(ExportError, match="must be one folder name"):
        export_saved_model(None, base, model_name=name)
    assert os.listdir(tmp_path) == []  # nothing written, not even <base>


def test_cli_export_refuses_a_name_leading_out_of_base(tiny_trained, tmp_path, capsys):
    from esr_tf.cli import main

    base = tmp_path / "a" / "b" / "base"
    code = main(["export", "--model", str(tiny_trained.model_path), "--base", str(base),
                 "--name", "../../escaped", "--no-verify"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'../../escaped' must be one folder name" in err and "\n" not in err, err
    assert not (tmp_path / "a" / "escaped").exists() and not base.exists()


@pytest.mark.slow
def test_verify_puts_back_a_version_left_aside_by_a_killed_overwrite(tiny_export, tmp_path):
    from esr_tf.export.verify import verify_export

    model_dir = tmp_path / "serving" / "esr"
    shutil.copytree(tiny_export, model_dir / ".1.old-999")
    report = verify_export(model_dir / "1", cpp=False)
    assert report["ok"], report
    assert sorted(os.listdir(model_dir)) == ["1"]
