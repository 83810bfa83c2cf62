"""`esr-tf bench --suite precision`: the frozen-encoder feature pass in float32 against bfloat16 (#17).

On a catalogue's pairs (the small demo shop by default, or `--data`), side by side in one
process, the model's own float32 encoders and their bfloat16 copies (`FrozenEncoders`):

- speed: ms per pair of the text pass (`encode_text_rows`, batches cut to their longest pair)
  and ms per photo of the image encoder, the two precisions taking turns round by round;
- agreement: relative error of each real token's BERT output and of each photo's feature map
  (`|bf16 - f32| / |f32|` per vector: mean and 99th percentile), and of the head's outputs on
  both sets of features: the share of pairs given the same label, the largest probability
  difference. The head is the model's: a trained one with `--model`, else a random init (its
  label agreement then says little).

`auto_choice`: what `feature_pass_precision: auto` picks on this machine for these pairs and
photos (its own timing, `FrozenEncoders.pass_seconds`, with the estimated pass seconds); the
CPU's bfloat16 flags are in the result. Results go to `<out>/precision.json` and `precision.md`.

Example:
>>> result = run_precision_bench("esr_bench", quick=True, model_overrides=TINY_MODEL)  # doctest: +SKIP
>>> sorted(result["speed"])  # doctest: +SKIP
['bfloat16', 'float32']
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.bench.timing import load_average, machine_info
from esr_tf.models.precision import cpu_flags, faster_precision

PRECISIONS = ("float32", "bfloat16")
BATCH = 32


def _relative_error(a: np.ndarray, b: np.ndarray) -> dict:
    """Per vector (last axis) `|b - a| / |a|` over vectors of `a` that are not zero."""
    norm = np.linalg.norm(a, axis=-1)
    err = (np.linalg.norm(b - a, axis=-1) / np.maximum(norm, 1e-12))[norm > 0]
    return {"mean": float(err.mean()), "p99": float(np.quantile(err, 0.99)), "vectors": int(err.size)}


def _photo_batch(model, paths: list[str]) -> tf.Tensor:
    """Up to `BATCH` distinct photos decoded as the model decodes them (noise where there are none)."""
    decoder = model.preprocessor.image_decoder
    if not paths:
        shape = (BATCH, *model.image_encoder.input.shape[1:])
        return tf.constant(np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32))
    return tf.stack([decoder(tf.io.read_file(p))[0] for p in paths[:BATCH]])


def _speed(model, encoders: dict, ids: dict, photos: tf.Tensor, rounds: int) -> dict:
    from esr_tf.training.encoder_pass import encode_text_rows, traced_text_encoder

    text = {p: traced_text_encoder(e.encode_text) for p, e in encoders.items()}
    image = {p: tf.function(lambda x, m=e.image: m(x, training=False), autograph=False) for p, e in encoders.items()}
    times = {p: {"text": [], "image": []} for p in encoders}
    for p in encoders:  # trace both first
        encode_text_rows(None, {k: v[:BATCH] for k, v in ids.items()}, BATCH, traced=text[p])
        image[p](photos).numpy()
    for _ in range(rounds):
        for p in encoders:
            start = time.perf_counter()
            encode_text_rows(None, ids, BATCH, traced=text[p])
            times[p]["text"].append(time.perf_counter() - start)
            start = time.perf_counter()
            image[p](photos).numpy()
            times[p]["image"].append(time.perf_counter() - start)
    pairs = len(ids["token_ids"])
    return {p: {"text_ms_per_pair": 1e3 * float(np.median(t["text"])) / pairs,
                "image_ms_per_photo": 1e3 * float(np.median(t["image"])) / int(photos.shape[0])}
            for p, t in times.items()}


def _agreement(model, features: dict) -> dict:
    f32, b16 = features["float32"], features["bfloat16"]
    mask = f32.text_mask.astype(bool)
    head = model.head_model()
    probs = {p: head.predict(f.dataset(batch_size=64, with_labels=False), verbose=0)["probabilities"]
             for p, f in features.items()}
    return {
        "token": _relative_error(f32.sequence_output[mask], b16.sequence_output[mask]),
        "photo": _relative_error(f32.feature_maps, b16.feature_maps),
        "same_label": float(np.mean(probs["float32"].argmax(-1) == probs["bfloat16"].argmax(-1))),
        "max_probability_difference": float(np.abs(probs["float32"] - probs["bfloat16"]).max()),
    }


def run_precision_bench(out_dir: str | Path, quick: bool = False, *, data: str | Path | None = None,
                        model: str | Path | None = None, model_overrides: Mapping | None = None) -> dict:
    """Runs the precision suite; writes and returns `precision.json` (see the module docstring)."""
    from esr_tf.data import generate_demo_shop, load_catalogue
    from esr_tf.models.builder import ModelConfig, build_relevance_model, load_model
    from esr_tf.training.encoder_pass import FrozenEncoders, tokenize_columns
    from esr_tf.training.feature_cache import BackboneFeatures

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    relevance = load_model(model) if model else build_relevance_model(ModelConfig(**dict(model_overrides or {})))
    with tempfile.TemporaryDirectory() as tmp:
        folder = data or generate_demo_shop(Path(tmp) / "shop", seed=0, size="tiny" if quick else "small")
        columns = load_catalogue(folder, missing_images="no_image").columns()
        pairs = min(128 if quick else 1024, len(columns["query"]))
        columns = {k: np.asarray(v)[:pairs] for k, v in columns.items()}
        load = {"before": load_average()}
        encoders = {p: FrozenEncoders.of(relevance, p) for p in PRECISIONS}
        ids = tokenize_columns(relevance.preprocessor, columns, 256)
        paths = sorted({str(p) for p in columns["image"] if p})
        speed = _speed(relevance, encoders, ids, _photo_batch(relevance, paths), rounds=2 if quick else 5)
        length = relevance.preprocessor.sequence_length
        auto = {p: e.pass_seconds(length, pairs, len(paths) if relevance.reads_photos else 0)
                for p, e in encoders.items()}
        features = {p: BackboneFeatures.compute(relevance, columns, encoders=e) for p, e in encoders.items()}
        agreement = _agreement(relevance, features)
    load["after"] = load_average()
    flags = cpu_flags()
    result = {"speed": speed, "agreement": agreement, "pairs": pairs, "photos": len(paths), "batch": BATCH,
              "bfloat16_over_float32": {k: speed["bfloat16"][k] / speed["float32"][k] for k in speed["float32"]},
              "auto_choice": {"precision": faster_precision(auto), "estimated_pass_seconds": auto},
              "cpu_bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
              "data": str(data) if data else "demo shop", "model": str(model) if model else "untrained",
              "load_average": load, "machine": machine_info(), "quick": quick}
    (out / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "precision.md").write_text(precision_markdown(result))
    return result


def precision_markdown(result: dict) -> str:
    s, a = result["speed"], result["agreement"]
    lines = ["| feature pass | float32 | bfloat16 | bfloat16 / float32 |", "|---|---|---|---|"]
    for key, name in (("text_ms_per_pair", "text, ms / pair"), ("image_ms_per_photo", "image, ms / photo")):
        lines.append(f"| {name} | {s['float32'][key]:.2f} | {s['bfloat16'][key]:.2f} | "
                     f"{result['bfloat16_over_float32'][key]:.2f} |")
    lines.append(f"\nAgreement of bfloat16 with float32: token error {100 * a['token']['mean']:.2f} % mean "
                 f"({100 * a['token']['p99']:.2f} % p99), photo feature maps {100 * a['photo']['mean']:.2f} % "
                 f"mean; head ({result['model']}): {100 * a['same_label']:.1f} % same labels, largest "
                 f"probability difference {a['max_probability_difference']:.3f}.")
    auto = result["auto_choice"]
    lines.append(f"\n`feature_pass_precision: auto` picks {auto['precision']} here (pass estimated at "
                 + ", ".join(f"{v:.1f} s in {k}" for k, v in auto["estimated_pass_seconds"].items()) + ").")
    lines.append(f"\n{result['pairs']} pairs, {result['photos']} photos of {result['data']}; CPU bfloat16 flags: "
                 f"{', '.join(result['cpu_bf16_flags']) or 'none'}; load average before / after: "
                 f"{result['load_average']['before']} / {result['load_average']['after']}.")
    return "\n".join(lines) + "\n"
