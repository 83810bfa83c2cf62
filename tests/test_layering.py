"""Imports inside esr_tf run one way: labels → data → preprocessing → models → training →
export / serving → bench / demo → cli (#14). A module may import its own layer and lower ones.

Every `import` counts, also the lazy ones inside functions and `TYPE_CHECKING` blocks: a lazy
upward import is the same dependency, only discovered later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import esr_tf

PACKAGE = Path(esr_tf.__file__).parent
# First name under esr_tf -> layer; the foundation modules (no esr_tf imports of a higher layer:
# labels, validation, the upstream registry, image limits, ...) are layer 0.
LAYERS = {
    "data": 1,
    "preprocessing": 2,
    "models": 3,
    "training": 4,
    "export": 5,
    "serving": 5,
    "bench": 6,
    "demo": 6,
    "cli": 7,
    "cli_search": 7,
}


def layer_of(module: str) -> int:
    """`esr_tf.models.builder` -> 3; `esr_tf.labels`, `esr_tf` -> 0."""
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """`(module, line)` for each esr_tf import in the file, relative imports resolved."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            # `from esr_tf import data` imports the submodule esr_tf.data.
            found += [(f"{module}.{alias.name}" if module == "esr_tf" else module, node.lineno)
                      for alias in node.names]
    return [(m, line) for m, line in found if m == "esr_tf" or m.startswith("esr_tf.")]


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for imported, line in imported_modules(path):
            if layer_of(imported) > layer_of(name):
                problems.append(f"{name} (line {line}) imports {imported}, a higher layer")
    return problems


def test_no_module_imports_a_higher_layer():
    problems = upward_imports()
    assert not problems, "\n".join(problems)


def test_the_check_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    # A lazy upward import inside a function of a data module must be reported.
    folder = tmp_path / "esr_tf" / "data"
    folder.mkdir(parents=True)
    (tmp_path / "esr_tf" / "__init__.py").write_text("")
    (folder / "__init__.py").write_text("from . import shop\n")
    (folder / "shop.py").write_text("def f():\n    from esr_tf.training import losses\n    from ..models import x\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "esr_tf")
    assert upward_imports() == [
        "esr_tf.data.shop (line 2) imports esr_tf.training, a higher layer",
        "esr_tf.data.shop (line 3) imports esr_tf.models, a higher layer",
    ]
