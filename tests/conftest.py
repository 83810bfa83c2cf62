"""Session-wide fixtures: one tiny demo shop, one tiny trained model and its export.

TensorFlow start-up plus first-step tracing costs tens of seconds on 2 cores, so test modules
share these instead of building their own.
"""

from __future__ import annotations

import pytest

from esr_tf.models.builder import TINY_MODEL  # noqa: F401  (re-exported for test modules)

# The heaviest test files first (seconds from `pytest --durations=60` on 2 cores): each xdist
# worker takes whole files, so a heavy file started last would leave the other worker idle.
HEAVY_FIRST = (
    "tests/training/test_distribute.py",  # ~500 s: multi-worker runs in subprocesses
    "tests/search/test_search_cli.py",  # ~420 s with the next one (one `tiny_index`)
    "tests/search/test_search_index.py",
    "tests/reliability/test_training_faults.py",  # ~210 s
    "tests/notebooks/test_notebooks.py",  # ~200 s
    "tests/logs/test_train_from_logs.py",  # a log-trained model's index, verified
    "tests/models/test_presets_and_legacy.py",
    "tests/bench/test_bench_smoke.py",
    "tests/training/test_trainer.py",
    "tests/reliability/test_serving_inputs.py",
    "tests/bench/test_scale_bench.py",
    "tests/preprocessing/test_product_text.py",
    "tests/reliability/test_cli_errors.py",
)
# Files that share an expensive session fixture run on one worker, so it is built once.
SAME_WORKER = {"tests/search/test_search_cli.py": "tiny_index", "tests/search/test_search_index.py": "tiny_index"}


def pytest_collection_modifyitems(items):
    """Heaviest files first (`HEAVY_FIRST`); the rest, and each file's tests, keep their order."""
    rank = {path: i for i, path in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """One file per worker (`--dist loadfile`), but the files of `SAME_WORKER` as one unit."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFixtureScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SAME_WORKER.get(path, path)

    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session")
def tiny_catalogue(tmp_path_factory):
    from esr_tf.data import generate_demo_shop, load_catalogue

    folder = generate_demo_shop(tmp_path_factory.mktemp("shop") / "demo_shop", seed=0, size="tiny")
    return load_catalogue(folder, missing_images="no_image")


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    from esr_tf.training.config import parse_config

    out = tmp_path_factory.mktemp("train")
    # No retrieval model (~10 s of tracing per run) in the runs built from this config; the shared
    # `tiny_trained` run fits one (`tiny_towers`).
    return parse_config({"epochs": 2, "batch_size": 16, "out_dir": str(out), "model": TINY_MODEL,
                         "retrieval": {"epochs": 0}})


@pytest.fixture(scope="session")
def tiny_trained(tiny_config, tiny_catalogue):
    """A `TrainResult` of 2 epochs on the tiny demo shop (random-init tiny backbones)."""
    from dataclasses import replace

    from esr_tf.training.trainer import train

    return train(replace(tiny_config, retrieval=replace(tiny_config.retrieval, epochs=30)),
                 catalogue=tiny_catalogue, verbose=0)


@pytest.fixture(scope="session")
def tiny_export(tiny_trained, tmp_path_factory):
    """`<base>/esr/1`: the SavedModel export of `tiny_trained.model`."""
    from esr_tf.export.saved_model import export_saved_model

    base = tmp_path_factory.mktemp("serving_models")
    return export_saved_model(tiny_trained.model, base, model_name="esr", version=1)


@pytest.fixture(scope="session")
def tiny_towers(tiny_trained):
    """The two-tower retrieval model `train` saved next to `tiny_trained`'s model."""
    import keras

    return keras.saving.load_model(tiny_trained.out_dir / "retrieval.keras")


@pytest.fixture(scope="session")
def tiny_index(tiny_trained, tiny_towers, tmp_path_factory):
    """`<base>/shop/1`: a search index export of the tiny demo shop (all its products)."""
    from esr_tf.search.index import export_search_index

    base = tmp_path_factory.mktemp("index_models")
    products = list(tiny_trained.catalogue.products.values())
    return export_search_index(tiny_trained.model, tiny_towers, products, base, model_name="shop")
