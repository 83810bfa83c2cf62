"""Type and range checks of configuration values, shared by `TrainConfig` and `ModelConfig`.

Each check returns the value in its canonical type or raises `ConfigError` naming the field.
Booleans are never numbers here (`epochs: true` is refused, not read as 1), numbers must be
finite, and integers are written in decimal (`0x10` is refused, not read as 16).

Example:
>>> check_int("epochs", "12", low=1), check_float("dropout", 0.1, low=0, high=1, high_open=True)
(12, 0.1)
>>> check_int("epochs", True, low=1)
Traceback (most recent call last):
...
esr_tf.validation.ConfigError: epochs: expected an integer, got True
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_STRING = 4096  # characters in one config string (paths, names)
# Keys of a text-backbone dict (`model.text: {...}`): `BertBackbone` arguments plus tokenizer ones.
TEXT_CONFIG_KEYS = frozenset({
    "num_layers", "num_heads", "hidden_dim", "intermediate_dim", "dropout",
    "max_sequence_length", "num_segments", "dtype", "name", "vocabulary_size",
    "intermediate_activation", "vocabulary", "lowercase", "strip_accents",
})  # fmt: skip

_INT_TEXT = re.compile(r"[-+]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class ConfigError(ValueError):
    """A bad training configuration; the message names the field."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: Any, whole: bool) -> int | float | None:
    """`value` as an int (`whole`) or a float, or None when it is not one (a bool never is)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        return (int if whole else float)(text) if (_INT_TEXT if whole else _FLOAT_TEXT).fullmatch(text) else None
    if not whole:
        return float(value) if isinstance(value, int | float) else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """A decimal integer (int, integral float, or its text) within `[low, high]`."""
    number = _number(value, whole=True)
    if number is None:
        raise ConfigError(f"{name}: expected an integer, got {_shown(value)}")
    _check_range(name, number, low, high, False, False)
    return number


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite number (int, float, or decimal text) within the given bounds."""
    number = _number(value, whole=False)
    if number is None:
        raise ConfigError(f"{name}: expected a number, got {_shown(value)}")
    if not math.isfinite(number):
        raise ConfigError(f"{name}: must be a finite number, got {_shown(value)}")
    _check_range(name, number, low, high, low_open, high_open)
    return number


def _check_range(name, number, low, high, low_open, high_open) -> None:
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if not (too_low or too_high):
        return
    if high is None:
        bound = f"must be {'>' if low_open else '>='} {low}"
    elif low is None:
        bound = f"must be {'<' if high_open else '<='} {high}"
    else:
        bound = f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ConfigError(f"{name}: {bound}, got {number!r}")


def check_bool(name: str, value: Any) -> bool:
    """True / False, or their spellings (`true` / `false`, `yes` / `no`, `on` / `off`, 1 / 0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true or false, got {_shown(value)}")


def check_str(name: str, value: Any, *, choices: tuple[str, ...] | None = None,
              empty: bool = False) -> str:
    """A string (never a number or list read as one), non-empty unless `empty`, at most
    `MAX_STRING` characters, one of `choices` when given."""
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {_shown(value)} "
                          f"({type(value).__name__}; quote it in YAML)")
    if choices is not None and value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {choices}")
    if not (value.strip() or empty):
        raise ConfigError(f"{name}: must not be empty")
    if len(value) > MAX_STRING or "\0" in value:
        raise ConfigError(f"{name}: longer than {MAX_STRING} characters or holds a NUL byte")
    return value


def check_mapping(name: str, value: Any, known: set[str] | frozenset[str]) -> dict:
    """A dict whose keys are strings among `known`."""
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping, got {_shown(value)}")
    unknown = sorted(str(k) for k in value if not isinstance(k, str) or k not in known)
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    return value


def check_label_set(name: str, value: Any) -> dict:
    """`{"names": [...], "codes": [...], "gains": [...]}`: 2 to 64 labels, strings, finite
    gains >= 0, each spelling naming one label (checked by `LabelSet`)."""
    from esr_tf.labels import LabelSet

    check_mapping(name, value, {"names", "codes", "gains"})
    missing = [k for k in ("names", "codes", "gains") if k not in value]
    if missing:
        raise ConfigError(f"{name}: missing {', '.join(missing)} (expected names, codes, gains)")
    out: dict[str, list] = {}
    for key in ("names", "codes", "gains"):
        items = value[key]
        if not isinstance(items, list | tuple) or not 2 <= len(items) <= 64:
            raise ConfigError(f"{name}.{key}: expected a list of 2 to 64 items, got {_shown(items)}")
        if key == "gains":
            out[key] = [check_float(f"{name}.gains[{i}]", g, low=0) for i, g in enumerate(items)]
        else:
            out[key] = [check_str(f"{name}.{key}[{i}]", s) for i, s in enumerate(items)]
    try:
        LabelSet.from_config(out)
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None
    return out


def check_text_source(name: str, value: Any) -> str | dict:
    """A text-backbone name / folder, or a dict of known `BertBackbone` arguments (scalars;
    `vocabulary` may also be a list of tokens)."""
    if not isinstance(value, dict):
        return check_str(name, value)
    check_mapping(name, value, TEXT_CONFIG_KEYS)
    for key, item in value.items():
        tokens = key == "vocabulary" and isinstance(item, list)
        if tokens and all(isinstance(t, str) for t in item):
            continue
        if not isinstance(item, str | int | float) or (isinstance(item, str) and len(item) > MAX_STRING):
            raise ConfigError(f"{name}.{key}: expected a number, string or boolean, got {_shown(item)}")
    return value


def load_json_object(text: str | bytes, what: str, error: type[Exception] = ValueError) -> dict:
    """`text` parsed as a JSON object, or `error` naming `what` (a file and line, a response)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what}: invalid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise error(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value
