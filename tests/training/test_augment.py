"""Colour-hidden training copies: which rows, what text, and that `train` uses them."""

from __future__ import annotations

import json

import numpy as np

from esr_tf.training.augment import hide_colour_words


def _columns(rows):
    titles, colours, images = zip(*rows, strict=True)
    return {
        "title": np.array(titles, dtype=object),
        "color": np.array(colours, dtype=object),
        "image": np.array(images, dtype=object),
        "label": np.arange(len(rows), dtype=np.int32),
        "query": np.array([f"q{i}" for i in range(len(rows))], dtype=object),
    }


def test_only_rows_with_a_photo_and_a_written_colour_are_copied():
    cols = _columns(
        [
            ("Rucksack By Lumio - Orange, Nylon", "orange", "a.jpg"),
            ("Red wool sock", "red", ""),  # no photo: the copy could not be told apart
            ("Blue-green mug", "blue", "b.jpg"),  # removing "blue" would leave "green"
            ("Teapot", "", "c.jpg"),  # colour unknown
            ("Sock in RED", "red", "d.jpg"),
        ]
    )
    out = hide_colour_words(cols, rate=1.0, seed=0)
    assert out["title"][5:].tolist() == ["Rucksack By Lumio - Nylon", "Sock in"]
    assert out["label"][5:].tolist() == [0, 4] and out["query"][5:].tolist() == ["q0", "q4"]
    for key in cols:  # originals untouched, first
        assert out[key][:5].tolist() == cols[key].tolist()


def test_rate_and_seed():
    cols = _columns([(f"Red cap {i}", "red", f"{i}.jpg") for i in range(200)])
    assert len(hide_colour_words(cols, rate=0.0)["title"]) == 200
    half = hide_colour_words(cols, rate=0.5, seed=1)
    assert 60 < len(half["title"]) - 200 < 140
    assert half["title"].tolist() == hide_colour_words(cols, rate=0.5, seed=1)["title"].tolist()


def test_train_adds_the_copies_for_photo_reading_modes(tiny_trained, tiny_catalogue):
    config = json.loads((tiny_trained.out_dir / "config.json").read_text())
    train_cols = tiny_catalogue.columns("train")
    expected = hide_colour_words(train_cols, rate=config["hide_colour_rate"], seed=config["seed"])
    assert len(expected["title"]) > len(train_cols["title"])  # the tiny shop has eligible rows
    assert len(tiny_trained.features["train"]) == len(expected["title"])
