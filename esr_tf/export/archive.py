"""`ServingArchive`: the one writer of every esr_tf SavedModel (relevance export, search index).

TF Serving loads a SavedModel with the C++ `LoadSavedModel`, which restores each variable of
the checkpoint into the graph node of the object that was saved, then runs the signatures.
A Keras 3 variable reached through object tracking (a Keras model as an attribute of a
`tf.Module`, or `ExportArchive.track(model)`) is saved as a *new* `tf.Variable` copied from the
one the traced functions read (keras-team/keras#20095, `esr_tf.upstream`): the C++ loader
restores the copy, the signatures read a variable nothing restored ("Could not find variable
…"), while Python's loader happens to bind both. `ServingArchive` therefore tracks exactly the
`tf.Variable`s its signatures read, each once, and refuses children that hold Keras variables:
every variable in the checkpoint is one a signature reads, and the export holds each weight once.

Example:
>>> import tensorflow as tf
>>> v = tf.Variable(2.0)
>>> f = tf.function(lambda x: x * v, input_signature=[tf.TensorSpec([None], tf.float32)])
>>> archive = ServingArchive({"serving_default": f})
>>> [x.shape.as_list() for x in signature_variables(archive.signatures)]
[[]]
>>> archive.write_out(tempfile.mkdtemp() + "/m")  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile  # noqa: F401  (the docstring example)
from collections.abc import Mapping
from pathlib import Path

import keras
import tensorflow as tf


def signature_variables(signatures: Mapping) -> list[tf.Variable]:
    """The `tf.Variable`s the concrete functions of `signatures` read, each once, in order."""
    seen: dict[int, tf.Variable] = {}
    for fn in signatures.values():
        concrete = fn.get_concrete_function() if hasattr(fn, "get_concrete_function") else fn
        for variable in concrete.variables:
            seen.setdefault(id(variable), variable)
    return list(seen.values())


class ServingArchive:
    """Signatures (name -> `tf.function` with an input signature) and named `tf.Module` children
    (e.g. a search index's catalogue variables, read back by name) for one SavedModel."""

    def __init__(self, signatures: Mapping, **children: tf.Module) -> None:
        if "serving_default" not in signatures:
            raise ValueError(f"a TF Serving export needs a 'serving_default' signature; got {sorted(signatures)}")
        self.signatures = dict(signatures)
        self.children = children

    def _root(self) -> tf.Module:
        root = tf.Module()
        for name, child in self.children.items():
            setattr(root, name, child)
        # A variable a child holds keeps the child's path in the checkpoint (`index/...`).
        held = {id(v) for child in self.children.values() for v in tf.train.TrackableView(child).descendants()}
        root.signature_variables = [v for v in signature_variables(self.signatures) if id(v) not in held]
        for item in tf.train.TrackableView(root).descendants():
            if isinstance(item, keras.Variable):  # keras-team/keras#20095: C++ would not restore it
                raise TypeError(f"export child tracks Keras variable {item.path!r}; track tf.Variables only")
        return root

    def write_out(self, filepath: str | Path, **kwargs) -> None:
        """Writes the SavedModel (`kwargs`: as `keras.export.ExportArchive.write_out`, ignored)."""
        tf.saved_model.save(self._root(), str(filepath), signatures=self.signatures)
