"""`verify`'s C++ step: every signature of an export, run by the C++ `LoadSavedModel` client.

The stored reference (`assets.extra/esr_tf_reference.npz`) holds the sample raw inputs and the
in-memory outputs of every signature: `serving_default`, `embed_images`, `explain` (with
`input/<name>`), `score_with_image_features` (fed the reference photo features; it must answer
as `serving_default`), and search calls stored as `call/<signature>/input|output/<name>`. All run
in one C++ process (the export is loaded once) and each output must equal Python's within 1e-4
(strings exactly).

Example:
>>> report = cpp_check("serving_models/esr/1")  # doctest: +SKIP
>>> report["ok"], [c["signature"] for c in report["checks"]][:2]  # doctest: +SKIP
(True, ['serving_default', 'serving_default'])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from esr_tf.export.cpp_client import Inputs, cpp_toolchain_available, run_cpp_calls
from esr_tf.export.saved_model import REFERENCE_FILE

TOLERANCE = 1e-4


def _strings(values: np.ndarray) -> list[bytes]:
    return [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values.tolist()]


def _input(value: np.ndarray) -> list[bytes] | np.ndarray | int:
    if value.dtype.kind in "UOS":
        return _strings(value)
    return int(value) if value.ndim == 0 and value.dtype.kind in "iu" else value


def reference_calls(ref) -> list[tuple[str, Inputs, str]]:
    """(signature, inputs, reference prefix of its outputs) for every call stored in `ref`."""
    raw = {k[len("input/"):]: _input(ref[k]) for k in ref.files if k.startswith("input/")}
    text = {k: v for k, v in raw.items() if k != "image"}
    calls = [("serving_default", raw, "serving_default"), ("embed_images", {"image": raw["image"]}, "embed_images")]
    if "embed_images/image_tokens" in ref.files:
        features = {"image_tokens": ref["embed_images/image_tokens"],
                    "has_image": np.asarray(ref["embed_images/has_image"], np.float32)}
        calls.append(("score_with_image_features", {**text, **features}, "serving_default"))
    if any(k.startswith("explain/") for k in ref.files):
        calls.append(("explain", raw, "explain"))
    for name in sorted({k.split("/")[1] for k in ref.files if k.startswith("call/")}):
        prefix = f"call/{name}/input/"
        inputs = {k[len(prefix):]: _input(ref[k]) for k in ref.files if k.startswith(prefix)}
        calls.append((name, inputs, f"call/{name}/output"))
    return calls


def compare(got: np.ndarray, want: np.ndarray) -> tuple[float, bool]:
    """(max |diff|, ok): strings must be equal, numbers within `TOLERANCE`, shapes equal."""
    if got.shape != want.shape:
        return float("inf"), False
    if got.dtype.kind in "OSU" or want.dtype.kind in "OSU":
        ok = _strings(got.ravel()) == _strings(want.ravel())
        return (0.0 if ok else float("inf")), ok
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
    return diff, diff <= TOLERANCE


def cpp_check(export_dir: str | Path, repeats: int = 1) -> dict:
    """Runs every stored call in C++; `{"ok", "checks": [...], "load_ms", "ms_per_example"}` (the
    latter of `serving_default`), or `{"skipped": reason, "ok": True}` without a C++ toolchain."""
    reason = cpp_toolchain_available()
    if reason:
        return {"skipped": reason, "ok": True}
    export_dir = Path(export_dir)
    ref = np.load(export_dir / "assets.extra" / REFERENCE_FILE, allow_pickle=True)
    calls = reference_calls(ref)
    result = run_cpp_calls(export_dir, [(name, inputs) for name, inputs, _ in calls], repeats=repeats)
    checks = []
    for (name, _, prefix), answer in zip(calls, result["calls"], strict=True):
        for output, got in sorted(answer["outputs"].items()):
            if f"{prefix}/{output}" in ref.files:
                diff, ok = compare(got, ref[f"{prefix}/{output}"])
                checks.append({"signature": name, "output": output, "max_abs_diff": diff, "ok": ok})
    signatures = sorted({c["signature"] for c in checks})
    return {
        "ok": bool(checks) and all(c["ok"] for c in checks),
        "checks": checks,
        "signatures": signatures,
        "max_abs_diff": max(c["max_abs_diff"] for c in checks) if checks else float("inf"),
        "load_ms": result["load_ms"],
        "ms_per_example": result["calls"][0]["ms_per_example"],
    }
