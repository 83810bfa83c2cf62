"""Version folders of `<base>/<name>/`: safe names, one exporter at a time, crash recovery.

TF Serving loads every numeric folder under `<base>/<name>/`, so a version must appear complete
in one rename and must never be replaced unless asked. Exporters into one model folder take
turns: `export_lock` holds an exclusive `flock` on the folder itself (no lock file to leave
behind; the kernel drops it when a process dies), from choosing the version number until the
version is renamed into place. Under the lock, what a killed exporter left is stale:
`recover_versions` puts back a replaced version whose successor never arrived (`.N.old-*`
with no `N`) and removes staging folders (`.N.partial-*`).

Example:
>>> check_model_name("esr")
'esr'
>>> check_model_name("../../escaped")
Traceback (most recent call last):
...
esr_tf.export.versions.ExportError: model name '../../escaped' must be one folder name, not a path (no /, \\, .., NUL)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: exports there are not serialised
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("esr_tf.export")

_LEFTOVER = re.compile(r"^\.(\d+)\.(old|partial)-")


class ExportError(ValueError):
    """Bad export arguments (model name, version); the message names the value."""


def check_model_name(name: str) -> str:
    """`name` if it is one path component (it becomes `<base>/<name>`); else `ExportError`."""
    text = str(name)
    if text.strip() in ("", ".", "..") or any(c in text for c in "/\\\0"):
        raise ExportError(f"model name {text!r} must be one folder name, not a path (no /, \\, .., NUL)")
    return text


def check_version(version: int) -> int:
    if isinstance(version, bool) or int(version) != version or int(version) <= 0:
        raise ExportError(f"version must be a positive integer, got {version}")
    return int(version)


def version_numbers(model_dir: str | Path, *, complete: bool = False) -> list[int]:
    """The numeric version folders of `model_dir`, newest first (`complete`: only those holding
    a `saved_model.pb`, i.e. what TF Serving would load)."""
    folders = (p for p in Path(model_dir).glob("*") if p.is_dir() and p.name.isdigit())
    return sorted((int(p.name) for p in folders if not complete or (p / "saved_model.pb").is_file()), reverse=True)


def next_version(model_dir: Path) -> int:
    """One more than the highest numeric folder (1 when there is none)."""
    return max(version_numbers(model_dir), default=0) + 1


@contextlib.contextmanager
def export_lock(model_dir: Path, *, wait: bool = True) -> Iterator[bool]:
    """Holds the model folder's exclusive lock; yields False (not held) only if `wait=False`
    and another process holds it."""
    if fcntl is None:
        yield True
        return
    fd = os.open(model_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            log.warning("%s: another export is running there; waiting for it to finish", model_dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # releases the lock


def recover_versions(model_dir: Path) -> list[str]:
    """Repairs what killed exporters left (call with `export_lock` held); returns what it did.

    A `.N.old-*` folder is a complete version N moved aside by an `overwrite`: put back when N
    is missing (the new one never arrived), else deleted. `.N.partial-*` staging is deleted.
    """
    done = []
    for path in sorted(Path(model_dir).iterdir()):
        match = _LEFTOVER.match(path.name)
        if not match or not path.is_dir():
            continue
        final = path.parent / match.group(1)
        if match.group(2) == "old" and not final.exists() and (path / "saved_model.pb").is_file():
            path.rename(final)
            done.append(f"restored {final} from {path.name}")
        else:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path.name}")
    for line in done:
        log.warning("%s: %s (left by a killed export)", model_dir, line)
    return done


def swap_in(built: Path, final: Path, *, overwrite: bool) -> None:
    """Renames `built` to `final`; an existing `final` is replaced only with `overwrite`.

    The old version is renamed aside, the new one renamed in, and only then the old one
    deleted, so a kill at any point leaves a complete version N (or `.N.old-*`, which
    `recover_versions` puts back).
    """
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass overwrite=True (--overwrite) or a new --version")
    trash = None
    if final.exists():
        trash = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(trash)
    built.rename(final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
