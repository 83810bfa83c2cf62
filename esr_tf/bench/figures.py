"""The measurements behind `run_benchmarks`, one function per area; each returns plain numbers.

Here: FLOPs, the input pipeline, training speed and the side experiments. The serving ones
(exported SavedModel, re-ranking, C++ client) are in `esr_tf.bench.serving`, re-exported here.

Example:
>>> branches = ("text_encoder", "image_encoder", "image_projector", "fusion_head")
>>> training_flops([{"branch": b, "flops": 10} for b in branches])["full_frozen"]
80.0
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from esr_tf.bench.serving import (  # noqa: F401  (serving measurements: re-exported)
    graph_preprocess,
    measure_cpp,
    measure_rerank,
    measure_serving,
    product_sample,
    raw_examples,
    tf_inputs,
)
from esr_tf.bench.timing import StepTimer, forward_ms_per_example, text_inputs
from esr_tf.preprocessing.pipeline import make_dataset, raw_dataset
from esr_tf.training.feature_cache import BackboneFeatures, length_multiple_for, targets
from esr_tf.training.losses import RelevanceLoss

FLOPS_FORMULA = (
    "FLOPs per training example = 3 x forward FLOPs of each trained branch (forward + backward) "
    "+ 1 x forward FLOPs of each frozen branch that runs in the step; forward FLOPs per branch "
    "from esr_tf.models.summary.branch_summary (batch 1, a multiply-add = 2 FLOPs). "
    "head_cached = 3 (image_projector + fusion_head); full_frozen = text_encoder + image_encoder "
    "+ 3 (image_projector + fusion_head); full_text_trainable = 3 text_encoder + image_encoder "
    "+ 3 (image_projector + fusion_head)."
)


def subset(columns: Mapping[str, np.ndarray], n: int | None) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[:n] for k, v in columns.items()}


def training_flops(rows: list[dict]) -> dict[str, float]:
    """FLOPs per training example for the three measured training modes (see FLOPS_FORMULA)."""
    f = {r["branch"]: float(r["flops"]) for r in rows}
    head = 3 * (f["image_projector"] + f["fusion_head"])
    return {
        "head_cached": head,
        "full_frozen": f["text_encoder"] + f["image_encoder"] + head,
        "full_text_trainable": 3 * f["text_encoder"] + f["image_encoder"] + head,
        "forward_per_branch": {k: v for k, v in f.items() if k != "total"},
    }


# === Input pipeline ===


def _drain(ds: tf.data.Dataset) -> tuple[int, float]:
    """(examples, seconds) for one full pass over a batched `(features, label)` dataset."""
    start, n = time.perf_counter(), 0
    for _, y in ds:
        n += int(y.shape[0])
    return n, time.perf_counter() - start


def serial_pipeline(columns, preprocessor, *, batch_size: int) -> tf.data.Dataset:
    """The keras.io multimodal-example style: read and preprocess one example per `map` call,
    serially (no `num_parallel_calls`), no cache, then batch."""
    with warnings.catch_warnings():  # raw_dataset passes `deterministic` to its serial map too
        warnings.filterwarnings("ignore", message="The `deterministic` argument has no effect")
        ds = raw_dataset(columns, num_parallel_calls=None, deterministic=True)
    return ds.map(lambda x, y: (preprocessor(x), y)).batch(batch_size).prefetch(1)


def measure_pipeline(
    preprocessor, columns, *, batch_size: int, serial_columns=None, uncached: bool = False
) -> dict:
    """Examples/s of `make_dataset` parallel + cached (2nd pass) vs a serial, uncached map."""
    parallel = make_dataset(columns, preprocessor, batch_size=batch_size, cache=True)
    n, fill_s = _drain(parallel)  # the 1st pass reads the files into the cache
    n, par_s = _drain(parallel)
    serial = serial_pipeline(
        columns if serial_columns is None else serial_columns, preprocessor, batch_size=batch_size
    )
    ns, ser_s = _drain(serial)
    out = {
        "examples": n,
        "parallel_cached_ex_s": n / par_s,
        "parallel_first_pass_ex_s": n / fill_s,
        "serial_examples": ns,
        "serial_ex_s": ns / ser_s,
    }
    if uncached:
        nu, unc_s = _drain(make_dataset(columns, preprocessor, batch_size=batch_size))
        out["parallel_uncached_ex_s"] = nu / unc_s
    return out


# === Training ===


def compile_for_training(trainee, model, *, jit_compile: bool | str = "auto") -> None:
    """As `esr_tf.training.trainer.train` compiles (AdamW, RelevanceLoss, accuracy)."""
    trainee.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.01),
        loss={"probabilities": RelevanceLoss(model.label_set.num_labels)},
        metrics={"probabilities": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]},
        jit_compile=jit_compile,
    )


def _timed_fit(trainee, ds, *, batch_size: int, warmup: int, steps: int) -> dict:
    timer = StepTimer()
    with warnings.catch_warnings():
        # BERT's unused pooler has no gradient when the text backbone trains: expected here.
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        trainee.fit(
            ds,
            epochs=1,
            steps_per_epoch=warmup + steps,
            callbacks=[timer],
            shuffle=False,
            verbose=0,
        )
    return {
        "ex_s": timer.steps_per_second(skip=warmup) * batch_size,
        "first_step_s": timer.first_step_seconds(),
        "timed_steps": steps,
    }


def compute_features(model, columns) -> tuple[BackboneFeatures, dict]:
    """`BackboneFeatures.compute` (frozen backbones run once), timed per example."""
    start = time.perf_counter()
    feats = BackboneFeatures.compute(model, columns)
    seconds = time.perf_counter() - start
    n = len(feats)
    return feats, {
        "examples": n,
        "unique_images": int(len(feats.feature_maps)),
        "ms_per_example": 1e3 * seconds / n,
    }


def measure_head_training(
    model, feats: BackboneFeatures, *, batch_size: int, warmup: int, steps: int, jit: bool = False
) -> dict:
    """The default training path: `model.head_model()` on cached backbone outputs."""
    head = model.head_model()
    compile_for_training(head, model, jit_compile=True if jit else "auto")
    ds = feats.dataset(
        batch_size=batch_size, shuffle=True, repeat=True, gains=tuple(model.label_set.gains),
        length_multiple=length_multiple_for(head),
    )
    return _timed_fit(head, ds, batch_size=batch_size, warmup=warmup, steps=steps)


def numeric_batches(
    model, columns, preprocess, *, batch_size: int, num_batches: int
) -> tf.data.Dataset:
    """`num_batches` preprocessed batches held in memory, repeated (a producer that costs ~0).

    `preprocess` is `graph_preprocess(model)` (already traced: no new tf.data trace).
    """
    n = batch_size * num_batches
    x = preprocess(tf_inputs(raw_examples(columns, n, fields=model.preprocessor.product_fields), slice(0, n)))
    y = tf.constant(np.asarray(columns["label"][:n], np.int32))
    gains = tuple(model.label_set.gains)
    return (
        tf.data.Dataset.from_tensor_slices((x, targets(y, gains)))
        .batch(batch_size, drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(2)
    )


@contextlib.contextmanager
def detached_preprocessor(model):
    """KerasHub's `Task.fit` re-applies `model.preprocessor`; numeric inputs must skip it."""
    pre = model.preprocessor
    model.preprocessor = None
    try:
        yield model
    finally:
        model.preprocessor = pre


def measure_full_training(
    model, ds: tf.data.Dataset, *, batch_size: int, warmup: int, steps: int, train_text: bool
) -> dict:
    """The full model (both backbones run every step) on in-memory numeric batches."""
    was = model.text_backbone.trainable
    model.text_backbone.trainable = train_text
    try:
        compile_for_training(model, model)
        with detached_preprocessor(model):
            return _timed_fit(model, ds, batch_size=batch_size, warmup=warmup, steps=steps)
    finally:
        model.text_backbone.trainable = was


# === Side experiments (what moves the figures) ===


def side_experiments(
    model, config, feats, raw: dict, *, batch_size, repeats, head_steps, time_left
) -> dict:
    """Labelled experiments on what moves the figures; the costly ones need `time_left() > 60`."""
    sides: dict = {}
    p = raw["pipeline"]
    sides["tf.data parallel vs serial"] = {
        "parallel_cached_ex_s": p["parallel_cached_ex_s"],
        "parallel_uncached_ex_s": p.get("parallel_uncached_ex_s"),
        "serial_uncached_ex_s": p["serial_ex_s"],
        "note": "separates the parallel map from the cache of raw bytes",
    }
    n_train, epochs = raw["train_examples"], 12  # the shop's train split, TrainConfig().epochs
    head, full = raw["head"]["ex_s"], raw["full_frozen"]["ex_s"]
    cached_s = n_train * raw["features"]["ms_per_example"] / 1e3 + epochs * n_train / head
    sides["cached vs uncached frozen backbones"] = {
        "head_cached_ex_s": head,
        "full_frozen_ex_s": full,
        "step_speedup": head / full,
        "estimated_12_epoch_speedup": epochs * n_train / full / cached_s,
        "note": "derived from the training figures; the 12-epoch estimate (train split) "
        "includes the one-off feature pass",
    }
    if time_left() > 60:
        vocab = int(model.text_backbone.vocabulary_size)
        ms = {
            str(n): forward_ms_per_example(
                model.text_encoder, text_inputs(batch_size, n, vocab), repeats
            )
            for n in (32, 64)
        }
        sides["sequence length 32 vs 64"] = {
            "text_encoder_ms_per_example": ms,
            "ratio_64_over_32": ms["64"] / ms["32"],
            "note": "text_encoder forward only, batch 32",
        }
    if time_left() > 60:
        sides["image resolution 160 vs 224"] = _image_sizes(model, config, batch_size, repeats)
    if time_left() > 60:
        w, n = head_steps
        xla = measure_head_training(
            model, feats, batch_size=batch_size, warmup=w, steps=n, jit=True
        )
        sides["XLA jit_compile on the head only"] = {
            "head_ex_s_default": head,
            "head_ex_s_jit": xla["ex_s"],
            "jit_first_step_s": xla["first_step_s"],
            "speedup": xla["ex_s"] / head,
            "note": "head_model() only; never forced on Lite0 (7-12x slower on CPU)",
        }
    for name in (
        "sequence length 32 vs 64",
        "image resolution 160 vs 224",
        "XLA jit_compile on the head only",
    ):
        sides.setdefault(name, {"skipped": "time budget spent"})
    return sides


def _image_sizes(model, config, batch_size: int, repeats: int) -> dict:
    from esr_tf.models.builder import tiny_image_backbone
    from esr_tf.models.presets import build_image_backbone

    ms = {}
    for size in (160, 224):
        if size == config.image_size:
            net = model.image_backbone
        elif config.image == "tiny":
            net = tiny_image_backbone(size)
        else:  # weights do not change the speed; random init skips loading them
            net = build_image_backbone(config.image, weights="random", image_size=size)
        images = tf.random.uniform((batch_size, size, size, 3), -1.0, 1.0, seed=3)
        ms[str(size)] = forward_ms_per_example(net, images, repeats)
    return {
        "image_backbone_ms_per_example": ms,
        "ratio_224_over_160": ms["224"] / ms["160"],
        "note": "image backbone forward only, batch 32",
    }
