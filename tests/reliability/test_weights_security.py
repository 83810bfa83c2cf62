"""The Lite0 weights reader against crafted files (only numpy; no torch anywhere).

Already covered in tests/models/test_image_backbone.py (not repeated): a one-bit change of the
real file fails its sha256 check, and a protocol-2 pickle whose `__reduce__` calls `os.system`
is refused by the allowlist and never runs, with and without the legacy header.

Here: a hand-built well-formed legacy file parses (the positive control: refusals below come
from the allowlist, not from a broken file); code-running globals through every pickle protocol
and opcode family, hidden in each of the file's five pickles, inside allowed containers and in
the persistent-id record; structural attacks on the tensor records; the default path's sha256
gate runs before any byte is unpickled.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess

import numpy as np
import pytest

from esr_tf.models.backbones import lite0_weights
from esr_tf.models.backbones.lite0_weights import LITE0_SHA256, load_lite0_state_dict

MAGIC = 0x1950A86A20F9469CFC6C


# --- a tiny legacy-torch writer, opcode by opcode (no torch needed) -------------------------------


def _u(text: str) -> bytes:  # BINUNICODE
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _i(n: int) -> bytes:  # LONG1, any size and sign
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(key: str, numel: int, shape, stride, offset: int = 0,
            storage_global: bytes = b"ctorch\nFloatStorage\n") -> bytes:
    """`torch._utils._rebuild_tensor_v2(<persistent storage>, offset, shape, stride, ...)`."""
    pid = _tuple(_u("storage"), storage_global, _u(key), _u("cpu"), _i(numel), b"N") + b"Q"
    args = _tuple(pid, _i(offset), _tuple(*map(_i, shape)), _tuple(*map(_i, stride)),
                  b"\x89", b"ccollections\nOrderedDict\n)R")
    return b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"


def state_pickle(*entries: tuple[str, bytes]) -> bytes:
    """A protocol-2 pickle of `{name: value}` whose values are raw opcode snippets."""
    body = b"".join(_u(name) + value + b"s" for name, value in entries)
    return b"\x80\x02}" + body + b"."


def legacy_file(state: bytes, keys=("0",), storages: bytes | None = None,
                header: list[bytes] | None = None, keys_pickle: bytes | None = None) -> bytes:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
    header = header or [pickle.dumps(v, protocol=2) for v in (MAGIC, 1001, sys_info)]
    keys_pickle = keys_pickle or pickle.dumps(list(keys), protocol=2)
    if storages is None:
        storages = struct.pack("<q", 6) + np.arange(6, dtype="<f4").tobytes()
    return b"".join(header) + state + keys_pickle + storages


def test_handmade_legacy_file_parses(tmp_path):
    path = tmp_path / "ok.pth"
    path.write_bytes(legacy_file(state_pickle(("w", _tensor("0", 6, (2, 3), (3, 1))),
                                              ("t", _tensor("0", 6, (3, 2), (1, 3))))))
    state = load_lite0_state_dict(path, expected_sha256=None)
    np.testing.assert_array_equal(state["w"], np.arange(6, dtype="float32").reshape(2, 3))
    np.testing.assert_array_equal(state["t"], np.arange(6, dtype="float32").reshape(2, 3).T)


# --- code-running globals -------------------------------------------------------------------------


class _System:
    """Pickles as `os.system(command)`: running it creates the marker file."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Popen:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return subprocess.Popen, (["touch", self.marker],)


class _Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _opcode_payloads(marker) -> dict[str, bytes]:
    touch = f"touch {marker}".encode()
    return {
        # protocol 0 GLOBAL + REDUCE, INST, OBJ; protocol 4 STACK_GLOBAL; protocol 5 framing
        "p0_global_reduce": b"cos\nsystem\n(V" + touch + b"\ntR.",
        "p0_inst": b"(V" + touch + b"\nios\nsystem\n.",
        "p1_obj": b"(cos\nsystem\nX" + struct.pack("<I", len(touch)) + touch + b"o.",
        "p4_stack_global": pickle.dumps(_System(touch.decode()), protocol=4),
        "p5": pickle.dumps(_System(touch.decode()), protocol=5),
        "builtins_exec": pickle.dumps(_Exec(marker), protocol=2),
        "subprocess_popen": pickle.dumps(_Popen(marker), protocol=2),
        # getattr(__import__("os"), "system")(command)
        "builtins_getattr": b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\n" + _u("os")
                            + b"\x85R" + _u("system") + b"\x86R" + _u(touch.decode()) + b"\x85R.",
    }


PAYLOAD_KINDS = list(_opcode_payloads("m"))


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_payloads_are_live_under_plain_pickle(tmp_path, kind):
    """Control: the stock unpickler does run each payload (it only touches a temp file)."""
    marker = tmp_path / "pwned"
    result = pickle.loads(_opcode_payloads(marker)[kind])
    if isinstance(result, subprocess.Popen):
        result.wait(timeout=30)
    assert marker.exists()


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_code_running_pickles_are_refused_and_never_run(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = _opcode_payloads(marker)[kind]
    path = tmp_path / "evil.pth"
    path.write_bytes(legacy_file(payload))  # as the state dict pickle
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global '\w+\.\w+'"):
        load_lite0_state_dict(path, expected_sha256=None)
    path.write_bytes(payload)  # as the very first pickle (where the magic number goes)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        load_lite0_state_dict(path, expected_sha256=None)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["version", "sys_info", "keys", "inside_ordered_dict_args",
                                   "as_storage_type", "as_tensor_value"])
def test_payload_hidden_anywhere_is_refused(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_System(f"touch {marker}"), protocol=2)
    ok_header = [pickle.dumps(v, protocol=2) for v in
                 (MAGIC, 1001, {"protocol_version": 1001, "little_endian": True})]
    inner = evil[2:-1]  # the opcodes that build the object, without PROTO and STOP
    good_state = state_pickle(("w", _tensor("0", 6, (6,), (1,))))
    if where == "version":
        data = legacy_file(good_state, header=[ok_header[0], evil, ok_header[2]])
    elif where == "sys_info":
        data = legacy_file(good_state, header=[ok_header[0], ok_header[1], evil])
    elif where == "keys":
        data = legacy_file(good_state, keys_pickle=evil)
    elif where == "inside_ordered_dict_args":
        value = b"ccollections\nOrderedDict\n" + inner + b"\x85R"
        data = legacy_file(state_pickle(("w", value)))
    elif where == "as_storage_type":
        data = legacy_file(state_pickle(("w", _tensor("0", 6, (6,), (1,),
                                                      storage_global=b"cos\nsystem\n"))))
    else:
        data = legacy_file(state_pickle(("w", inner)))
    path = tmp_path / "evil.pth"
    path.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global 'posix.system'|"
                                                      "refusing to load global 'os.system'"):
        load_lite0_state_dict(path, expected_sha256=None)
    assert not marker.exists()


def test_default_check_runs_before_unpickling(tmp_path, monkeypatch):
    """Without `expected_sha256=None`, a crafted file never reaches the unpickler."""
    path = tmp_path / "evil.pth"
    path.write_bytes(legacy_file(_opcode_payloads(tmp_path / "pwned")["p0_inst"]))

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the file was unpickled before its sha256 was checked")

    monkeypatch.setattr(lite0_weights, "_read_legacy_torch_file", no_unpickling)
    with pytest.raises(ValueError, match=f"sha256 .* does not match the expected {LITE0_SHA256}"):
        load_lite0_state_dict(path)
    with pytest.raises(ValueError, match="does not match"):
        load_lite0_state_dict(path, expected_sha256="0" * 64)
    assert not (tmp_path / "pwned").exists()


# --- structural attacks on tensor records (all must be ValueError / UnpicklingError) -------------

MALFORMED = {
    "rebuild_without_storage": (state_pickle(("w", b"ctorch._utils\n_rebuild_tensor_v2\n"
                                                   + _tuple(_i(1), _i(0), _tuple(_i(1)),
                                                            _tuple(_i(1))) + b"R")),
                                None, pickle.UnpicklingError, "not a storage"),
    "strided_past_the_end": (state_pickle(("w", _tensor("0", 6, (4,), (2,)))), None,
                             ValueError, "points outside its storage"),
    "offset_past_the_end": (state_pickle(("w", _tensor("0", 6, (1,), (1,), offset=6))), None,
                            ValueError, "points outside its storage"),
    "negative_stride": (state_pickle(("w", _tensor("0", 6, (2,), (-1,), offset=3))), None,
                        ValueError, "points outside its storage"),
    "storage_data_truncated": (state_pickle(("w", _tensor("0", 6, (6,), (1,)))),
                               struct.pack("<q", 6) + b"\0" * 10, ValueError, "wrong size"),
    "storage_count_mismatch": (state_pickle(("w", _tensor("0", 6, (6,), (1,)))),
                               struct.pack("<q", 5) + b"\0" * 20, ValueError, "wrong size"),
    "trailing_bytes": (state_pickle(("w", _tensor("0", 6, (6,), (1,)))),
                       struct.pack("<q", 6) + b"\0" * 24 + b"extra", ValueError,
                       "unexpected bytes"),
    "not_a_dict": (b"\x80\x02" + _i(7) + b".", b"", ValueError, "expected a state dict"),
    "unknown_storage_kind": (state_pickle(("w", _tensor("0", 6, (6,), (1,),
                                                        storage_global=b"ctorch\nFooStorage\n"))),
                             None, pickle.UnpicklingError, "refusing to load global 'torch.Foo"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_records_are_refused(tmp_path, case):
    state, storages, error, message = MALFORMED[case]
    path = tmp_path / "bad.pth"
    keys = () if case == "not_a_dict" else ("0",)
    path.write_bytes(legacy_file(state, keys=keys, storages=storages))
    with pytest.raises(error, match=message):
        load_lite0_state_dict(path, expected_sha256=None)


def test_storage_larger_than_the_file_is_a_value_error(tmp_path):
    # The declared size is compared with the bytes left before anything is read (was MemoryError).
    path = tmp_path / "huge.pth"
    state = state_pickle(("w", _tensor("0", 2**60, (3,), (1,))))
    path.write_bytes(legacy_file(state, storages=struct.pack("<q", 2**60) + b"\0" * 12))
    with pytest.raises(ValueError, match="storage '0'"):
        load_lite0_state_dict(path, expected_sha256=None)
