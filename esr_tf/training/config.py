"""Training configuration as data: a YAML / JSON file, then `--set key=value` overrides.

Every field has a documented default (see `TrainConfig`), so an empty file is a valid config.
Unknown fields and bad values raise `ConfigError` naming the field, e.g. `model.fusion`, before
any data is read: every field is type-checked (a string is a string, `epochs: true` is not 1),
numbers must be finite and in range, and dict fields take known keys only.

YAML is read with YAML 1.2 scalars: only `true` / `false` are booleans (so
`mixed_precision: off` is the string "off"), integers are decimal (`0x10` is refused, `010` is
10). A config file is at most 64 KiB and at most 10,000 values deep-counted, which also stops
YAML alias bombs. A `--set` value for a string field is taken as written (`--set out_dir=123`).

Example:
>>> cfg = parse_config({"epochs": 3, "model": {"fusion": "concat"}}, ["batch_size=16"])
>>> cfg.epochs, cfg.batch_size, cfg.model.fusion
(3, 16, 'concat')
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from esr_tf.constants import FEATURE_STORE_FORMATS, MISSING_IMAGE_POLICIES, STRATEGIES
from esr_tf.logs.weak_labels import LogLabelConfig
from esr_tf.models.config import ModelConfig
from esr_tf.models.precision import PRECISIONS as FEATURE_PASS_PRECISIONS
from esr_tf.validation import ConfigError, check_bool, check_float, check_int, check_str

__all__ = ["ConfigError", "RetrievalConfig", "TrainConfig", "parse_config"]

LOSSES = ("crossentropy", "focal")
CLASS_WEIGHTS = ("none", "balanced")
DEMO_SIZES = ("tiny", "small", "default", "large")
MIXED_PRECISION = ("auto", "on", "off")
FEATURE_STORE_DTYPES = tuple(FEATURE_STORE_FORMATS)
MAX_CONFIG_BYTES = 64 * 1024
MAX_CONFIG_VALUES = 10_000  # values counted through YAML aliases, so alias bombs stop here
MAX_CONFIG_DEPTH = 16


@dataclass
class RetrievalConfig:
    """The two-tower retrieval model `esr-tf train` fits after the relevance model
    (`training.retrieval`; what `esr-tf index` needs for search).

    Attributes:
        epochs: passes over the (query, exact product) pairs; 0 trains no retrieval model.
        batch_size: pairs per batch; the other pairs' products are each query's in-batch negatives.
        negatives_per_positive: copies of each pair, each with another judged non-exact product
            of the same query (substitute, complement, irrelevant) as a hard negative.
        embedding_dim: size of the query and product vectors.
        learning_rate: Adam learning rate.
        temperature: softmax temperature over cosine similarities.
    """

    epochs: int = 30
    batch_size: int = 64
    negatives_per_positive: int = 2
    embedding_dim: int = 128
    learning_rate: float = 3e-3
    temperature: float = 0.05

    def __post_init__(self) -> None:
        self.epochs = check_int("retrieval.epochs", self.epochs, low=0, high=100_000)
        self.batch_size = check_int("retrieval.batch_size", self.batch_size, low=2, high=65_536)
        self.negatives_per_positive = check_int(
            "retrieval.negatives_per_positive", self.negatives_per_positive, low=1, high=64
        )
        self.embedding_dim = check_int("retrieval.embedding_dim", self.embedding_dim, low=2, high=4096)
        self.learning_rate = check_float("retrieval.learning_rate", self.learning_rate, low=0, low_open=True)
        self.temperature = check_float("retrieval.temperature", self.temperature, low=0, low_open=True, high=10)


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
        label_smoothing: for either loss (0.1: without it the fusion overfits real photos, #15).
        class_weights: `"none"` or `"balanced"` (inverse label frequency).
        hide_colour_rate: share of training examples (with a photo and a `color` written in
            the title) copied once more with the colour removed from the title, so that the
            fusion learns to read colour from the photo (`training.augment`; not for text_only).
        cache_features: with both backbones frozen, compute their outputs once and train the
            fusion head on them (about 10x faster on CPU; identical model).
        feature_store: with `cache_features`, a folder where those outputs are written once
            (TFRecord shards of int8 tokens, `training.feature_store`) and streamed from, so that they
            need not fit in RAM; reused by reruns with the same encoders. "" keeps them in RAM
            (fastest for small catalogues).
        feature_store_dtype: `"int8"` (a float16 scale per token, half the bytes) or
            `"float16"` tokens in the store.
        feature_pass_precision: what the frozen encoders compute the cached outputs in:
            `"float32"` (default), `"bfloat16"` (the trained model and its export stay
            float32) or `"auto"` (both timed on this machine first; bfloat16 only where the
            pass would be >= 1.15x faster: on the two CPUs measured, neither AMX nor
            AVX512_BF16 made it pay).
        early_stopping_patience: epochs without `val_loss` improvement before stopping and
            restoring the best epoch (0 = off, the default: the whole budget and its cosine
            schedule run; on catalogues where the photo is learned after a plateau, stopping on
            a noisy `val_loss` ended training inside it, #29).
        mixed_precision: `"auto"` (mixed_float16 on GPU only), `"on"` or `"off"`.
        strategy: `default`, `mirrored` or `multiworker` (reads `TF_CONFIG`).
        deterministic: fixed tf.data order and op determinism (slower).
        model: a `ModelConfig`.
        retrieval: a `RetrievalConfig` (the two-tower model for catalogue search).
        logs: search logs (impressions, `esr_tf.logs.read`) to train and validate on instead of
            the catalogue's judged train / valid pairs; its test split stays for evaluation.
        log_labels: a `LogLabelConfig`: how logged behaviour becomes weak labels and weights.
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
    label_smoothing: float = 0.1
    class_weights: str = "balanced"
    hide_colour_rate: float = 0.5
    cache_features: bool = True
    feature_store: str = ""
    feature_store_dtype: str = "int8"
    feature_pass_precision: str = "float32"
    early_stopping_patience: int = 0
    mixed_precision: str = "auto"
    strategy: str = "default"
    deterministic: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    logs: str = ""
    log_labels: LogLabelConfig = field(default_factory=LogLabelConfig)

    def __post_init__(self) -> None:
        if isinstance(self.mixed_precision, bool):  # YAML 1.1 / JSON spellings of on / off
            self.mixed_precision = "on" if self.mixed_precision else "off"
        for name, choices in (
            ("demo_size", DEMO_SIZES),
            ("missing_images", MISSING_IMAGE_POLICIES),
            ("loss", LOSSES),
            ("class_weights", CLASS_WEIGHTS),
            ("mixed_precision", MIXED_PRECISION),
            ("feature_store_dtype", FEATURE_STORE_DTYPES),
            ("feature_pass_precision", FEATURE_PASS_PRECISIONS),
            ("strategy", STRATEGIES),
        ):
            check_str(name, getattr(self, name), choices=choices)
        self.data = check_str("data", self.data)
        self.out_dir = check_str("out_dir", self.out_dir)
        self.feature_store = check_str("feature_store", self.feature_store, empty=True)
        self.logs = check_str("logs", self.logs, empty=True)
        self.seed = check_int("seed", self.seed, low=0, high=2**32 - 1)
        self.epochs = check_int("epochs", self.epochs, low=1, high=100_000)
        self.batch_size = check_int("batch_size", self.batch_size, low=1, high=65_536)
        self.early_stopping_patience = check_int(
            "early_stopping_patience", self.early_stopping_patience, low=0, high=100_000
        )
        self.learning_rate = check_float("learning_rate", self.learning_rate, low=0, low_open=True)
        self.warmup_fraction = check_float(
            "warmup_fraction", self.warmup_fraction, low=0, high=1, high_open=True
        )
        self.weight_decay = check_float("weight_decay", self.weight_decay, low=0)
        self.focal_gamma = check_float("focal_gamma", self.focal_gamma, low=0, high=100)
        self.label_smoothing = check_float(
            "label_smoothing", self.label_smoothing, low=0, high=1, high_open=True
        )
        self.hide_colour_rate = check_float("hide_colour_rate", self.hide_colour_rate, low=0, high=1)
        self.cache_features = check_bool("cache_features", self.cache_features)
        self.deterministic = check_bool("deterministic", self.deterministic)
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model: expected a ModelConfig, got {type(self.model).__name__}")
        if not isinstance(self.retrieval, RetrievalConfig):
            raise ConfigError(f"retrieval: expected a RetrievalConfig, got {type(self.retrieval).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars: booleans are true / false only, integers
    decimal only, no timestamps; everything else that is not a number is a string. A key given
    twice in one mapping is an error, as YAML 1.2 says (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # an unhashable key: SafeLoader's own error names it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_DROPPED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
            "tag:yaml.org,2002:timestamp"}
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
# Decimal, even with a leading 0 (YAML 1.1 reads 010 as octal 8).
_Yaml12Loader.add_constructor(
    "tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node))
)


def load_yaml(text: str) -> Any:
    """YAML 1.2 scalars (see `_Yaml12Loader`): `load_yaml("a: off")` is `{"a": "off"}`."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass(frozen=True)
class _Override:
    """A `--set` value as typed: parsed by the type of the field it lands in."""

    raw: str


def _plain(tree: Any, where: str = "config") -> Any:
    """A copy made of dicts, lists and scalars, refusing more than `MAX_CONFIG_VALUES` values
    (counted through shared references, so YAML aliases cannot multiply them) or nesting deeper
    than `MAX_CONFIG_DEPTH`."""
    budget = [MAX_CONFIG_VALUES]

    def copy(node: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_CONFIG_DEPTH:
            raise ConfigError(
                f"{where}: more than {MAX_CONFIG_VALUES:,} values or nested deeper than "
                f"{MAX_CONFIG_DEPTH} (YAML aliases expanding?)"
            )
        if isinstance(node, dict):
            return {copy(k, depth + 1): copy(v, depth + 1) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [copy(v, depth + 1) for v in node]
        if isinstance(node, os.PathLike):
            return os.fspath(node)
        if node is None or isinstance(node, str | int | float | bool | _Override):
            return node
        raise ConfigError(f"{where}: unsupported value of type {type(node).__name__}")

    return copy(tree, 0)


def _resolve(value: Any, hint: Any) -> Any:
    """Replaces `_Override`s by values: the text itself for a string field, else parsed YAML."""
    if isinstance(value, dict):
        return {k: _resolve(v, None) for k, v in value.items()}
    if not isinstance(value, _Override):
        return value
    if hint is str:
        return value.raw
    try:
        parsed = load_yaml(value.raw)  # "3" -> 3, "true" -> True, "[1, 2]" -> list
    except yaml.YAMLError:
        return value.raw
    if str in typing.get_args(hint):  # str | dict, str | None: text as written, else the value
        return value.raw if isinstance(parsed, str) else _plain(parsed)
    return value.raw if parsed is None else _plain(parsed)


def _build(cls, values: Any, prefix: str = ""):
    if not isinstance(values, dict):
        raise ConfigError(
            f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(values).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{name}: unknown field (known: {', '.join(sorted(fields))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            section = _resolve(value, dict) if isinstance(value, _Override) else value
            kwargs[key] = _build(hint, section, f"{name}.")
        else:
            kwargs[key] = _resolve(value, hint)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        message = str(error)
        raise ConfigError(message if message.startswith(prefix) else f"{prefix}{message}") from None


def _set(tree: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    if not all(k.strip() for k in keys):
        raise ConfigError(f"override {dotted!r}: empty field name")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
    node[keys[-1]] = _Override(raw)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose keys are unique (`json` keeps the last of a repeated key silently)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise json.JSONDecodeError(f"duplicate key {key!r}", "", 0)
        out[key] = value
    return out


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        tree = json.loads(text, object_pairs_hook=_unique_keys) if kind == "JSON" else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: not valid {kind}: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    if tree is not None and not isinstance(tree, dict):
        raise ConfigError(
            f"{path}: expected a mapping of fields (e.g. 'epochs: 3'), got {type(tree).__name__}"
        )
    return _plain(tree or {}, str(path))


def parse_config(
    source: str | Path | dict | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Builds a `TrainConfig` from a YAML / JSON file or dict plus `key=value` overrides."""
    if source is None:
        tree: Any = {}
    elif isinstance(source, dict):
        tree = _plain(source)
    else:
        tree = _read_file(Path(source))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. model.fusion=concat")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), raw.strip())
    return _build(TrainConfig, tree)
