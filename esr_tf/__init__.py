"""esr_tf: multimodal e-commerce search relevance (ESCI) with TensorFlow / Keras.

A KerasHub BERT over the packed query + product title and an EfficientNet over the product
photo, fused by `keras.layers.MultiHeadAttention`; trained with `fit` on `tf.data`; exported as
a SavedModel whose signatures take raw strings and image bytes for TF Serving.

The public API is importable from here; each name loads its module on first use, so
`import esr_tf` stays light (no TensorFlow start-up until a name that needs it is used).

Example:
>>> import esr_tf
>>> config = esr_tf.parse_config({"demo_size": "tiny", "epochs": 1})  # doctest: +SKIP
>>> result = esr_tf.train(config)  # doctest: +SKIP
>>> esr_tf.export_saved_model(result.model, "serving_models")  # doctest: +SKIP
>>> sorted(esr_tf.__all__)[:3]
['ESCI', 'LabelSet', 'ModelConfig']
"""

from __future__ import annotations

import importlib

from esr_tf.labels import ESCI, LabelSet

__version__ = "0.1.0"

# name -> module that defines it: data, model, train / evaluate, export / verify, search, logs.
_API = {
    "load_catalogue": "esr_tf.data",
    "generate_demo_shop": "esr_tf.data",
    "ModelConfig": "esr_tf.models.config",
    "RelevanceModel": "esr_tf.models.relevance_model",
    "build_relevance_model": "esr_tf.models.builder",
    "load_model": "esr_tf.models.builder",
    "parse_config": "esr_tf.training.config",
    "train": "esr_tf.training.trainer",
    "evaluate_model": "esr_tf.training.evaluate",
    "ablate": "esr_tf.training.ablate",
    "export_saved_model": "esr_tf.export.saved_model",
    "verify_export": "esr_tf.export.verify",
    "export_search_index": "esr_tf.search.index",
    "update_search_index": "esr_tf.search.index",
    "SearchClient": "esr_tf.search.client",
    "simulate_logs": "esr_tf.logs.simulate",
    "aggregate_logs": "esr_tf.logs.read",
    "estimate_propensities": "esr_tf.logs.propensity",
    "catalogue_from_logs": "esr_tf.logs.weak_labels",
}
__all__ = ["ESCI", "LabelSet", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'esr_tf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
