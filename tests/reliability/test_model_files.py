"""Broken model files given to `load_model` / `esr-tf evaluate|export` (issue #18, item 11).

Each is refused with a `ModelFileError` (a `ValueError`; exit code 2 from the CLI) that names the
file and says what it is and why it is refused; only a missing path is `FileNotFoundError`.
Nothing is unpickled: a pickle whose loading would run code leaves no trace.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest

from esr_tf.models.builder import ModelFileError, load_model


class _Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _rezip(source, target, change) -> None:
    """Copies the `.keras` zip `source` to `target`, passing each member's bytes to `change`."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, change(info.filename, src.read(info.filename)))


def _bad_files(tmp_path, model_path) -> dict[str, tuple[object, str]]:
    """name -> (path, expected message part)."""
    data = model_path.read_bytes()
    files = {
        "truncated": (data[: len(data) // 2], "truncated or damaged .keras archive"),
        "empty": (b"", "is empty (0 bytes)"),
        "pickle": (pickle.dumps(_Payload(tmp_path / "pwned")), "like a Python pickle"),
        "text": (b"hello, not a model\n", "is not a .keras archive (a zip file)"),
    }
    paths = {}
    for name, (content, expected) in files.items():
        path = tmp_path / f"{name}.keras"
        path.write_bytes(content)
        paths[name] = (path, expected)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside model.weights.h5, stored uncompressed
    (tmp_path / "flipped.keras").write_bytes(bytes(flipped))
    paths["flipped"] = (tmp_path / "flipped.keras", "fails its CRC check")
    half = tmp_path / "half_weights.keras"
    _rezip(model_path, half, lambda name, b: b[: len(b) // 2] if name.endswith(".h5") else b)
    paths["half_weights"] = (half, "Keras cannot load this model")
    other_zip = tmp_path / "other.keras"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "hi")
    paths["other_zip"] = (other_zip, "not a Keras model archive")
    (tmp_path / "folder.keras").mkdir()
    paths["folder"] = (tmp_path / "folder.keras", "is a folder")
    return paths


@pytest.fixture(scope="module")
def bad_files(tiny_trained, tmp_path_factory):
    return _bad_files(tmp_path_factory.mktemp("bad_models"), tiny_trained.model_path)


@pytest.mark.parametrize("name", ["truncated", "empty", "pickle", "text", "flipped", "half_weights",
                                  "other_zip", "folder"])
def test_broken_model_file_is_refused_saying_why(bad_files, name):
    path, expected = bad_files[name]
    with pytest.raises(ModelFileError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and expected in message, message
    assert "File not found" not in message and "\n" not in message


def test_a_pickle_is_never_unpickled(bad_files):
    path, _ = bad_files["pickle"]
    with pytest.raises(ModelFileError):
        load_model(path)
    assert not (path.parent / "pwned").exists()


def test_plain_keras_model_is_refused_naming_its_class(tmp_path):
    import keras

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.save(tmp_path / "plain.keras")
    with pytest.raises(ModelFileError, match=r"class 'Functional', not an esr_tf RelevanceModel"):
        load_model(tmp_path / "plain.keras")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file at"):
        load_model(tmp_path / "nope.keras")


@pytest.mark.parametrize("command", ["evaluate", "export"])
@pytest.mark.parametrize("name", ["truncated", "pickle", "half_weights"])
def test_cli_exits_2_with_one_line(bad_files, tiny_catalogue, tmp_path, capsys, command, name):
    from esr_tf.cli import main

    path, expected = bad_files[name]
    extra = (["--data", str(tiny_catalogue.root), "--out", str(tmp_path / "eval")] if command == "evaluate"
             else ["--base", str(tmp_path / "serving"), "--no-verify"])
    assert main([command, "--model", str(path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err, err
