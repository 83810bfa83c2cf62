"""The key `search` orders re-ranked products by: a linear function of a few features (#31).

Per (query, retrieved product) the features are `[cosine, log p_1 .. log p_L, score]`: retrieval's
cosine, the relevance model's log-probability of each label and its score (the expected gain). The
index stores one weight per feature (`rank_weights`); `search` ranks by `features @ rank_weights`.
Two kinds of weights:

- a **blend** `weight x score + (1 - weight) x cosine` (`blend_weights`): weight 1 is the model's
  order alone (an index built without a catalogue), 0 retrieval's own;
- a **list head** fitted on retrieval's own candidate lists with a listwise loss
  (`search.list_head`), which weighs the labels' probabilities separately.

`search.blend` chooses between them on the valid queries.

Example:
>>> blend_weights(0.5, 4).tolist()
[0.5, 0.0, 0.0, 0.0, 0.0, 0.5]
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

PROBABILITY_FLOOR = 1e-6  # log p of a label the model rules out: finite, and the same in every runtime


def num_features(num_labels: int) -> int:
    return num_labels + 2


def rank_features(cosine, probabilities, score) -> tf.Tensor:
    """`[..., L + 2]` float32 features from the cosine `[...]`, probabilities `[..., L]`, score `[...]`."""
    log_p = tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32), PROBABILITY_FLOOR))
    return tf.concat([tf.cast(cosine, tf.float32)[..., None], log_p, tf.cast(score, tf.float32)[..., None]], -1)


def blend_weights(weight: float, num_labels: int) -> np.ndarray:
    """The weights of `weight x score + (1 - weight) x cosine`."""
    out = np.zeros(num_features(num_labels), np.float32)
    out[0], out[-1] = 1.0 - weight, weight
    return out


def weights_of(choice: dict | None, num_labels: int) -> np.ndarray:
    """The weights an index's recorded choice (`esr_tf_index.json`'s `rerank`) stands for; the
    model's order alone without one. Indexes from before the list head recorded a blend weight."""
    if not choice:
        return blend_weights(1.0, num_labels)
    if "rank_weights" in choice:
        return checked_weights(choice["rank_weights"], num_labels)
    return blend_weights(float(choice.get("rerank_weight", 1.0)), num_labels)


def checked_weights(weights, num_labels: int) -> np.ndarray:
    """`weights` as float32 `[L + 2]`; a ValueError when their number does not fit the model's labels."""
    weights = np.asarray(weights, np.float32)
    if weights.shape != (num_features(num_labels),):
        raise ValueError(f"rank_weights has {weights.size} values; a model with {num_labels} labels needs "
                         f"{num_features(num_labels)}")
    return weights
