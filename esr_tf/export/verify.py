"""`esr-tf verify DIR`: prove an export loads and runs the way TF Serving runs it.

1. A fresh subprocess importing only tensorflow + tensorflow_text loads the export, runs every
   signature on the sample raw inputs stored at export time and compares with the Keras model's
   outputs on them (max |diff| <= 1e-4).
2. Every op in the graph must be a stock TF op or one of the expected TF-Text ops.
3. Optionally (on by default), the C++ `LoadSavedModel` client (the loader TF Serving uses) runs
   every signature on the same stored inputs and must agree with Python (`export.cpp_verify`).
4. The `saved_model_cli show` summary is included.

Example:
>>> report = verify_export("serving_models/esr/1", cpp=False)  # doctest: +SKIP
>>> print(format_report(report))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from esr_tf.export.cpp_verify import cpp_check
from esr_tf.export.saved_model import EXPECTED_TF_TEXT_OPS, list_ops
from esr_tf.export.versions import export_lock, recover_versions

_CHILD = Path(__file__).with_name("verify_child.py")
# Private TF module: no public op registry (esr_tf.upstream: "tensorflow-op-registry-private").
_NOT_STOCK = (
    "import json, sys, tensorflow as tf; from tensorflow.python.framework import op_def_registry as r; "
    "print(json.dumps([op for op in json.load(sys.stdin) if r.get(op) is None]))"
)


def non_stock_ops(ops: set[str]) -> set[str]:
    """The ops that tensorflow alone does not register (checked in a process without TF-Text)."""
    out = subprocess.run(
        [sys.executable, "-c", _NOT_STOCK],
        input=json.dumps(sorted(ops)),
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _ops_report(ops: set[str], not_stock: set[str]) -> dict:
    unexpected = sorted(not_stock - EXPECTED_TF_TEXT_OPS)
    return {
        "num_ops": len(ops),
        "tf_text_ops": sorted(ops & EXPECTED_TF_TEXT_OPS),
        "unexpected": unexpected,
        "ok": not unexpected,
    }


def _saved_model_cli(export_dir: Path) -> subprocess.Popen:
    # saved_model_cli cannot list concrete functions when custom ops exist; signatures suffice.
    cmd = [
        sys.executable,
        "-m",
        "tensorflow.python.tools.saved_model_cli",
        "show",
        "--dir",
        str(export_dir),
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_default",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _saved_model_cli_text(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate()
    return stdout.strip() if proc.returncode == 0 else f"saved_model_cli failed: {stderr.strip()[-500:]}"


def verify_export(export_dir: str | Path, *, cpp: bool = True) -> dict:
    """Runs all checks; `report["ok"]` is the overall verdict."""
    export_dir = Path(export_dir)
    if not export_dir.exists() and export_dir.parent.is_dir():
        _recover(export_dir.parent)  # killed in the middle of an overwrite: put version N back
    if not (export_dir / "saved_model.pb").is_file():
        raise FileNotFoundError(
            f"{export_dir} holds no saved_model.pb (pass <base>/<name>/<version>)"
        )
    ops = list_ops(export_dir)
    # The three checks load the export in separate processes: run them side by side.
    with tempfile.TemporaryFile("w+") as op_list:
        json.dump(sorted(ops), op_list)
        op_list.seek(0)
        child = subprocess.Popen(
            [sys.executable, str(_CHILD), str(export_dir)],
            stdin=op_list,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    cli = _saved_model_cli(export_dir)
    report: dict = {}
    if cpp:
        try:
            report["cpp"] = cpp_check(export_dir)
        except Exception as error:  # a failed build or run is a failed check, reported as such
            report["cpp"] = {"ok": False, "error": str(error)[-2000:]}
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        report["load"] = {"ok": False, "error": stderr.strip()[-2000:]}
        not_stock = non_stock_ops(ops)
    else:
        report["load"] = json.loads(stdout.strip().splitlines()[-1])
        not_stock = set(report["load"].pop("non_stock_ops"))
    report["ops"] = _ops_report(ops, not_stock)
    report["saved_model_cli"] = _saved_model_cli_text(cli)
    report["ok"] = all(
        part.get("ok", False) for key, part in report.items() if isinstance(part, dict)
    )
    return report


def _recover(model_dir: Path) -> None:
    """`recover_versions`, unless an export is running there (it repairs on its own start)."""
    with export_lock(model_dir, wait=False) as held:
        if held:
            recover_versions(model_dir)


def format_report(report: dict, signatures: bool = True) -> str:
    """One PASS / FAIL line per check; `signatures`: also `saved_model_cli show`'s listing."""
    lines = [f"esr-tf verify: {'PASS' if report['ok'] else 'FAIL'}"]
    load = report["load"]
    if "checks" in load:
        lines.append(
            f"  fresh process (tensorflow + tensorflow_text only): signatures {', '.join(load['signatures'])}"
        )
        for c in load["checks"]:
            lines.append(
                f"    [{'ok' if c['ok'] else 'FAIL'}] {c['signature']}/{c['output']}: "
                f"max |diff| {c['max_abs_diff']:.2e}"
            )
        lines.append(f"    modules loaded in that process: {load['modules']}")
    else:
        lines.append(f"  [FAIL] loading in a fresh process: {load.get('error')}")
    ops = report["ops"]
    lines.append(
        f"  [{'ok' if ops['ok'] else 'FAIL'}] ops: {ops['num_ops']} op types; TF-Text: {', '.join(ops['tf_text_ops'])}"
        + (f"; unexpected: {ops['unexpected']}" if ops["unexpected"] else "")
    )
    if "cpp" in report:
        cpp = report["cpp"]
        if "skipped" in cpp:
            lines.append(f"  [skipped] C++ LoadSavedModel client: {cpp['skipped']}")
        elif "error" in cpp:
            lines.append(f"  [FAIL] C++ LoadSavedModel client: {cpp['error']}")
        else:
            lines.append(
                f"  [{'ok' if cpp['ok'] else 'FAIL'}] C++ LoadSavedModel client: "
                f"signatures {', '.join(cpp['signatures'])}; "
                f"max |diff| {cpp['max_abs_diff']:.2e}; serving_default {cpp['ms_per_example']:.2f} ms/example"
            )
            lines.extend(f"    [FAIL] {c['signature']}/{c['output']}: max |diff| {c['max_abs_diff']:.2e}"
                         for c in cpp["checks"] if not c["ok"])
    if signatures:
        lines.append("  saved_model_cli show:")
        lines.extend("    " + line for line in report["saved_model_cli"].splitlines())
    return "\n".join(lines)


def verify_and_print(export_dir: str | Path, *, cpp: bool = True, signatures: bool = True) -> int:
    """`esr-tf verify`: runs `verify_export`, prints its report (`signatures`: with the
    `saved_model_cli show` listing); the exit code (0 PASS, 1 FAIL)."""
    report = verify_export(export_dir, cpp=cpp)
    print(format_report(report, signatures=signatures))
    return 0 if report["ok"] else 1
