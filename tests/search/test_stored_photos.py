"""`esr-tf index` reuses the photo feature maps a training feature store holds (#34)."""

from __future__ import annotations

import json

import numpy as np

from esr_tf.search.catalogue import embed_catalogue
from esr_tf.training.feature_store import FeatureStore
from esr_tf.training.stored_photos import StoredPhotos


def test_an_index_reads_stored_photo_maps_and_matches_computing_them(tiny_trained, tiny_towers, tmp_path,
                                                                     monkeypatch):
    model, catalogue = tiny_trained.model, tiny_trained.catalogue
    FeatureStore.build(model, {"train": catalogue.columns("train")}, tmp_path / "store")
    stored = StoredPhotos.find(model, tmp_path / "store")
    train_photos = {p for p in catalogue.columns("train")["image"] if p}
    assert stored is not None and set(stored.where) == train_photos
    listing = next((tmp_path / "store").glob("*/photos-*.paths.json"))
    assert sorted(json.loads(listing.read_text())) == sorted(train_photos)

    products = list(catalogue.products.values())
    computed = embed_catalogue(model, tiny_towers, products)
    import esr_tf.search.embeddings as embeddings

    seen = []
    real = embeddings.photo_feature_maps
    monkeypatch.setattr(embeddings, "photo_feature_maps",
                        lambda m, paths, b: seen.append(list(paths)) or real(m, paths, b))
    reused = embed_catalogue(model, tiny_towers, products, stored=stored)
    computed_now = [p for call in seen for p in call]
    assert not set(computed_now) & train_photos, "stored photos are not encoded again"
    assert set(computed_now) == {p.image for p in products if p.image} - train_photos
    # float16 maps: the tokens move by the rounding only
    np.testing.assert_allclose(reused.photo_tokens, computed.photo_tokens, atol=5e-2)
    np.testing.assert_array_equal(reused.photo_row, computed.photo_row)


def test_other_encoders_or_an_empty_folder_find_nothing(tiny_trained, tmp_path):
    assert StoredPhotos.find(tiny_trained.model, tmp_path) is None
    folder = tmp_path / "x"
    folder.mkdir()
    assert StoredPhotos.find(tiny_trained.model, folder) is None


def test_index_finds_the_runs_own_store_or_the_flag(tiny_trained, tmp_path, capsys):
    import argparse

    import pytest

    from esr_tf.search.cli import stored_photos_for

    model = tiny_trained.model
    run = tmp_path / "run"
    run.mkdir()
    store = tmp_path / "store"
    FeatureStore.build(model, {"train": tiny_trained.catalogue.columns("train")}, store)
    (run / "config.json").write_text(json.dumps({"feature_store": str(store)}))
    found = stored_photos_for(model, argparse.Namespace(model=str(run / "model.keras"), feature_store=None))
    assert found is not None and "photos' feature maps to reuse" in capsys.readouterr().out
    (run / "config.json").write_text(json.dumps({"feature_store": ""}))  # trained in RAM: nothing to reuse
    assert stored_photos_for(model, argparse.Namespace(model=str(run / "model.keras"), feature_store=None)) is None
    with pytest.raises(FileNotFoundError, match="--feature-store .*: no such folder"):
        stored_photos_for(model, argparse.Namespace(model=str(run / "model.keras"), feature_store=str(tmp_path / "no")))
