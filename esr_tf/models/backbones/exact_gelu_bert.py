"""`ExactGeluBertBackbone`: KerasHub's `BertBackbone` with a configurable feed-forward activation.

Why this class exists: `keras_hub.models.BertBackbone` hard-codes the tanh approximation of GELU
(`gelu_approximate`) in every transformer layer, while HF BERT checkpoints with
`hidden_act="gelu"` (all-MiniLM-L6-v2 among them) were trained with the exact erf GELU. The
approximation moves MiniLM's mean-pooled outputs by ~1e-4, far outside the 1e-5 we check
against the original. Setting the activation in the constructor (instead of patching a loaded
object) puts it in `get_config`, so it survives `.keras` save/load and `save_to_preset`.
"""

from __future__ import annotations

import keras
import keras_hub
from keras_hub.src.utils.keras_utils import gelu_approximate

# Names accepted for `intermediate_activation`; other strings go to `keras.activations.get`.
_ACTIVATIONS = {
    "gelu": lambda x: keras.activations.gelu(x, approximate=False),
    "gelu_approximate": gelu_approximate,
}


@keras.saving.register_keras_serializable(package="esr_tf")
class ExactGeluBertBackbone(keras_hub.models.BertBackbone):
    """A `keras_hub.models.BertBackbone` whose feed-forward activation is exact GELU by default.

    Same layers, weights, inputs and outputs as `BertBackbone` (so KerasHub's weight converters
    and `set_weights` from a `BertBackbone` apply unchanged); only the activation of each
    transformer layer's intermediate dense layer differs.

    Import this module before `keras.saving.load_model` on a `.keras` file holding one: the
    class is registered as `"esr_tf>ExactGeluBertBackbone"` when the module is imported.

    Args:
        intermediate_activation: str. `"gelu"` (exact erf GELU, HF `hidden_act="gelu"`),
            `"gelu_approximate"` (tanh GELU, KerasHub's `BertBackbone` and HF `"gelu_new"`), or
            any name `keras.activations.get` accepts.
        **kwargs: the `keras_hub.models.BertBackbone` arguments.

    Example:
    ```python
    import numpy as np
    from esr_tf.models.backbones.exact_gelu_bert import ExactGeluBertBackbone

    backbone = ExactGeluBertBackbone(
        vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=16,
    )
    outputs = backbone({
        "token_ids": np.ones((1, 8), "int32"),
        "segment_ids": np.zeros((1, 8), "int32"),
        "padding_mask": np.ones((1, 8), "int32"),
    })
    outputs["sequence_output"].shape  # (1, 8, 16)
    ```
    """

    def __init__(self, *args, intermediate_activation: str = "gelu", **kwargs):
        if not isinstance(intermediate_activation, str):
            raise ValueError(
                "`intermediate_activation` must be a string (it is stored in the config), "
                f"got {intermediate_activation!r}"
            )
        activation = _ACTIVATIONS.get(intermediate_activation)
        if activation is None:
            activation = keras.activations.get(intermediate_activation)
        # BertBackbone builds its functional graph inside `__init__`, with tanh GELU baked into
        # each TransformerEncoder. Functional models re-run every layer's `call` at call time and
        # `Dense.call` reads `self.activation` then, so replacing the attribute after
        # construction changes the computation without copying BertBackbone's constructor.
        # esr_tf.upstream: "keras-hub-bert-tanh-gelu" (its canary fails once upstream changes).
        super().__init__(*args, **kwargs)
        for layer in self.transformer_layers:
            layer.activation = activation
            layer._feedforward_intermediate_dense.activation = activation
        self.intermediate_activation = intermediate_activation

    def get_config(self) -> dict:
        config = super().get_config()
        config["intermediate_activation"] = self.intermediate_activation
        return config

    @classmethod
    def from_bert_backbone(
        cls, backbone: keras_hub.models.BertBackbone, intermediate_activation: str = "gelu"
    ) -> ExactGeluBertBackbone:
        """Same architecture and weights as `backbone`, with the given activation.

        This is how HF / KerasHub checkpoints loaded as a plain `BertBackbone` (KerasHub's
        converters always build that class) become an `ExactGeluBertBackbone`.
        """
        config = backbone.get_config()
        config["intermediate_activation"] = intermediate_activation
        new = cls.from_config(config)
        new.set_weights(backbone.get_weights())
        return new
