"""Keras `fit` on the shared tf.data pipeline, with checkpoints that survive a killed run.

`train(config)` builds the model, fits it and saves `<out_dir>/model.keras`. With both backbones
frozen and `cache_features` on, it fits `model.head_model()` on backbone outputs computed once
(`BackboneFeatures`); otherwise the full model on raw strings and image bytes through the
`RelevancePreprocessor`. Either way: AdamW with warm-up and cosine decay, class weights or focal
loss, best-model checkpoint, `BackupAndRestore` (rerun the same command after `kill -9` and it
resumes from the last finished epoch), early stopping, TensorBoard and CSV logs.

Example:
>>> from esr_tf.training.config import parse_config
>>> result = train(parse_config({"demo_size": "tiny", "epochs": 1}))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from esr_tf.data import Catalogue, generate_demo_shop, load_catalogue
from esr_tf.labels import LabelSet
from esr_tf.models.builder import build_relevance_model
from esr_tf.models.precision import check_precision
from esr_tf.preprocessing.pipeline import make_dataset
from esr_tf.training.augment import hide_colour_words
from esr_tf.training.config import ConfigError, TrainConfig
from esr_tf.training.distribute import (
    is_multi_worker,
    local_predict,
    make_strategy,
    num_workers,
    worker_out_dir,
)
from esr_tf.training.encoder_pass import backbone_fingerprint, examples_digest
from esr_tf.training.feature_cache import BackboneFeatures, FeatureSource, length_multiple_for, targets_and_weights
from esr_tf.training.losses import RelevanceLoss
from esr_tf.training.optimization import NaNGuard, make_callbacks, make_optimizer
from esr_tf.training.run_state import full_history, prepare_out_dir, run_fingerprint

log = logging.getLogger("esr_tf.training")


class TrainingError(RuntimeError):
    """Training could not finish (e.g. the loss became NaN); the message says where."""


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    catalogue: Catalogue
    out_dir: Path
    model_path: Path
    epochs_run: int
    # Frozen-backbone outputs per split ("train", "valid", "test") when they were cached; pass
    # `features["test"]` to `evaluate_model` to score without running the backbones again.
    features: dict[str, FeatureSource] = field(default_factory=dict)
    # recall@k per split of the retrieval model saved as retrieval.keras (empty: none trained)
    retrieval_metrics: dict = field(default_factory=dict)
    # wall seconds of the frozen-backbone pass ("features") and of `fit` ("fit")
    seconds: dict = field(default_factory=dict)


def load_training_data(config: TrainConfig) -> Catalogue:
    """The catalogue named by `config.data`, generating the demo shop for `"demo"`."""
    if config.data == "demo":
        folder = generate_demo_shop(Path(config.out_dir) / "demo_shop", seed=config.seed, size=config.demo_size)
    else:
        folder = Path(config.data)
    try:  # read the labels as the model numbers them (names / codes of model.label_set)
        label_set = LabelSet.coerce(config.model.label_set)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.label_set: {e}") from None
    # from logs, the judged pairs are only for evaluation: a folder may have none
    return load_catalogue(folder, missing_images=config.missing_images, label_set=label_set,
                          require_examples=not config.logs)


def class_weight_vector(labels: np.ndarray, num_labels: int, mode: str,
                        example_weights: np.ndarray | None = None) -> np.ndarray:
    """Per-label weights: ones, or inverse frequency normalised to mean 1 over examples.

    With `example_weights` (weak labels from logs: a pair split over its posterior's labels) a
    label's frequency is the sum of its examples' weights, not their count: a pair's 6 % share
    of Complement is not a Complement example.
    """
    if mode == "none":
        return np.ones(num_labels, np.float32)
    own = np.ones(len(labels)) if example_weights is None else np.asarray(example_weights, np.float64)
    counts = np.bincount(labels, own, minlength=num_labels)
    present = max(1, int((counts > 0).sum()))
    weights = np.where(counts > 0, own.sum() / (present * np.where(counts > 0, counts, 1.0)), 0.0)
    return weights.astype(np.float32)


def training_parts(config: TrainConfig, catalogue: Catalogue, model) -> dict[str, dict[str, np.ndarray]]:
    """The train / valid / test columns a run uses: labels numbered as the model's outputs, plus
    the colour-hidden training copies for modes that read photos."""
    labels = model.label_set
    train = catalogue.columns("train", labels)
    if config.hide_colour_rate > 0 and model.reads_photos:
        train = hide_colour_words(train, rate=config.hide_colour_rate, seed=config.seed)
    return {"train": train, "valid": catalogue.columns("valid", labels), "test": catalogue.columns("test", labels)}


def _features_fit(features: Mapping[str, FeatureSource], model, parts: Mapping[str, Mapping],
                  precision: str = "float32") -> bool:
    """Reusable only from the same backbones (at the same `precision`; for `"auto"`, at
    either) and for the same examples of every split."""
    precisions = ("float32", "bfloat16") if check_precision(precision) == "auto" else (precision,)
    fingerprints = [backbone_fingerprint(model, p) for p in precisions]
    for split, columns in parts.items():
        expected = len(columns["label"])
        if split not in features and expected == 0:
            continue
        feats = features.get(split)
        same_rows = feats is not None and len(feats) == expected and feats.examples == examples_digest(columns)
        if not (same_rows and any(feats.usable_by(model, f) for f in fingerprints)):
            log.info("the backbone outputs passed in are for other encoders or examples; computing them")
            return False
    return True


def validation_batch_size(examples: int, batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The validation batch: `batch_size`, but under multi-worker a size that every replica gets
    a non-empty share of, since the remainder is dropped there.

    Training repeats before batching, so its batches are always full. A last partial validation
    batch would leave some workers an empty share: the image backbone must never see an empty
    batch (see `esr_tf.upstream`), and workers would not step alike. Dropping it leaves at most
    `batch - 1` examples out of `val_loss` (logged); the test metrics are computed separately.
    """
    if not is_multi_worker(strategy):
        return batch_size
    replicas = strategy.num_replicas_in_sync
    batch = max(replicas, min(batch_size, examples) // replicas * replicas)
    if examples < batch:
        raise TrainingError(f"multiworker: the valid split has {examples} examples, fewer than the {replicas} replicas")
    if examples % batch:
        log.info("multiworker: val_loss leaves out the last %d of %d valid examples", examples % batch, examples)
    return batch


def _set_precision(config: TrainConfig) -> None:
    gpu = bool(tf.config.list_physical_devices("GPU"))
    use = config.mixed_precision == "on" or (config.mixed_precision == "auto" and gpu)
    keras.mixed_precision.set_global_policy("mixed_float16" if use else "float32")


@dataclass
class Trainee:
    """What `fit` needs, built once under the strategy's scope."""

    model: keras.Model  # the full RelevanceModel: saved and returned
    fitted: keras.Model  # what `fit` trains: `model`, or its `head_model()` on cached features
    parts: dict[str, dict[str, np.ndarray]]  # `training_parts`
    class_weights: np.ndarray  # per label (`class_weight_vector`)
    steps: int  # per epoch
    cached: bool  # frozen backbones and `cache_features`: fit the head on `BackboneFeatures`


def train(
    config: TrainConfig,
    *,
    catalogue: Catalogue | None = None,
    features: Mapping[str, BackboneFeatures] | None = None,
    verbose: int = 1,
    overwrite: bool = False,
) -> TrainResult:
    """Trains per `config`; returns the trained model (best `val_loss` weights) and its history.

    A `config.out_dir` holding the saved state of the same run (config and data) resumes it;
    of another run, raises `RunConflictError` unless `overwrite` (start fresh, see `run_state`).

    `features`: frozen-backbone outputs of `catalogue` from an earlier run (its
    `TrainResult.features`), reused when they come from the same encoders (weights and
    layers) and hold the same examples of every split.
    """
    strategy, config, catalogue = prepare_run(config, catalogue, overwrite)
    out = Path(config.out_dir)
    trainee = build_trainee(config, catalogue, strategy)
    started = time.perf_counter()
    features = backbone_features(config, trainee, features, verbose)
    seconds = {"features": time.perf_counter() - started}
    train_ds, valid_ds = training_datasets(config, trainee, features, strategy)
    guard = NaNGuard()
    if verbose:
        print(f"training: {config.epochs} epochs of {trainee.steps:,} steps", flush=True)
    started = time.perf_counter()
    history = trainee.fitted.fit(
        train_ds,
        validation_data=valid_ds,
        epochs=config.epochs,
        steps_per_epoch=trainee.steps,
        callbacks=make_callbacks(config, out, guard),
        verbose=verbose,
        shuffle=False,  # the dataset shuffles itself; Keras warns about its own default
    )
    seconds["fit"] = time.perf_counter() - started
    result = _finish(trainee.model, history.history, guard, catalogue, out, features)
    result.seconds = seconds
    if config.retrieval.epochs:  # the two-tower model for catalogue search: retrieval.keras
        from esr_tf.search.fit import fit_for_run

        result.retrieval_metrics = fit_for_run(config, result, multi_worker=is_multi_worker(strategy))
    return result


def prepare_run(
    config: TrainConfig, catalogue: Catalogue | None, overwrite: bool
) -> tuple[tf.distribute.Strategy, TrainConfig, Catalogue]:
    """Strategy, this worker's out dir, seeds, precision, the catalogue and the run's fingerprint."""
    strategy = make_strategy(config.strategy)  # before any other TF op, for multi-worker
    # distribute: non-chief workers write their (identical) files to a folder of their own.
    config = replace(config, out_dir=str(worker_out_dir(config.out_dir, strategy)))
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    _set_precision(config)
    catalogue = catalogue or load_training_data(config)
    logs_summary = None
    if config.logs:  # train / valid from the search logs' weak labels, the judged test split kept
        from esr_tf.logs.weak_labels import catalogue_from_logs

        catalogue, logs_summary = catalogue_from_logs(catalogue, config.logs, config.log_labels)
    for split in ("train", "valid"):
        if not len(catalogue.select(split)):
            raise TrainingError(f"the catalogue at {catalogue.root} has no '{split}' examples")
    prepare_out_dir(out, run_fingerprint(config, catalogue), overwrite=overwrite)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    if logs_summary:
        (out / "weak_labels.json").write_text(json.dumps(logs_summary, indent=2) + "\n")
    return strategy, config, catalogue


def build_trainee(config: TrainConfig, catalogue: Catalogue, strategy: tf.distribute.Strategy) -> Trainee:
    """The model and what `fit` trains (full model or its head), compiled under `strategy`."""
    with strategy.scope():
        model = build_relevance_model(config.model)
        parts = training_parts(config, catalogue, model)
        train_labels = parts["train"]["label"]
        num_labels = model.label_set.num_labels
        weights = class_weight_vector(train_labels, num_labels, config.class_weights, own_weights(parts["train"]))
        steps = math.ceil(len(train_labels) / config.batch_size)
        loss = RelevanceLoss(num_labels, config.loss, config.focal_gamma, config.label_smoothing)
        cached = config.cache_features and not model.text_backbone.trainable and not model.image_backbone.trainable
        if config.logs and (not cached or config.feature_store):
            raise ConfigError("logs: training from logs needs frozen backbones, cache_features and no "
                              "feature_store (the weak labels' weights ride with the features in RAM)")
        fitted = model.head_model() if cached else model
        fitted.compile(
            optimizer=make_optimizer(config, steps),
            loss={"probabilities": loss},
            metrics={"probabilities": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]},
        )
    return Trainee(model, fitted, parts, weights, steps, cached)


def backbone_features(
    config: TrainConfig, trainee: Trainee, features: Mapping[str, FeatureSource] | None, verbose: int
) -> dict[str, FeatureSource]:
    """The frozen-backbone outputs the head trains on: from `config.feature_store` (written
    there once), else those passed in if they fit, else computed once; `{}` when the full
    model trains."""
    model = trainee.model
    if trainee.cached and config.feature_store:  # on disk: finds what an earlier run wrote
        from esr_tf.training.feature_store import FeatureStore

        with local_predict(model.text_encoder, model.image_encoder):
            store = FeatureStore.build(model, trainee.parts, config.feature_store, dtype=config.feature_store_dtype,
                                       precision=config.feature_pass_precision, verbose=verbose)
        return {split: store.view(split) for split in store.splits}
    if trainee.cached and bool(features) and _features_fit(features, model, trainee.parts,
                                                           config.feature_pass_precision):
        log.info("reusing the frozen backbone outputs passed in (same encoders and examples)")
        return dict(features)
    if not trainee.cached:
        return {}
    log.info("computing frozen backbone outputs once for the train, valid and test examples")
    # distribute: every worker computes all features itself (no per-batch gathers).
    with local_predict(model.text_encoder, model.image_encoder):
        return BackboneFeatures.compute_parts(model, trainee.parts, verbose=verbose,
                                              precision=config.feature_pass_precision)


def own_weights(columns: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The examples' own weights (weak labels from logs), or None where all are 1."""
    w = columns.get("weight")
    return None if w is None or not len(w) or bool(np.all(w == 1.0)) else w


def training_datasets(
    config: TrainConfig,
    trainee: Trainee,
    features: Mapping[str, FeatureSource],
    strategy: tf.distribute.Strategy,
    full_length: bool = False,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Train (shuffled, repeated, class-weighted) and valid datasets, with `targets_and_weights`
    from cached features or from the tf.data pipeline on raw inputs (`full_length`: cached
    features' batches keep the full sequence length, as before #17; for comparisons)."""
    multi = is_multi_worker(strategy)
    gains = tuple(trainee.model.label_set.gains)
    weights = trainee.class_weights
    valid_batch = validation_batch_size(len(trainee.parts["valid"]["label"]), config.batch_size, strategy)
    if trainee.cached:  # in RAM (`BackboneFeatures`) or on disk (`FeatureStore` views): one interface
        train_feats, valid_feats = features["train"], features["valid"]
        # each batch's text only as long as its longest example (full length: `full_length`)
        common = {"gains": gains, "workers": num_workers(strategy),
                  "length_multiple": None if full_length else length_multiple_for(trainee.fitted)}
        train_ds = train_feats.dataset(batch_size=config.batch_size, shuffle=True, seed=config.seed, repeat=True,
                                       class_weights=weights, example_weights=own_weights(trainee.parts["train"]),
                                       **common)
        return train_ds, valid_feats.dataset(batch_size=valid_batch, drop_remainder=multi,
                                             example_weights=own_weights(trainee.parts["valid"]), **common)
    # distribute: workers shard the data by element, so all must see the same order.
    same_order = config.deterministic or multi
    pre = trainee.model.preprocessor
    train_ds = make_dataset(
        trainee.parts["train"],
        pre,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        repeat=True,
        cache=True,
        deterministic=same_order,
    ).map(lambda x, y: (x, *targets_and_weights(y, gains, tf.gather(weights, y))))
    valid_ds = make_dataset(
        trainee.parts["valid"],
        pre,
        batch_size=valid_batch,
        drop_remainder=multi,
        cache=True,
        deterministic=same_order,
    ).map(lambda x, y: (x, *targets_and_weights(y, gains)))
    return train_ds, valid_ds


def _finish(
    model: keras.Model,
    history: dict[str, list[float]],
    guard: NaNGuard,
    catalogue: Catalogue,
    out: Path,
    features: dict[str, BackboneFeatures],
) -> TrainResult:
    """After `fit`: refuse a NaN run (removing its poisoned state), else save the model atomically."""
    if guard.where is not None:
        epoch, batch = guard.where
        # Never leave NaN weights to resume from: BackupAndRestore saved the poisoned epoch, and a
        # first-epoch "best" checkpoint was written unconditionally.
        shutil.rmtree(out / "backup", ignore_errors=True)
        if epoch == 1:
            (out / "checkpoints" / "best.weights.h5").unlink(missing_ok=True)
        good = f"; the best earlier weights are in {out / 'checkpoints'}" if epoch > 1 else ""
        raise TrainingError(
            f"training stopped: the loss became NaN/inf at epoch {epoch}, batch {batch} "
            f"(lower learning_rate, check the inputs, or turn off mixed_precision){good}"
        )
    model_path = out / "model.keras"
    tmp = out / "model.keras.partial.keras"
    model.save(tmp)
    tmp.replace(model_path)
    epochs_run = len(history.get("loss", []))
    return TrainResult(model, full_history(out, history), catalogue, out, model_path, epochs_run, features)
