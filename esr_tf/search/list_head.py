"""A list head: rank weights fitted on retrieval's own candidate lists with a listwise loss (#31).

The relevance model is trained on judged candidate lists; search asks it to order what retrieval
found, most of which nobody judged. The list head learns, from the catalogue's **train** queries,
how to weigh retrieval's cosine against each label's log-probability (`search.ranking`'s features)
so that judged products outrank the rest of the list they are retrieved in: the re-ranked list is
what it is trained on, unjudged candidates count as gain 0 (as search meets them), and
`keras_rs.losses.ListMLELoss` scores the likelihood of the whole list's order, so scores are
comparable across it. keras_rs sorts by gain without shuffling ties, so among the unjudged the
target order is retrieval's own: where nothing was judged the head learns to keep it (unlike
`PairwiseLogisticLoss`, which lost to retrieval on the demo shop's valid queries when screened).
`search.blend` also fits one on the valid queries' lists, cross-fitted, and lets the valid
figures choose. A linear layer, one weight per feature: cheap to fit at index time and to run in
the graph, nothing for TF Serving to lack.

Example:
>>> import numpy as np
>>> features = np.array([[[0.9, 0.0], [0.1, 1.0]]], np.float32)  # one query, two candidates
>>> weights = fit_list_head(features, np.array([[0.0, 1.0]], np.float32))
>>> bool(features[0, 1] @ weights > features[0, 0] @ weights)  # the judged one now ranks first
True
"""

from __future__ import annotations

import keras
import keras_rs
import numpy as np
import tensorflow as tf

MAX_QUERIES = 512  # train queries whose lists fit the head (a sample beyond): ~1 min of re-ranking
EPOCHS = 200
LEARNING_RATE = 0.05


def fit_list_head(features: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Rank weights `[F]` for `features [Q, N, F]` given each candidate's gain `[Q, N]`.

    Features are standardised first (folded into the weights, so the graph multiplies raw
    features). Full-batch Adam starting from retrieval's order (weight 1 on the cosine, the
    first feature): deterministic, no seed to set."""
    features = np.asarray(features, np.float32)
    flat = features.reshape(-1, features.shape[-1])
    mean, scale = flat.mean(axis=0), flat.std(axis=0) + 1e-6
    inputs = keras.Input(features.shape[1:])
    dense = keras.layers.Dense(1, use_bias=False, kernel_initializer=_from_cosine)
    model = keras.Model(inputs, keras.ops.squeeze(dense((inputs - mean) / scale), -1))
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=keras_rs.losses.ListMLELoss())
    # One epoch of EPOCHS full-batch steps: keras' per-epoch overhead is most of a tiny fit's time.
    batches = tf.data.Dataset.from_tensors((features, np.asarray(gains, np.float32))).repeat(EPOCHS)
    model.fit(batches, epochs=1, shuffle=False, verbose=0)
    return (dense.kernel.numpy()[:, 0] / scale).astype(np.float32)


def _from_cosine(shape, dtype=None):
    return keras.ops.one_hot([0] * shape[1], shape[0], axis=0, dtype=dtype)

