"""Builds and runs `esr_predict`, a C++ client that loads a SavedModel the way TF Serving does.

`tensorflow::LoadSavedModel` is the loader inside TF Serving, so a signature that runs here with
the TF-Text op libraries loaded will also run in a TF Serving build that links TF-Text. The
program is compiled once against the headers and `libtensorflow_cc.so.2` of the installed
`tensorflow` wheel and cached (`$ESR_TF_CACHE/cpp`, default `~/.cache/esr_tf/cpp`), keyed by
a hash of the source, the flags and the TensorFlow install.

Example:
>>> from esr_tf.export.cpp_client import cpp_toolchain_available, run_cpp_client
>>> if cpp_toolchain_available() is None:  # doctest: +SKIP
...     result = run_cpp_client("export/esr/1", {"query": ["shoes"], "title": ["Red shoe"],
...                                              "image": [b""]}, repeats=10)
...     result["outputs"]["label"], result["ms_per_example"]
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from esr_tf.constants import cache_root

SOURCE = Path(__file__).parent / "cpp" / "esr_predict.cc"
BINARY_NAME = "esr_predict"
CXX_FLAGS = (
    "-std=c++17", "-D_GLIBCXX_USE_CXX11_ABI=1", "-DEIGEN_MAX_ALIGN_BYTES=64", "-O2",
    # TF's and Eigen's own headers trigger hundreds of these.
    "-Wno-deprecated-declarations", "-Wno-interference-size",
)
# --no-as-needed: LoadSavedModel lives in libtensorflow_framework, so nothing the program calls
# is defined in libtensorflow_cc, yet its static initialisers register the session factories;
# dropped as unneeded, loading fails at run time with "No session factory registered".
LINK_LIBS = ("-Wl,--no-as-needed", "-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2")
_DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
           "bool": np.bool_}


def _package_dir(name: str) -> Path | None:
    # find_spec on a top-level package locates it without importing it (no TF start-up cost).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def cpp_toolchain_available() -> str | None:
    """None when the C++ client can be built here, else the reason (for `pytest.skip`)."""
    if _compiler() is None:
        return f"no C++ compiler: {os.environ.get('CXX', 'g++')} not found on PATH"
    tf_dir = _package_dir("tensorflow")
    if tf_dir is None:
        return "tensorflow is not installed"
    if not (tf_dir / "include" / "tensorflow" / "cc" / "saved_model" / "loader.h").exists():
        return f"the tensorflow wheel at {tf_dir} ships no C++ headers (include/)"
    for lib in ("libtensorflow_cc.so.2", "libtensorflow_framework.so.2"):
        if not (tf_dir / lib).exists():
            return f"the tensorflow wheel at {tf_dir} ships no {lib}"
    return None


def tf_text_op_libraries() -> list[Path]:
    """The TF-Text custom-op libraries (`tensorflow_text/python/ops/_*.so`) to dlopen."""
    text_dir = _package_dir("tensorflow_text")
    if text_dir is None:
        raise RuntimeError("tensorflow_text is not installed; the exported graph needs its ops")
    libraries = sorted((text_dir / "python" / "ops").glob("_*.so"))
    if not libraries:
        raise RuntimeError(f"no op libraries (_*.so) under {text_dir / 'python' / 'ops'}")
    return libraries


def _cache_dir() -> Path:
    return cache_root() / "cpp"


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_cpp_client(build_dir: str | os.PathLike | None = None) -> Path:
    """Compiles `esr_predict.cc` (once; again only when source, flags or TF change).

    Returns the path of the executable. Raises `RuntimeError` with the compiler's message when
    the toolchain is missing or the build fails.
    """
    reason = cpp_toolchain_available()
    if reason is not None:
        raise RuntimeError(f"cannot build the C++ client: {reason}")
    tf_dir = _package_dir("tensorflow")
    compiler = _compiler()
    # GNU gold links against the 1 GB libtensorflow_cc.so.2 about 5x faster than ld.bfd.
    linker = ["-fuse-ld=gold"] if shutil.which("ld.gold") else []
    command_tail = [
        "-I", str(tf_dir / "include"), str(SOURCE), "-o", "{output}", *linker,
        "-L", str(tf_dir), f"-Wl,-rpath,{tf_dir}", *LINK_LIBS, "-ldl",
    ]
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(repr((compiler, CXX_FLAGS, command_tail)).encode())
    key.update(str((tf_dir / "libtensorflow_cc.so.2").stat().st_mtime_ns).encode())
    out_dir = Path(build_dir) if build_dir is not None else _cache_dir()
    binary = out_dir / f"{BINARY_NAME}-{key.hexdigest()[:16]}"
    if binary.exists():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build under a unique name and rename: parallel test processes never see a partial binary.
    partial = out_dir / f".{binary.name}.{os.getpid()}.tmp"
    command = [compiler, *CXX_FLAGS, *(a.replace("{output}", str(partial)) for a in command_tail)]
    start, cpu_start = time.perf_counter(), _children_cpu_seconds()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        errors = [line for line in proc.stderr.splitlines() if "error" in line]
        raise RuntimeError(
            f"compiling {SOURCE.name} failed (exit {proc.returncode}):\n{' '.join(command)}\n"
            + "\n".join(errors[:20] or proc.stderr.splitlines()[-40:])
        )
    os.replace(partial, binary)
    (out_dir / f"{binary.name}.build.json").write_text(
        json.dumps({
            "command": command,
            "wall_seconds": round(time.perf_counter() - start, 2),
            "cpu_seconds": round(_children_cpu_seconds() - cpu_start, 2),
        })
    )
    return binary


Inputs = dict[str, Sequence[bytes | str] | np.ndarray | int]


def _write_dense(f, name: str, values: np.ndarray | int) -> bool:
    """A float32 / int32 tensor (a Python int: an int32 scalar); False for string values."""
    if isinstance(values, bool) or not isinstance(values, int | np.integer | np.ndarray):
        return False
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        return False
    kind, dtype = ("float", "<f4") if array.dtype.kind == "f" else ("int32", "<i4")
    data = np.asarray(array, dtype=dtype)  # not ascontiguousarray: it makes a scalar 1-D
    dims = " ".join(str(d) for d in data.shape)
    f.write(f"{name} {kind} {data.ndim} {dims}".rstrip().encode() + b"\n")
    f.write(data.tobytes(order="C") + b"\n")
    return True


def _write_inputs(path: Path, inputs: Inputs, calls: Sequence[tuple[str, Inputs]] = ()) -> None:
    """Writes the `ESRPRED1` input file read by esr_predict.cc (format in its header): `inputs`,
    or one `@call` section per (signature, inputs) of `calls`."""
    with open(path, "wb") as f:
        f.write(b"ESRPRED1\n")
        for signature, call_inputs in calls:
            if not signature or any(c.isspace() for c in signature):
                raise ValueError(f"signature name {signature!r} must be non-empty without whitespace")
            f.write(f"@call {signature}\n".encode())
            _write_values(f, call_inputs)
        if not calls:
            _write_values(f, inputs)


def _write_values(f, inputs: Inputs) -> None:
    for name, values in inputs.items():
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"input name {name!r} must be non-empty without whitespace")
        if _write_dense(f, name, values):
            continue
        if isinstance(values, str | bytes):
            raise TypeError(f"input {name!r}: expected a list of values, got a single value")
        items = []
        for i, value in enumerate(list(values)):
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, bytes | bytearray | memoryview):
                raise TypeError(
                    f"input {name!r} item {i}: expected str or bytes, "
                    f"got {type(value).__name__}"
                )
            items.append(bytes(value))
        f.write(f"{name} string {len(items)}\n".encode())
        for item in items:
            f.write(f"{len(item)}\n".encode() + item + b"\n")


def _decode_output(name: str, spec: dict) -> np.ndarray:
    shape = tuple(spec["shape"])
    if spec["dtype"] == "string":
        values = [
            base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode("utf-8")
            for v in spec["values"]
        ]
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if spec["dtype"] not in _DTYPES:
        raise ValueError(f"output {name!r}: unknown dtype {spec['dtype']!r} from esr_predict")
    return np.asarray(spec["values"], dtype=_DTYPES[spec["dtype"]]).reshape(shape)


def _run(export_dir: Path, inputs: Inputs, calls: Sequence[tuple[str, Inputs]], signature: str, repeats: int,
         timeout: float, build_dir) -> dict:
    """esr_predict's parsed JSON for `inputs` (one call of `signature`) or `calls`."""
    if not (export_dir / "saved_model.pb").exists():
        raise FileNotFoundError(f"{export_dir}: no saved_model.pb (give the version folder)")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    binary = build_cpp_client(build_dir)
    with tempfile.TemporaryDirectory(prefix="esr_predict_") as tmp:
        input_file = Path(tmp) / "inputs.bin"
        _write_inputs(input_file, inputs, calls)
        command = [str(binary), "--signature", signature, "--repeats", str(repeats)]
        for library in tf_text_op_libraries():
            command += ["--op_library", str(library)]
        command += [str(export_dir), str(input_file)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        # Keep our own error message; TF's log lines before it are rarely the cause.
        marker = proc.stderr.find("esr_predict: error:")
        message = proc.stderr[marker:] if marker >= 0 else proc.stderr[-4000:]
        raise RuntimeError(
            f"esr_predict failed on {export_dir} (exit {proc.returncode}):\n{message}"
        )
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        raise RuntimeError(f"esr_predict printed no JSON ({err}):\n{proc.stdout[-2000:]}") from None


def _call_result(result: dict) -> dict:
    return {
        "outputs": {k: _decode_output(k, v) for k, v in result["outputs"].items()},
        "ms_per_run": float(result["ms_per_run"]),
        "ms_per_example": float(result["ms_per_example"]),
        "first_run_ms": float(result["first_run_ms"]),
    }


def run_cpp_client(
    export_dir: str | os.PathLike,
    inputs: Inputs,
    *,
    signature: str = "serving_default",
    repeats: int = 1,
    timeout: float = 600.0,
    build_dir: str | os.PathLike | None = None,
) -> dict:
    """Runs `signature` of the SavedModel at `export_dir` (a version folder) in C++.

    `inputs` maps input names to lists of str / bytes (string tensors of shape [n]), float
    numpy arrays (e.g. `image_tokens` of `score_with_image_features`) or ints (int32 scalars,
    e.g. `k`). One untimed warm-up run is followed by `repeats` timed runs. Returns
    `{"outputs": {name: np.ndarray}, "ms_per_run", "ms_per_example", "load_ms", "first_run_ms"}`;
    string outputs are object arrays of bytes, as `tf.Tensor.numpy()` gives them. `build_dir` is
    passed to `build_cpp_client`.
    """
    result = _run(Path(export_dir), inputs, (), signature, repeats, timeout, build_dir)
    return {**_call_result(result), "load_ms": float(result["load_ms"])}


def run_cpp_calls(
    export_dir: str | os.PathLike,
    calls: Sequence[tuple[str, Inputs]],
    *,
    repeats: int = 1,
    timeout: float = 600.0,
    build_dir: str | os.PathLike | None = None,
) -> dict:
    """Loads the SavedModel once in C++ and runs each (signature, inputs) of `calls` on it.

    Returns `{"load_ms", "calls": [one `run_cpp_client` result without load_ms per call]}`.
    """
    if not calls:
        raise ValueError("no calls to run")
    result = _run(Path(export_dir), {}, calls, "serving_default", repeats, timeout, build_dir)
    return {"load_ms": float(result["load_ms"]), "calls": [_call_result(c) for c in result["calls"]]}
