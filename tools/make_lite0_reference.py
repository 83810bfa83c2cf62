"""Writes esr_tf/models/backbones/references/lite0_reference.npz: EfficientNet-Lite0 outputs
computed by a plain float64 numpy forward pass straight from the `.pth` weights, independent of
Keras / KerasHub. `tests/models/test_image_backbone.py` checks the KerasHub path against it.

The forward pass follows the TF-trained original: TF "same" padding everywhere (asymmetric for
stride 2 on even sizes), batch-norm epsilon 1e-3, ReLU6, no squeeze-excite, inputs in [-1, 1].

Run:  python tools/make_lite0_reference.py [--check-photo]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from esr_tf.models.backbones.lite0_weights import load_lite0_state_dict

OUT = Path(__file__).resolve().parents[1] / "esr_tf/models/backbones/references/lite0_reference.npz"
IMAGE_SIZE = 160
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
EPS = 1e-3


def make_image(size: int = IMAGE_SIZE) -> np.ndarray:
    """A deterministic uint8 test picture: colour gradients, a disc, a bar and a checker."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    image = np.stack([xx, yy, 1 - 0.5 * (xx + yy)], -1) * 200 + 20
    disc = (xx - 0.35) ** 2 + (yy - 0.4) ** 2 < 0.04
    image[disc] = (230, 40, 30)
    bar = (np.abs(yy - 0.75) < 0.06) & (xx > 0.15) & (xx < 0.9)
    image[bar] = (20, 30, 160)
    checker = ((xx * 8).astype(int) + (yy * 8).astype(int)) % 2 == 0
    image[checker & (xx > 0.6) & (yy < 0.5)] = (250, 250, 250)
    return np.round(image).astype(np.uint8)


def same_pad(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """TF "SAME" padding of an [H, W, C] map for kernel k, stride s."""
    pads = []
    for n in x.shape[:2]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, pads + [(0, 0)])


def windows(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """[H', W', C, k, k] strided k x k windows of a padded map."""
    w = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(0, 1))
    return w[::s, ::s]


def bn(x, state, prefix):
    g, b = state[prefix + ".weight"], state[prefix + ".bias"]
    m, v = state[prefix + ".running_mean"], state[prefix + ".running_var"]
    return (x - m) / np.sqrt(v + EPS) * g + b


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def conv1x1(x, w):  # w: [out, in, 1, 1]
    return x @ w[:, :, 0, 0].T


def forward(image01: np.ndarray, state: dict) -> tuple[np.ndarray, np.ndarray]:
    """image in [-1, 1], [H, W, 3] -> (feature map [h, w, 1280], logits [1000])."""
    state = {k: v.astype(np.float64) for k, v in state.items()}
    w = state["_conv_stem.weight"]  # [32, 3, 3, 3]
    x = np.einsum("hwckl,ockl->hwo", windows(same_pad(image01, 3, 2), 3, 2), w)
    x = relu6(bn(x, state, "_bn0"))
    n = 0
    for repeats, stride in zip(STAGE_REPEATS, STAGE_STRIDES, strict=True):
        for i in range(repeats):
            p, s = f"_blocks.{n}.", stride if i == 0 else 1
            inputs = x
            if p + "_expand_conv.weight" in state:
                x = relu6(bn(conv1x1(x, state[p + "_expand_conv.weight"]), state, p + "_bn0"))
            dw = state[p + "_depthwise_conv.weight"][:, 0]  # [C, k, k]
            k = dw.shape[-1]
            x = np.einsum("hwckl,ckl->hwc", windows(same_pad(x, k, s), k, s), dw)
            x = relu6(bn(x, state, p + "_bn1"))
            x = bn(conv1x1(x, state[p + "_project_conv.weight"]), state, p + "_bn2")
            if s == 1 and x.shape == inputs.shape:
                x = x + inputs
            n += 1
    features = relu6(bn(conv1x1(x, state["_conv_head.weight"]), state, "_bn1"))
    logits = features.mean((0, 1)) @ state["_fc.weight"].T + state["_fc.bias"]
    return features, logits


def to_unit_range(image_uint8: np.ndarray) -> np.ndarray:
    return (image_uint8.astype(np.float64) / 255.0 - 0.5) / 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check-photo", action="store_true",
                        help="also print the top-5 classes of matplotlib's grace_hopper.jpg")
    args = parser.parse_args()
    state = load_lite0_state_dict()
    image = make_image()
    features, logits = forward(to_unit_range(image), state)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        image=image,
        pooled_features=features.mean((0, 1)).astype(np.float32),
        feature_corner=features[0, 0].astype(np.float32),
        logits=logits.astype(np.float32),
        note=np.array("EfficientNet-Lite0, TF same padding, eps 1e-3, input (x/255-0.5)/0.5, "
                      "float64 numpy forward; made by tools/make_lite0_reference.py"),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); feature map {features.shape}, "
          f"top-5 {np.argsort(-logits)[:5].tolist()}")
    if args.check_photo:
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            photo = Image.open(f).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE),
                                                         Image.BILINEAR)
        _, photo_logits = forward(to_unit_range(np.asarray(photo)), state)
        prob = np.exp(photo_logits - photo_logits.max())
        prob /= prob.sum()
        top = np.argsort(-prob)[:5]
        print("grace_hopper top-5 (class, prob):",
              [(int(c), round(float(prob[c]), 3)) for c in top])


if __name__ == "__main__":
    main()
