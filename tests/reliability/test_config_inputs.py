"""Hostile and mistaken training configs (#18 items 8-10): one `ConfigError` naming the field,
raised by `parse_config` (before any data is read), never a silent coercion or a traceback."""

from __future__ import annotations

import json
import math
import time

import pytest

from esr_tf.training.config import MAX_CONFIG_BYTES, ConfigError, TrainConfig, parse_config

# (overrides, the field the message must name) for values that were silently accepted or
# crashed later: after the data loaded, inside to_dict(), or in the middle of training.
BAD_OVERRIDES = {
    "learning_rate_inf": (["learning_rate=.inf"], "learning_rate"),
    "learning_rate_inf_word": (["learning_rate=inf"], "learning_rate"),
    "learning_rate_zero": (["learning_rate=0"], "learning_rate"),
    "weight_decay_negative": (["weight_decay=-5"], "weight_decay"),
    "label_smoothing_7": (["label_smoothing=7"], "label_smoothing"),
    "focal_gamma_nan": (["focal_gamma=.nan"], "focal_gamma"),
    "warmup_nan": (["warmup_fraction=.nan"], "warmup_fraction"),
    "patience_negative": (["early_stopping_patience=-1"], "early_stopping_patience"),
    "epochs_true": (["epochs=true"], "epochs"),
    "epochs_hex": (["epochs=0x10"], "epochs"),
    "epochs_underscore": (["epochs=1_0"], "epochs"),
    "epochs_fraction": (["epochs=2.5"], "epochs"),
    "batch_size_list": (["batch_size=[1, 2]"], "batch_size"),
    "seed_negative": (["seed=-1"], "seed"),
    "demo_size_huge": (["demo_size=huge"], "demo_size"),
    "mixed_precision_maybe": (["mixed_precision=maybe"], "mixed_precision"),
    "cache_features_2": (["cache_features=2"], "cache_features"),
    "data_empty": (["data="], "data"),
    "image_size_huge": (["model.image_size=100000"], "model.image_size"),
    "image_size_tiny": (["model.image_size=4"], "model.image_size"),
    "intermediate_negative": (["model.intermediate_dim=-3"], "model.intermediate_dim"),
    "dropout_5": (["model.dropout=5"], "model.dropout"),
    "text_number": (["model.text=5"], "model.text"),
    "text_unknown_key": (["model.text={num_layers: 1, colour: red}"], "model.text"),
    "text_weights_other": (["model.text_weights=imagenet"], "model.text_weights"),
    "freeze_text_word": (["model.freeze_text=maybe"], "model.freeze_text"),
    "label_set_string": (["model.label_set=foo"], "model.label_set"),
    "label_set_no_gains": (["model.label_set={names: [a, b], codes: [A, B]}"], "model.label_set"),
    "label_set_nan_gain": (["model.label_set={names: [a, b], codes: [A, B], gains: [1, .nan]}"],
                           "model.label_set.gains"),
    "label_set_extra_key": (["model.label_set={names: [a, b], codes: [A, B], gains: [1, 0], x: 1}"],
                            "model.label_set"),
    "fusion_section": (["model.fusion.kind=concat"], "model.fusion"),
    "empty_key": (["model..fusion=concat"], "override 'model..fusion'"),
}


@pytest.mark.parametrize("case", list(BAD_OVERRIDES))
def test_bad_override_names_the_field(case):
    overrides, field = BAD_OVERRIDES[case]
    with pytest.raises(ConfigError) as info:
        parse_config(None, overrides)
    assert str(info.value).startswith(field), str(info.value)


BAD_TREES = {
    "epochs_bool": ({"epochs": True}, "epochs"),
    "out_dir_number": ({"out_dir": 123}, "out_dir"),
    "data_list": ({"data": [1, 2]}, "data"),
    "learning_rate_inf": ({"learning_rate": math.inf}, "learning_rate"),
    "model_list": ({"model": [1]}, "model"),
    "text_dict_nested": ({"model": {"text": {"num_layers": {"a": 1}}}}, "model.text.num_layers"),
    "label_names_numbers": ({"model": {"label_set": {"names": [1, 2], "codes": ["A", "B"],
                                                     "gains": [1, 0]}}}, "model.label_set.names"),
    "object_value": ({"data": object()}, "config"),
}


@pytest.mark.parametrize("case", list(BAD_TREES))
def test_bad_values_in_a_mapping_name_the_field(case):
    tree, field = BAD_TREES[case]
    with pytest.raises(ConfigError) as info:
        parse_config(tree)
    assert str(info.value).startswith(field), str(info.value)


def test_overrides_keep_strings_as_written():
    cfg = parse_config(None, ["out_dir=123", "data=007", "mixed_precision=off", "epochs=010"])
    assert (cfg.out_dir, cfg.data, cfg.mixed_precision, cfg.epochs) == ("123", "007", "off", 10)
    cfg = parse_config(None, ["model.image_weights=null", "model.freeze_text=off",
                              "learning_rate=1e-4"])
    assert cfg.model.image_weights is None and cfg.model.freeze_text is False
    assert cfg.learning_rate == 1e-4


@pytest.mark.parametrize("text,expected", [
    ("mixed_precision: off\n", "off"),
    ("mixed_precision: on\n", "on"),
    ("mixed_precision: auto\n", "auto"),
    ("mixed_precision: false\n", "off"),
    ("mixed_precision: true\n", "on"),
])
def test_mixed_precision_on_off_in_yaml(tmp_path, text, expected):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    assert parse_config(path).mixed_precision == expected
    assert parse_config(None, [f"mixed_precision={expected}"]).mixed_precision == expected
    assert parse_config({"mixed_precision": expected == "on"} if expected != "auto"
                        else {}).mixed_precision == expected


def test_yaml_numbers_are_decimal(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("epochs: 010\nlearning_rate: 1e-3\nmodel:\n  freeze_image: no\n")
    cfg = parse_config(path)  # YAML 1.1 read 010 as octal 8 and 1e-3 as a string
    assert (cfg.epochs, cfg.learning_rate) == (10, 1e-3)
    assert cfg.model.freeze_image is False  # "no": a bool field takes it as false
    path.write_text("epochs: 0x10\n")
    with pytest.raises(ConfigError, match="^epochs: expected an integer, got '0x10'"):
        parse_config(path)


def _alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    # Aliases under a dict-typed field: under 1 KB that expands to 5 * 9**9 strings (this kind
    # of file trained and wrote a 184 MB config.json, or ran past 4 GB in to_dict()).
    path = tmp_path / "bomb.yaml"
    names = ", ".join(["*a8"] * 9)
    path.write_text(_alias_bomb(9) + f"\nmodel:\n  label_set: {{names: [{names}], codes: [A, B], "
                    "gains: [1, 0]}\n")
    assert len(path.read_bytes()) < 1000
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="more than 10,000 values"):
        parse_config(path)
    assert time.perf_counter() - start < 5


def test_alias_bomb_in_a_known_field_only(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("x: &x [" + ", ".join(["a"] * 50) + "]\ny: &y [" + ", ".join(["*x"] * 50)
                    + "]\nmodel:\n  text: {vocabulary: [" + ", ".join(["*y"] * 50) + "]}\n")
    with pytest.raises(ConfigError, match="more than 10,000 values"):
        parse_config(path)


def test_config_file_size_is_capped(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1) + "epochs: 3\n")
    with pytest.raises(ConfigError, match="larger than 64 KiB"):
        parse_config(path)


def test_deep_nesting_is_refused(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"model": {"text": ' + "[" * 5000 + "]" * 5000 + "}}")
    with pytest.raises(ConfigError, match="deep"):
        parse_config(path)


@pytest.mark.parametrize("text,message", [
    ("- epochs: 3\n- batch_size: 8\n", "expected a mapping of fields"),
    ("just words\n", "expected a mapping of fields"),
    ("epochs: [3\n", "not valid YAML"),
])
def test_config_that_is_not_a_mapping(tmp_path, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse_config(path)
    with pytest.raises(ConfigError, match=message):
        parse_config(path, ["epochs=2"])  # overrides on top of a list used to AttributeError


@pytest.mark.parametrize("name,text,key", [
    ("cfg.yaml", "model:\n  product_text: {title: 16, title: 8}\n", "title"),
    ("cfg.yaml", "epochs: 3\nbatch_size: 8\nepochs: 4\n", "epochs"),
    ("cfg.json", '{"epochs": 3, "epochs": 4}', "epochs"),
])
def test_a_key_given_twice_is_refused_naming_it(tmp_path, name, text, key):
    """#33: YAML 1.2 (and JSON as a config) keys are unique; PyYAML / json kept the last silently."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"duplicate key '{key}'"):
        parse_config(path)


def test_non_utf8_config_is_named(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"data: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: not UTF-8 text \(byte 9\)"):
        parse_config(path)


def test_json_nan_is_refused(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"learning_rate": float("nan")}))  # json writes NaN
    with pytest.raises(ConfigError, match="^learning_rate: must be a finite number"):
        parse_config(path)


def test_to_dict_stays_small_and_json():
    cfg = parse_config(None, ["model.label_set={names: [a, b], codes: [A, B], gains: [1, 0]}"])
    assert len(json.dumps(cfg.to_dict())) < 4096
    assert cfg.model.label_set == {"names": ["a", "b"], "codes": ["A", "B"], "gains": [1.0, 0.0]}


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match="^epochs: expected an integer"):
        TrainConfig(epochs="many")
    with pytest.raises(ConfigError, match="^weight_decay: must be >= 0"):
        TrainConfig(weight_decay=-1)
    assert TrainConfig(mixed_precision=False).mixed_precision == "off"
