"""The notebooks run top to bottom (small mode), and the README stays true to the code.

Each notebook runs in a fresh kernel (`python3`, i.e. this interpreter with its ipykernel) with
`ESR_TF_NOTEBOOK_SMALL=1` (tiny demo shop, tiny random-init model) and a temporary working
folder, so nothing is written into the repository.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMALL_SWITCH = 'SMALL = os.environ.get("ESR_TF_NOTEBOOK_SMALL") == "1"'
CELL_TIMEOUT_S = 600


def _code_cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [c for c in cells if c["cell_type"] == "code"]


def test_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_quickstart.ipynb", "02_your_catalogue.ipynb", "03_serving.ipynb", "04_search_logs.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path: Path):
    """No outputs or execution counts in git, and the small-size switch comes first."""
    cells = _code_cells(path)
    dirty = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{path.name}: code cells {dirty} hold outputs; clear them before committing"
    first = "".join(cells[0]["source"])
    assert SMALL_SWITCH in first, f"{path.name}: the first code cell lacks the small-size switch"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    monkeypatch.setenv("ESR_TF_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name}: a cell failed:\n{error}")
    errors = [
        o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_test_command_is_the_ci_line():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    begin = ci.index("# --- begin README test command ---")
    end = ci.index("# --- end README test command ---")
    assert end == begin + 2, ".ci/run must hold exactly one command between its markers"
    assert f"\n{ci[begin + 1]}\n" in _readme()


def _default_text(value) -> str:
    """How the README writes a default: as it would be written in a YAML config."""
    from esr_tf.labels import ESCI

    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if value == "":
        return '""'
    if isinstance(value, dict):
        return "ESCI" if value == ESCI.get_config() else json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def test_readme_is_a_front_door_and_its_pages_exist():
    """#30: the README stays short, its two commands first, and every docs page it links exists."""
    text = _readme()
    assert len(text.splitlines()) <= 220
    assert text.index("esr-tf demo") < text.index("## The model in Python")
    for link in re.findall(r"\]\(((?:docs|export)/[^)#]+)\)", text):
        assert (ROOT / link).is_file(), f"README links {link}, which does not exist"
    for page in ("benchmarks", "configuration", "serving", "search", "feature_store", "architecture"):
        assert f"docs/{page}.md" in text, f"README does not link docs/{page}.md"


def test_readme_configuration_reference_matches_the_dataclasses():
    """The configuration reference (docs/configuration.md, linked from the README)."""
    from esr_tf.logs.weak_labels import LogLabelConfig
    from esr_tf.models.builder import ModelConfig
    from esr_tf.training.config import TrainConfig

    reference = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", reference, flags=re.M))
    for cls, prefix in ((TrainConfig, ""), (ModelConfig, "model."), (LogLabelConfig, "log_labels.")):
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if dataclasses.is_dataclass(default):
                continue
            name = prefix + f.name
            assert name in rows, f"README configuration reference lacks `{name}`"
            assert rows[name] == _default_text(default), f"README: wrong default for `{name}`"
