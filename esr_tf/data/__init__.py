"""Catalogue data: the product / judged-query model, its loaders, and the demo shop.

- `load_catalogue(folder)`: the generic CSV / JSONL catalogue folder format.
- `load_esci(examples_parquet, products_parquet)`: the Amazon Shopping Queries dataset.
- `generate_demo_shop(folder)`: a small synthetic shop (text + photos) in the generic format.

Example:
>>> import tempfile
>>> cat = load_catalogue(generate_demo_shop(tempfile.mkdtemp(), size="tiny"))
>>> sorted(cat.columns("train"))[:3]
['brand', 'bullets', 'color']
"""

from esr_tf.data.catalogue import (
    Catalogue,
    CatalogueError,
    Example,
    Product,
    describe_catalogue,
)
from esr_tf.data.csv_jsonl import load_catalogue, load_products, read_product_ids
from esr_tf.data.demo_shop import generate_demo_shop
from esr_tf.data.esci import load_esci
from esr_tf.data.image_files import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, check_image_file

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIDE",
    "Catalogue",
    "CatalogueError",
    "Example",
    "Product",
    "check_image_file",
    "describe_catalogue",
    "generate_demo_shop",
    "load_catalogue",
    "load_esci",
    "load_products",
    "read_product_ids",
]
