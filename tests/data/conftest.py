"""Fixtures for the data-layer tests (helpers live in data_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import EXAMPLES, PRODUCTS, image_bytes, write_esci, write_rows

from esr_tf.data import generate_demo_shop


@pytest.fixture
def make_catalogue(tmp_path):
    """Builds a catalogue folder; `products` / `examples` rows may be edited by the test."""

    def make(products=None, examples=None, fmt="csv", folder="cat", images=True) -> Path:
        root = tmp_path / folder
        (root / "images").mkdir(parents=True, exist_ok=True)
        if images:
            (root / "images" / "p1.jpg").write_bytes(image_bytes("JPEG"))
            (root / "images" / "p2.png").write_bytes(image_bytes("PNG", colour="blue"))
        write_rows(root / f"products.{fmt}", PRODUCTS if products is None else products)
        write_rows(root / f"examples.{fmt}", EXAMPLES if examples is None else examples)
        return root

    return make


@pytest.fixture(scope="session")
def tiny_shop(tmp_path_factory) -> Path:
    return generate_demo_shop(tmp_path_factory.mktemp("tiny_shop"), seed=0, size="tiny")


@pytest.fixture(scope="session")
def small_shop(tmp_path_factory) -> Path:
    return generate_demo_shop(tmp_path_factory.mktemp("small_shop"), seed=3, size="small")


@pytest.fixture
def esci_files(tmp_path) -> tuple[Path, Path]:
    return write_esci(tmp_path / "esci")
