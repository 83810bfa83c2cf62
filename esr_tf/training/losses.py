"""Classification losses over integer ESCI labels: cross-entropy or focal, with smoothing.

Keras's focal loss and label smoothing take one-hot targets; the pipeline yields integer labels,
so this loss one-hots them itself.

Example:
>>> import numpy as np
>>> loss = RelevanceLoss(num_labels=4, kind="focal", gamma=2.0)
>>> round(float(loss(np.array([0]), np.array([[0.7, 0.1, 0.1, 0.1]]))), 4)
0.0321
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="esr_tf")
class RelevanceLoss(keras.losses.Loss):
    """Cross-entropy (`kind="crossentropy"`) or focal loss (`kind="focal"`) on probabilities."""

    def __init__(
        self,
        num_labels: int = 4,
        kind: str = "crossentropy",
        gamma: float = 2.0,
        label_smoothing: float = 0.0,
        name: str = "relevance_loss",
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if kind not in ("crossentropy", "focal"):
            raise ValueError(f"loss kind {kind!r}: expected 'crossentropy' or 'focal'")
        self.num_labels = int(num_labels)
        self.kind = kind
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.num_labels)
        if self.kind == "focal":
            return keras.losses.categorical_focal_crossentropy(
                y_true, y_pred, alpha=1.0, gamma=self.gamma, label_smoothing=self.label_smoothing
            )
        return keras.losses.categorical_crossentropy(
            y_true, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self) -> dict:
        fields = ("num_labels", "kind", "gamma", "label_smoothing")
        return {**super().get_config(), **{name: getattr(self, name) for name in fields}}
