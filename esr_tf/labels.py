"""The ESCI label set and its ranking gains.

Labels are configurable data: a `LabelSet` names the classes (in output order), their one-letter
codes and the gain each contributes to the ranking `score` (the expected gain under the model's
probabilities) and to nDCG.

Example:
>>> from esr_tf.labels import ESCI
>>> ESCI.parse("Exact"), ESCI.parse("s"), ESCI.names[2]
(0, 1, 'complement')
>>> reordered = LabelSet(("irrelevant", "complement", "substitute", "exact"),
...                      ("I", "C", "S", "E"), (0.0, 0.01, 0.1, 1.0))
>>> ESCI.index_map(reordered).tolist()   # ESCI index -> index in `reordered`, by name
[3, 2, 1, 0]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LabelSet:
    """Class names, one-letter codes and ranking gains, in model output order."""

    names: tuple[str, ...] = ("exact", "substitute", "complement", "irrelevant")
    codes: tuple[str, ...] = ("E", "S", "C", "I")
    # ESCI gains of the Shopping Queries paper: E 1.0, S 0.1, C 0.01, I 0.0.
    gains: tuple[float, ...] = (1.0, 0.1, 0.01, 0.0)
    _lookup: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.codes) == len(self.gains)):
            raise ValueError("LabelSet: names, codes and gains must have the same length")
        lookup: dict[str, int] = {}
        for i, (name, code) in enumerate(zip(self.names, self.codes, strict=True)):
            for key in {str(name).strip().lower(), str(code).strip().lower()}:
                # A spelling naming two labels would make parsing depend on the order.
                if not key or lookup.setdefault(key, i) != i:
                    raise ValueError(f"LabelSet: label {key!r} is empty or names two labels "
                                     f"({', '.join(self.names)} / {', '.join(self.codes)})")
        object.__setattr__(self, "_lookup", lookup)

    @property
    def num_labels(self) -> int:
        return len(self.names)

    def parse(self, value: str) -> int:
        """Maps a label spelling (`E`, `exact`, any case) to its index; raises `ValueError`."""
        key = str(value).strip().lower()
        if key not in self._lookup:
            allowed = "/".join(self.codes) + " or " + "/".join(self.names)
            raise ValueError(f"unknown label {value!r} (expected {allowed}, any case)")
        return self._lookup[key]

    def describe(self) -> str:
        """`"exact (E), substitute (S), ..."`: the labels for messages."""
        return ", ".join(f"{n} ({c})" for n, c in zip(self.names, self.codes, strict=True))

    def index_map(self, target: LabelSet, used: Iterable[int] | None = None) -> np.ndarray:
        """For each label index of `self`, the index of the same label (by name, else by
        code) in `target`; -1 where `target` lacks it.

        `used`: the indices that must map (e.g. the labels present in a catalogue); raises
        `ValueError` naming those that `target` lacks.
        """
        mapping = np.full(self.num_labels, -1, np.int32)
        for i, (name, code) in enumerate(zip(self.names, self.codes, strict=True)):
            for key in (name, code):
                if str(key).strip().lower() in target._lookup:
                    mapping[i] = target._lookup[str(key).strip().lower()]
                    break
        missing = sorted({int(i) for i in (used if used is not None else []) if mapping[i] < 0})
        if missing:
            lacking = ", ".join(f"{self.names[i]} ({self.codes[i]})" for i in missing)
            raise ValueError(f"label(s) {lacking} are not in the model's label set "
                             f"[{target.describe()}]")
        return mapping

    def get_config(self) -> dict:
        return {"names": list(self.names), "codes": list(self.codes), "gains": list(self.gains)}

    @classmethod
    def from_config(cls, config: dict) -> LabelSet:
        missing = [k for k in ("names", "codes", "gains") if k not in (config or {})]
        if missing:
            raise ValueError(f"label_set: missing {', '.join(missing)} (expected names, codes, gains)")
        return cls(
            names=tuple(config["names"]),
            codes=tuple(config["codes"]),
            gains=tuple(float(g) for g in config["gains"]),
        )

    @classmethod
    def coerce(cls, value: LabelSet | dict | Sequence[str] | None) -> LabelSet:
        if value is None:
            return ESCI
        if isinstance(value, LabelSet):
            return value
        if isinstance(value, dict):
            return cls.from_config(value)
        raise TypeError(f"cannot build a LabelSet from {type(value).__name__}")


ESCI = LabelSet()
