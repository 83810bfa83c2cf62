"""Index arrays between versions: merge (add / replace / remove), photo-table compaction (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from esr_tf.search.catalogue import IndexArrays, IndexBuildError, merge


def _arrays(ids, photo_rows, photos, dim=2, seed=0):
    rng = np.random.default_rng(seed)
    return IndexArrays(
        product_ids=np.array(ids, dtype=object),
        titles=np.array([f"title {i}" for i in ids], dtype=object),
        embeddings=rng.standard_normal((len(ids), dim)).astype(np.float32),
        photo_tokens=np.concatenate([np.zeros((1, 2, 3)), rng.standard_normal((photos, 2, 3))]).astype(np.float32),
        photo_row=np.array(photo_rows, np.int32),
    )


def _tokens_of(arrays, pid):
    i = arrays.product_ids.tolist().index(pid)
    return arrays.photo_tokens[arrays.photo_row[i]]


def test_merge_adds_replaces_and_removes():
    old = _arrays(["a", "b", "c"], [1, 0, 2], photos=2)
    new = _arrays(["c", "d"], [1, 1], photos=1, seed=1)
    merged = merge(old, new, remove=["a"])
    assert merged.product_ids.tolist() == ["b", "c", "d"]
    np.testing.assert_array_equal(merged.embeddings[0], old.embeddings[1])
    np.testing.assert_array_equal(merged.embeddings[1], new.embeddings[0])  # "c" replaced
    np.testing.assert_array_equal(_tokens_of(merged, "d"), _tokens_of(new, "d"))
    assert merged.photo_row[0] == 0  # "b" has no photo
    assert len(merged.photo_tokens) == 2, "photo rows nobody uses are dropped"


def test_merge_refuses_unknown_and_empty():
    old = _arrays(["a"], [1], photos=1)
    with pytest.raises(IndexBuildError, match="unknown product ids"):
        merge(old, None, remove=["zz"])
    with pytest.raises(IndexBuildError, match="no products"):
        merge(old, None, remove=["a"])


def test_an_empty_catalogue_is_refused(tiny_trained, tiny_towers):
    from esr_tf.search.catalogue import embed_catalogue

    with pytest.raises(IndexBuildError, match="no products to index"):
        embed_catalogue(tiny_trained.model, tiny_towers, [])
