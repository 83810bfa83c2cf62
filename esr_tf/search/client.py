"""A Python API over an index export, in-process: what `esr-tf search` and notebook 03 use.

It loads the SavedModel as TF Serving does (TensorFlow + TF-Text only) and calls its search
signatures; answers come back as `parse_search_response` rows. A request the graph refuses
(empty query, k out of range, unknown product id) raises `SearchRequestError` (a `ValueError`)
with the graph's own message.

Example:
>>> client = SearchClient("serving_models/shop")  # doctest: +SKIP
>>> [hit["product_id"] for hit in client.search(["red sneakers"], k=3)[0]]  # doctest: +SKIP
['p00012', 'p00311', 'p00087']
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

from esr_tf.constants import DEFAULT_K
from esr_tf.export.versions import version_numbers
from esr_tf.search.requests import PRODUCT_SIGNATURES, SEARCH_OUTPUTS, ranked_rows, search_inputs


class SearchRequestError(ValueError):
    """The index refused a request; the message says which input and why."""


def resolve_export(path: str | Path) -> Path:
    """A version folder, or a model folder (`<base>/<name>`: its newest version)."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = version_numbers(path, complete=True) if path.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"{path}: no saved_model.pb here nor in a numbered version folder under it")
    return path / str(versions[0])


def graph_message(error: Exception) -> str:
    """The readable part of an InvalidArgumentError raised by a signature's checks."""
    text = getattr(error, "message", str(error))
    found = re.search(r"assertion failed: (.*)", text)
    line = found.group(1) if found else text.splitlines()[0]
    return " ".join(part.strip("[]") for part in re.findall(r"\[[^\]]*\]", line)) or line


@functools.lru_cache(maxsize=4)
def _load(export_dir: str, written_ns: int):
    """The loaded SavedModel, once per version folder and write time (a version is written once,
    atomically; `overwrite` gives the graph a new time): loading takes seconds."""
    import tensorflow as tf

    return tf.saved_model.load(export_dir)


class SearchClient:
    """Calls `search` / `search_top` / `similar_products` / `complements` of an index export."""

    def __init__(self, export_dir: str | Path) -> None:
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tokenizer ops the graph uses)

        self.export_dir = resolve_export(export_dir)
        self._tf = tf
        graph = self.export_dir / "saved_model.pb"
        self._loaded = _load(str(self.export_dir), graph.stat().st_mtime_ns)
        if "search" not in self._loaded.signatures:
            raise FileNotFoundError(f"{self.export_dir}: not a search index export (no 'search' signature; "
                                    "build one with esr-tf index)")

    @property
    def size(self) -> int:
        """Products in the index."""
        return int(self._loaded.index.product_ids.shape[0])

    def _call(self, signature: str, inputs: dict) -> list[list[dict]]:
        tf = self._tf
        if signature not in self._loaded.signatures:  # an index built before the signature existed
            raise SearchRequestError(f"{self.export_dir} has no {signature!r} signature; rebuild it with esr-tf index")
        tensors = {k: tf.constant(v, tf.int32) if isinstance(v, int) else tf.constant(list(v))
                   for k, v in inputs.items()}
        try:
            out = self._loaded.signatures[signature](**tensors)
        except tf.errors.InvalidArgumentError as error:
            raise SearchRequestError(f"{signature}: {graph_message(error)}") from None
        return ranked_rows({k: out[k].numpy().tolist() for k in SEARCH_OUTPUTS}, signature)

    def search(self, queries: Sequence[str], k: int | None = None, rerank: int | None = None) -> list[list[dict]]:
        """Ranked products for each query (`k` default 10, `rerank` default 50; 0: retrieval alone)."""
        if rerank is not None and k is None:  # the default k, capped as the `search` signature caps it
            k = min(DEFAULT_K, self.size)
        if isinstance(rerank, int) and not isinstance(rerank, bool) and rerank > self.size:
            rerank = self.size  # beyond the catalogue re-ranks all of it (and never wraps as an int32)
        try:
            signature, inputs = search_inputs(queries, k, rerank)
        except (TypeError, ValueError) as error:  # checked here too: a clear message before TF runs
            raise SearchRequestError(f"search: {error}") from None
        return self._call(signature, inputs)

    def products(self, product_ids: Sequence[str], signature: str = "similar_products") -> list[list[dict]]:
        """`similar_products` or `complements` of each product id (surrounding spaces are not part
        of an id: the catalogue loaders strip them too)."""
        if signature not in PRODUCT_SIGNATURES or signature not in self._loaded.signatures:
            raise SearchRequestError(f"{self.export_dir} has no {signature!r} signature")
        if isinstance(product_ids, str | bytes):
            raise SearchRequestError(f"{signature}: expected a list of product ids, got one string")
        return self._call(signature, {"product_id": [str(p).strip() for p in product_ids]})
