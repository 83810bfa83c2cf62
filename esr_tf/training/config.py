"""Training configuration as data: a YAML / JSON file, then `--set key=value` overrides.

Every field has a documented default (see `TrainConfig`), so an empty file is a valid config.
Unknown fields and bad values raise `ConfigError` naming the field, e.g. `model.fusion`.

Example:
>>> cfg = parse_config({"epochs": 3, "model": {"fusion": "concat"}}, ["batch_size=16"])
>>> cfg.epochs, cfg.batch_size, cfg.model.fusion
(3, 16, 'concat')
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from esr_tf.models.builder import ModelConfig

STRATEGIES = ("default", "mirrored", "multiworker")
LOSSES = ("crossentropy", "focal")
CLASS_WEIGHTS = ("none", "balanced")


class ConfigError(ValueError):
    """A bad training configuration; the message names the field."""


@dataclass
class TrainConfig:
    """What `esr-tf train` / `esr_tf.training.train` does. Defaults reproduce `esr-tf demo`.

    Attributes:
        data: a catalogue folder (CSV or JSONL), or `"demo"` to generate the demo shop.
        demo_size: demo-shop size when `data` is `"demo"` (`tiny`, `small`, `default`, `large`).
        missing_images: `"error"` or `"no_image"` (score such products from their text).
        out_dir: where the model, logs, checkpoints and metrics go.
        seed: seeds Python, NumPy, TF and the data order.
        epochs, batch_size: the training budget.
        learning_rate: peak AdamW learning rate (after linear warm-up, then cosine decay).
        warmup_fraction: share of steps spent warming up.
        weight_decay: AdamW decoupled weight decay.
        loss: `"crossentropy"` or `"focal"` (for a skewed ESCI label mix).
        focal_gamma: focusing parameter of the focal loss.
        label_smoothing: for either loss.
        class_weights: `"none"` or `"balanced"` (inverse label frequency).
        hide_colour_rate: share of training examples (with a photo and a `color` written in
            the title) copied once more with the colour removed from the title, so that the
            fusion learns to read colour from the photo (`training.augment`; not for text_only).
        cache_features: with both backbones frozen, compute their outputs once and train the
            fusion head on them (about 10x faster on CPU; identical model).
        early_stopping_patience: epochs without `val_loss` improvement before stopping (0 = off).
        mixed_precision: `"auto"` (mixed_float16 on GPU only), `"on"` or `"off"`.
        strategy: `default`, `mirrored` or `multiworker` (reads `TF_CONFIG`).
        deterministic: fixed tf.data order and op determinism (slower).
        model: a `ModelConfig`.
    """

    data: str = "demo"
    demo_size: str = "default"
    missing_images: str = "no_image"
    out_dir: str = "esr_out"
    seed: int = 0
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    loss: str = "crossentropy"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    class_weights: str = "balanced"
    hide_colour_rate: float = 0.5
    cache_features: bool = True
    early_stopping_patience: int = 4
    mixed_precision: str = "auto"
    strategy: str = "default"
    deterministic: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("class_weights", self.class_weights, CLASS_WEIGHTS)
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("mixed_precision", self.mixed_precision, ("auto", "on", "off"))
        _check_choice("missing_images", self.missing_images, ("error", "no_image"))
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(
                    f"{name}: must be a positive integer, got {getattr(self, name)!r}"
                )
        if not float(self.learning_rate) > 0:
            raise ConfigError(f"learning_rate: must be > 0, got {self.learning_rate!r}")
        if not 0.0 <= float(self.hide_colour_rate) <= 1.0:
            raise ConfigError(f"hide_colour_rate: must be in [0, 1], got {self.hide_colour_rate!r}")
        if not 0.0 <= float(self.warmup_fraction) < 1.0:
            raise ConfigError(f"warmup_fraction: must be in [0, 1), got {self.warmup_fraction!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {choices}")


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Converts a YAML / CLI value to the type of the field's default, naming the field on error."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes", "on"):
            return True
        if str(value).lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    return value


def _build(cls, values: dict[str, Any], prefix: str = ""):
    if not isinstance(values, dict):
        raise ConfigError(
            f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(values).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    defaults = cls()
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{name}: unknown field (known: {', '.join(sorted(fields))})")
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, f"{name}.")
        elif isinstance(default, str | dict) or default is None:
            kwargs[key] = value
        else:
            kwargs[key] = _coerce(name, value, default)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as error:
        message = str(error)
        raise ConfigError(message if message.startswith(prefix) else f"{prefix}{message}") from None


def _set(tree: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
    try:
        value = yaml.safe_load(raw)  # "3" -> 3, "true" -> True, "[1, 2]" -> list
    except yaml.YAMLError:
        value = raw
    node[keys[-1]] = raw if value is None else value


def parse_config(
    source: str | Path | dict | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Builds a `TrainConfig` from a YAML / JSON file or dict plus `key=value` overrides."""
    if source is None:
        tree: dict[str, Any] = {}
    elif isinstance(source, dict):
        tree = json.loads(json.dumps(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            tree = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)) or {}
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise ConfigError(
                f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}"
            ) from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. model.fusion=concat")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), raw.strip())
    return _build(TrainConfig, tree)
