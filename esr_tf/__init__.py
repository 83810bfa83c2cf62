"""esr_tf: multimodal e-commerce search relevance (ESCI) with TensorFlow / Keras.

A KerasHub BERT over the packed query + product title and an EfficientNet over the product
photo, fused by `keras.layers.MultiHeadAttention`; trained with `fit` on `tf.data`; exported as
a SavedModel whose signatures take raw strings and image bytes for TF Serving.
"""

from esr_tf.labels import ESCI, LabelSet

__version__ = "0.1.0"
__all__ = ["ESCI", "LabelSet", "__version__"]
