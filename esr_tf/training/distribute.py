"""tf.distribute strategies for `esr-tf train --strategy default|mirrored|multiworker`.

Multi-worker training reads the cluster from `TF_CONFIG` and must create its strategy before
any other TF op runs, so `train()` calls `make_strategy` first.

Example:
>>> make_strategy("default").num_replicas_in_sync
1
"""

from __future__ import annotations

import tensorflow as tf


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """Returns the strategy for `name`: `default`, `mirrored` or `multiworker`."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy {name!r}: expected 'default', 'mirrored' or 'multiworker'")
