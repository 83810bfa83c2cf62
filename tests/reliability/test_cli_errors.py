"""The command line on bad input (#18 item 10): one line on stderr and exit code 2, never a
traceback; exit code 1 is left for real bugs. Also its quiet start and log-friendly progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from esr_tf.cli import main


def _refused(capsys, argv: list[str], *parts: str) -> str:
    """Runs `esr-tf argv` in-process; asserts exit 2, one stderr line holding `parts`."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"esr-tf {argv[0]}: "), err
    for part in parts:
        assert part in err, (part, err)
    return err


def _write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


CONFIG_FILES = {
    "a_list": ("- epochs: 3\n", "expected a mapping"),
    "not_utf8": (b"data: caf\xe9\n", "not UTF-8"),
    "alias_bomb": ('a: &a ["x", "x", "x", "x", "x", "x", "x", "x"]\n'
                   + "".join(f"{c}: &{c} [" + ", ".join([f"*{p}"] * 8) + "]\n"
                             for p, c in zip("abcdefg", "bcdefgh", strict=True))
                   + "model: {label_set: {names: *h, codes: [A], gains: [1]}}\n",
                   "more than 10,000 values"),
}


@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_bad_config_files_exit_2(tmp_path, capsys, case):
    text, message = CONFIG_FILES[case]
    config = _write(tmp_path / "cfg.yaml", text)
    _refused(capsys, ["train", "--config", config, "--out", str(tmp_path / "out")], message)


# Each must be refused before any data is read: --data names a folder that does not exist, so
# a check made only after loading would report the missing folder instead.
BAD_SETS = {
    "demo_size": ("demo_size=huge", "demo_size"),
    "label_set": ("model.label_set=foo", "model.label_set"),
    "label_set_without_gains": ("model.label_set={names: [a, b], codes: [A, B]}", "gains"),
    "intermediate_dim": ("model.intermediate_dim=-3", "model.intermediate_dim"),
    "dropout": ("model.dropout=5", "model.dropout"),
    "learning_rate": ("learning_rate=.inf", "learning_rate"),
    "epochs_hex": ("epochs=0x10", "epochs"),
    "data_list_in_yaml_flow": ("model.text=[1, 2]", "model.text"),
}


@pytest.mark.parametrize("case", list(BAD_SETS))
def test_bad_settings_exit_2_before_the_data(tmp_path, capsys, case):
    setting, field = BAD_SETS[case]
    argv = ["train", "--data", str(tmp_path / "no_such_shop"), "--out", str(tmp_path / "o"),
            "--set", setting]
    err = _refused(capsys, argv, field)
    assert "no_such_shop" not in err


def test_readme_mixed_precision_example_is_accepted(tmp_path, capsys):
    # `--set mixed_precision=off` was refused; now it parses and the run gets as far as the data.
    argv = ["train", "--data", str(tmp_path / "no_such_shop"), "--out", str(tmp_path / "o"),
            "--set", "mixed_precision=off"]
    _refused(capsys, argv, "no_such_shop")


def test_data_that_is_not_a_folder_exits_2(tmp_path, capsys):
    argv = ["train", "--set", "data=[1,2]", "--out", str(tmp_path / "o")]
    _refused(capsys, argv, "[1,2]")


def test_training_error_exits_2(monkeypatch, tmp_path, capsys):
    import esr_tf.training.trainer as trainer

    seen = {}

    def nan_stop(config, **kwargs):
        seen.update(kwargs)
        raise trainer.TrainingError("loss became NaN at epoch 1, batch 3; lower learning_rate")

    monkeypatch.setattr(trainer, "train", nan_stop)
    _refused(capsys, ["train", "--out", str(tmp_path / "o")], "NaN at epoch 1, batch 3")
    assert seen["verbose"] == 2  # stdout is not a terminal under pytest: one line per epoch


def test_evaluate_split_must_be_known(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--model", "m.keras", "--data", "shop", "--split", "bogus"])
    assert info.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


def test_verify_of_a_corrupt_saved_model_exits_2(tmp_path, capsys):
    export = tmp_path / "esr" / "1"
    (export / "variables").mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(os.urandom(4096))
    _refused(capsys, ["verify", str(export), "--no-cpp"], "saved_model.pb", "not a valid SavedModel")


@pytest.mark.slow
def test_evaluate_without_the_split_exits_2(tiny_trained, tiny_catalogue, tmp_path, capsys):
    shop = tmp_path / "shop"
    shop.mkdir()
    for name in ("products.csv", "examples.csv"):
        text = (tiny_catalogue.root / name).read_text(encoding="utf-8")
        if name == "examples.csv":  # every split becomes train
            text = text.replace(",test", ",train").replace(",valid", ",train")
        (shop / name).write_text(text, encoding="utf-8")
    argv = ["evaluate", "--model", str(tiny_trained.model_path), "--data", str(shop),
            "--out", str(tmp_path / "eval")]
    _refused(capsys, argv, "no examples in split 'test'", "train")


@pytest.mark.slow
def test_export_base_under_a_file_exits_2(tiny_trained, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    argv = ["export", "--model", str(tiny_trained.model_path), "--base",
            str(tmp_path / "a_file" / "models"), "--no-verify"]
    _refused(capsys, argv, "a_file")


@pytest.mark.slow
def test_nan_loss_exits_2_through_the_cli(tiny_catalogue, tmp_path, capsys):
    from esr_tf.models.builder import TINY_MODEL

    config = {"data": str(tiny_catalogue.root), "out_dir": str(tmp_path / "run"), "epochs": 1,
              "learning_rate": 1e30, "warmup_fraction": 0.0, "model": TINY_MODEL}
    path = _write(tmp_path / "nan.json", json.dumps(config))
    _refused(capsys, ["train", "--config", path], "NaN")


def _cli(*argv: str, **env: str) -> subprocess.CompletedProcess:
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("TF_CPP_MIN_LOG_LEVEL", "ESR_TF_VERBOSE")}
    code = "import sys; from esr_tf.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env={**child_env, **env}, timeout=300)


@pytest.mark.slow
def test_tensorflow_start_up_chatter_is_hidden_unless_asked(tmp_path):
    export = tmp_path / "esr" / "1"
    export.mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"\x00not a protobuf" * 100)
    quiet = _cli("verify", str(export), "--no-cpp")
    assert quiet.returncode == 2, quiet.stderr
    assert quiet.stderr.strip().splitlines() == [quiet.stderr.strip()], quiet.stderr
    assert quiet.stderr.startswith("esr-tf verify: ") and quiet.stdout == ""
    loud = _cli("verify", str(export), "--no-cpp", ESR_TF_VERBOSE="1")
    assert loud.returncode == 2 and loud.stderr.strip().endswith(quiet.stderr.strip())
    flag = _cli("verify", str(export), "--no-cpp", "--verbose")
    assert flag.returncode == 2 and flag.stderr.strip().splitlines()[-1] == quiet.stderr.strip()


@pytest.mark.slow
def test_a_truncated_photo_is_refused_without_cpp_log_lines(tmp_path):
    """#33: TF's C++ ERROR line ("jpeg_mem.cc] Premature end of JPEG data") came out beside the
    InvalidArgumentError; quiet mode now hides C++ ERROR lines too (--verbose shows them)."""
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=90)  # cut inside the pixel data
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    code = ("import sys; from esr_tf.quiet import quiet_tensorflow; quiet_tensorflow(); import tensorflow as tf\n"
            "try: tf.io.decode_jpeg(tf.io.read_file(sys.argv[1]))\n"
            "except tf.errors.InvalidArgumentError: print('refused')")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "ESR_TF_VERBOSE")}
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cut.jpg")], capture_output=True,
                           text=True, env=env, timeout=300)
    assert child.stdout.strip() == "refused" and child.stderr.strip() == "", child.stderr


def test_a_jpeg_cut_short_is_refused_before_libjpeg_prints(tmp_path):
    """#33: a JPEG cut inside its headers, or a progressive one cut inside its scans, made libjpeg
    write "Improper call to JPEG library in state 20x" / "Input file read error" to stderr itself
    (past TF's logging) before any signature's InvalidArgumentError; the decoder refuses them first."""
    import io

    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    whole, progressive = io.BytesIO(), io.BytesIO()
    Image.fromarray(noise).save(whole, "JPEG")
    Image.fromarray(noise).save(progressive, "JPEG", progressive=True)
    data, scans = whole.getvalue(), progressive.getvalue()
    sos = data.find(b"\xff\xda")
    cuts = [data[:20], data[: sos - 10], data[: sos + 2], data[:-2], scans[:-300]]
    for i, cut in enumerate([*cuts, data, scans + b"trailing bytes"]):
        (tmp_path / f"{i}.jpg").write_bytes(cut)
    code = ("import sys; from esr_tf.quiet import quiet_tensorflow; quiet_tensorflow(); import tensorflow as tf\n"
            "from esr_tf.preprocessing.image_decoder import ImageDecoder\n"
            "for path in sys.argv[1:]:\n"
            "    try: print(int(ImageDecoder(32)(tf.io.read_file(path)[None])[1][0]))\n"
            "    except tf.errors.InvalidArgumentError as e: print('cut short' in e.message)")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "ESR_TF_VERBOSE")}
    paths = [str(tmp_path / f"{i}.jpg") for i in range(len(cuts) + 2)]
    child = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, env=env, timeout=300)
    assert child.stdout.split() == ["True"] * len(cuts) + ["1", "1"] and child.stderr.strip() == "", child.stderr


def test_chatter_filter_keeps_real_messages():
    from esr_tf.quiet import fit_verbose, is_chatter

    assert is_chatter("E0000 00:00:1796119850.936650   15873 cuda_platform.cc:52] failed call")
    assert is_chatter("WARNING: All log messages before absl::InitializeLog() is called are "
                      "written to STDERR")
    assert not is_chatter("Traceback (most recent call last):")
    assert not is_chatter("esr-tf train: epochs: expected an integer, got True")
    assert fit_verbose() == 2  # pytest captures stdout: not a terminal


def test_demo_passes_overwrite_to_train(monkeypatch):
    """A rerun into another demo's --out is refused suggesting --overwrite: demo must take it."""
    import esr_tf.demo
    from esr_tf import cli

    seen = {}

    def fake_run_demo(out, **kwargs):
        seen.update(kwargs)
        return {"verify_ok": True}

    monkeypatch.setattr(esr_tf.demo, "run_demo", fake_run_demo)
    assert cli.main(["demo", "--out", "x", "--overwrite"]) == 0
    assert seen["overwrite"] is True
    assert cli.main(["demo", "--out", "x"]) == 0
    assert seen["overwrite"] is False
