"""Whether an output folder's saved state belongs to this run: resume it, refuse, or start fresh.

`train` keeps `BackupAndRestore` state in `<out_dir>/backup` so that rerunning the same command
after `kill -9` resumes. Rerunning *another* command into the same folder must not resume (it
would run zero epochs, or crash restoring weights of another architecture), so `train` writes
`<out_dir>/run.json`, a fingerprint of the config (all fields but `out_dir` and `data`) plus a
digest of the catalogue it read, and `prepare_out_dir` compares it before fitting.

Example:
>>> diff_fingerprints({"seed": 0, "model": {"fusion": "concat"}},
...                   {"seed": 1, "model": {"fusion": "concat"}})
['seed 0 -> 1']
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from esr_tf.data import Catalogue
from esr_tf.training.config import ConfigError, TrainConfig

log = logging.getLogger("esr_tf.training")

RUN_FILE = "run.json"
# What a finished or interrupted run leaves in out_dir (an overwrite removes all of it).
RUN_STATE = ("backup", "checkpoints", "history.csv", "logs", "model.keras", "retrieval.keras", RUN_FILE)
# Not part of what is trained: the folder itself, and the data path (the digest stands for it);
# the retrieval model is refitted after every run, so its settings never block a resume; where
# frozen-backbone outputs are kept (RAM or a feature store) does not change what is trained.
_NOT_FINGERPRINTED = ("out_dir", "data", "retrieval", "feature_store")


class RunConflictError(ConfigError):
    """`out_dir` holds the saved state of a run with another config or other data."""


def catalogue_digest(catalogue: Catalogue) -> str:
    """`"<n> examples, sha256 <16 hex>"` over each example (query, product, label name, split)
    and its product's texts: the same data gives the same digest wherever the folder is.

    Example:
    >>> from esr_tf.data.catalogue import Example, Product
    >>> cat = Catalogue(Path("."), {"p1": Product("p1", "mug")}, [Example("mug", "q", "p1", 0, "train")])
    >>> catalogue_digest(cat).split(",")[0]
    '1 examples'
    """
    h = hashlib.sha256()
    names = catalogue.label_set.names
    for e in catalogue.examples:
        p = catalogue.products[e.product_id]
        image = Path(p.image).name if p.image else ""
        fields = (e.query, e.query_id, e.product_id, names[e.label], e.split, p.title, p.description,
                  p.brand, p.color, image) + ((f"{e.weight:.6g}",) if e.weight != 1.0 else ())
        h.update(("\x1f".join(fields) + "\x1e").encode("utf-8", "surrogatepass"))
    return f"{len(catalogue.examples)} examples, sha256 {h.hexdigest()[:16]}"


def run_fingerprint(config: TrainConfig, catalogue: Catalogue) -> dict[str, Any]:
    """The config (JSON types, without `out_dir` / `data`) plus `catalogue_digest`."""
    fingerprint = json.loads(json.dumps(config.to_dict()))
    for key in _NOT_FINGERPRINTED:
        fingerprint.pop(key, None)
    fingerprint["catalogue"] = catalogue_digest(catalogue)
    return fingerprint


def diff_fingerprints(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`["field old -> new", ...]` for every field that differs (nested ones dotted)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_fingerprints(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {json.dumps(a) if not isinstance(a, str) else a} -> "
                       f"{json.dumps(b) if not isinstance(b, str) else b}")
    return out


def _read(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def clear_run(out: Path) -> None:
    """Removes what an earlier run left in `out` (see `RUN_STATE`); data and other files stay."""
    for name in RUN_STATE:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def prepare_out_dir(out: Path, fingerprint: dict, *, overwrite: bool = False) -> None:
    """Makes `out` ready for the run `fingerprint` describes, then writes it to `run.json`.

    - `overwrite`: the earlier run's state is removed first (`clear_run`);
    - a `backup/` of the same run: kept, so `fit` resumes after its last finished epoch;
    - a `backup/` of another run (or of one without `run.json`): `RunConflictError` naming
      what differs and how to start fresh;
    - no `backup/`: nothing to resume; the earlier `history.csv` is dropped so the new one
      holds this run's epochs only.
    """
    if overwrite:
        clear_run(out)
    elif (out / "backup").exists():
        old = _read(out / RUN_FILE)
        if old != fingerprint:
            what = ("no run.json says which run it belongs to" if old is None
                    else "it was saved by a run with " + "; ".join(diff_fingerprints(old, fingerprint)[:6]))
            raise RunConflictError(
                f"{out} holds the saved state (backup/) of another training run: {what}. Rerun with "
                "--overwrite (train(..., overwrite=True)) to start fresh there, or pick another --out"
            )
        log.info("resuming the run saved in %s", out / "backup")
    else:
        (out / "history.csv").unlink(missing_ok=True)
    tmp = out / f".{RUN_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(fingerprint, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(out / RUN_FILE)


def full_history(out: Path, fallback: dict[str, list[float]]) -> dict[str, list[float]]:
    """History across resumed runs, read back from the CSV log (one row per finished epoch)."""
    path = out / "history.csv"
    if not path.exists():
        return fallback
    rows = [line.split(",") for line in path.read_text().splitlines() if line]
    header, body = rows[0], [r for r in rows[1:] if r and r[0] != "epoch"]
    by_epoch = {int(r[0]): r for r in body}  # a resumed epoch overwrites its partial row
    return {key: [float(by_epoch[e][i]) for e in sorted(by_epoch)] for i, key in enumerate(header) if key != "epoch"}
