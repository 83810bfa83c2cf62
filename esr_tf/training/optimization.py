"""What `train` fits with: AdamW on a warm-up + cosine schedule, and the callbacks of a run.

`make_callbacks`: a NaN guard that names the epoch and step, `BackupAndRestore` (a killed run
resumes from its last finished epoch), the best `val_loss` weights, CSV and TensorBoard logs and
early stopping.

Example:
>>> from esr_tf.training.config import parse_config
>>> optimizer = make_optimizer(parse_config({"epochs": 2}), steps_per_epoch=10)
>>> type(optimizer).__name__
'AdamW'
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from esr_tf.training.config import TrainConfig


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    total = max(1, steps_per_epoch * config.epochs)
    warmup = int(total * config.warmup_fraction)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(1, total - warmup),
        alpha=0.05,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


class NaNGuard(keras.callbacks.TerminateOnNaN):
    """`TerminateOnNaN` that remembers where the loss went bad, for the error message."""

    def __init__(self) -> None:
        super().__init__()
        self.where: tuple[int, int] | None = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)) and self.where is None:
            self.where = (self.epoch + 1, batch + 1)
        super().on_batch_end(batch, logs)


def make_callbacks(config: TrainConfig, out: Path, guard: NaNGuard) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [
        guard,
        keras.callbacks.BackupAndRestore(str(out / "backup"), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(
            str(out / "checkpoints" / "best.weights.h5"),
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False),
    ]
    if config.early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=config.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    return callbacks
