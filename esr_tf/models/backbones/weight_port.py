"""The `port_weight` interface KerasHub's HF / timm converters call, over tensors esr_tf reads.

KerasHub's own `SafetensorLoader` needs the `safetensors` package, which esr_tf does not
require (esr_tf.upstream: "keras-hub-hf-loader-needs-safetensors"); subclasses only say where a
tensor comes from (`get_tensor`), the porting and its shape check are here once.

Example:
>>> import numpy as np, keras
>>> class Dict(TensorPorter):
...     def __init__(self, tensors): self.tensors = tensors
...     def get_tensor(self, key): return self.tensors[key]
>>> v = keras.Variable(np.zeros((2,), "float32"))
>>> Dict({"b": np.ones(2)}).port_weight(v, "b"); v.numpy().tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import numpy as np


class TensorPorter:
    """Assigns named tensors to Keras variables, checking shapes (`where` names the source)."""

    where = "weights"

    def get_tensor(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def port_weight(self, keras_variable, hf_weight_key: str, hook_fn=None) -> None:
        tensor = self.get_tensor(hf_weight_key)
        if hook_fn:
            tensor = hook_fn(tensor, list(keras_variable.shape))
        if tuple(tensor.shape) != tuple(keras_variable.shape):
            raise ValueError(
                f"{self.where}: {hf_weight_key!r} has shape {tuple(tensor.shape)}, "
                f"{keras_variable.path} expects {tuple(keras_variable.shape)}"
            )
        keras_variable.assign(tensor)
