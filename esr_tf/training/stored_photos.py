"""Photo feature maps a feature store already holds, found by photo path (#34).

A training run with `feature_store` writes each distinct photo's image-backbone output once
(`store_writer.photo_table`: `photos-<digest>.npy`, float16, and `photos-<digest>.paths.json`,
its rows by path) under the folder of its encoders' fingerprint. `esr-tf index` reads them
back instead of running EfficientNet again: the photo pass is most of an index build, and the
relevance head was trained on these very maps. A model with other encoders finds nothing.

Example:
>>> stored = StoredPhotos.find(model, "runs/features")  # doctest: +SKIP
>>> stored.maps(["/shop/images/p1.jpg"]).shape  # doctest: +SKIP
(1, 7, 7, 1280)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from esr_tf.training.encoder_pass import backbone_fingerprint

LISTING = ".paths.json"


@dataclass
class StoredPhotos:
    """Every stored photo table of one model's encoders, and where each photo's row is."""

    tables: list[np.ndarray]  # memory-mapped [U, h, w, C] float16
    where: dict[str, tuple[int, int]]  # photo path -> (table, row)

    @classmethod
    def find(cls, model, root: str | Path) -> StoredPhotos | None:
        """The tables under `root` written by `model`'s encoders (float32 pass); None if none."""
        folder = Path(root) / backbone_fingerprint(model)[:20]
        tables: list[np.ndarray] = []
        where: dict[str, tuple[int, int]] = {}
        for listing in sorted(folder.glob(f"photos-*{LISTING}")):
            table = listing.with_name(listing.name[: -len(LISTING)] + ".npy")
            paths = json.loads(listing.read_text(encoding="utf-8")) if table.is_file() else []
            maps = np.load(table, mmap_mode="r") if paths else None
            if maps is None or len(maps) != len(paths):  # a table without its listing, or torn
                continue
            for row, path in enumerate(paths):
                where.setdefault(path, (len(tables), row))
            tables.append(maps)
        return cls(tables, where) if where else None

    def __len__(self) -> int:
        return len(self.where)

    def __contains__(self, path: str) -> bool:
        return path in self.where

    def maps(self, paths: list[str]) -> np.ndarray:
        """float32 feature maps `[len(paths), h, w, C]` of stored `paths`."""
        return np.stack([np.asarray(self.tables[t][r], np.float32) for t, r in (self.where[p] for p in paths)])
