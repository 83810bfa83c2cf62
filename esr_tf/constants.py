"""Settings' allowed values and paths shared across layers, defined once.

A foundation module (standard library only), so that `esr-tf --help` can offer the same choices
as the config check and the code behind them without importing TensorFlow.

Example:
>>> STRATEGIES, MISSING_IMAGE_POLICIES
(('default', 'mirrored', 'multiworker'), ('error', 'no_image'))
>>> cache_root("/tmp/x").as_posix()
'/tmp/x'
"""

from __future__ import annotations

import os
from pathlib import Path

# `esr-tf train --strategy`, `TrainConfig.strategy`, `training.distribute.make_strategy`.
STRATEGIES = ("default", "mirrored", "multiworker")
# What to do with an unusable product image: raise, or score the product from its text.
MISSING_IMAGE_POLICIES = ("error", "no_image")

# Side of the square photo the default model reads (`ModelConfig.image_size`: Lite0 -> 7x7
# patches), and the side the demo shop renders its photos at, so that they are not upscaled.
IMAGE_SIZE = 224

# Product fields the model can read in BERT's product segment (`ModelConfig.product_text`), and
# what it reads by default: field -> token budget, packed in this order (waterfall: the budget
# caps each field, then the whole segment is trimmed from its end to fit `sequence_length`).
PRODUCT_TEXT_FIELDS = ("title", "brand", "color", "description", "bullets")
DEFAULT_PRODUCT_TEXT = {"title": 16, "brand": 4, "color": 4}

# Candidates a search re-ranks when the request does not say (`search_top`'s default; REST
# clients import it from here, without TensorFlow).
DEFAULT_RERANK = 50
# Products a search returns by default (capped at the catalogue size).
DEFAULT_K = 10
# The search signatures take k / rerank as int32: larger values cannot be sent.
INT32_MAX = 2**31 - 1

# Converted weights and built helpers are cached under $ESR_TF_CACHE (default ~/.cache/esr_tf).
CACHE_ENV_VAR = "ESR_TF_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else `$ESR_TF_CACHE`, else `~/.cache/esr_tf`."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "esr_tf")
# How the fusion head reads the photo (`models.fusion_head`); `cross_attention` is the default.
FUSION_MODES = ("cross_attention", "concat", "gated", "text_only", "image_only")
# Feature-store token storage -> the split folders' suffix (`training.store_writer`; the float16
# stores of before had no suffix and no per-token scale: never read again).
FEATURE_STORE_FORMATS = {"int8": "q8", "float16": "f16"}
