"""The house rules of esr_tf, held by tests (#14, #30).

- Imports run one way: labels → data → preprocessing → models → training → export / serving →
  bench / demo → cli. A module may import its own layer and lower ones.
- No import cycles between modules, within a layer too.
- No module uses another module's `_private` names (import or attribute).
- Files ≤ 400 lines, functions ≤ 60 lines.

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
}
# Search is one package (#30) whose modules sit at the layer of what they do: the towers and
# their fit run inside `train` (training), the index graph, its export and clients next to the
# other exports, its benchmark with the benchmarks and its commands with the CLI.
SEARCH_LAYERS = {"towers": 4, "embeddings": 4, "fit": 4, "catalogue": 5, "graph": 5, "index": 5, "evaluate": 5,
                 "blend": 5, "ranking": 5, "list_head": 5, "judgments": 5, "requests": 5, "client": 5, "bench": 6,
                 "cli": 7}
# Search logs (#32): reading, simulating and the click model over catalogues; commands with the CLI.
LOGS_LAYERS = {"read": 1, "propensity": 1, "label_model": 1, "simulate": 1, "weak_labels": 1, "bench": 6, "cli": 7}
PACKAGE_LAYERS = {"search": SEARCH_LAYERS, "logs": LOGS_LAYERS}


MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def layer_of(module: str) -> int:
    """`esr_tf.models.builder` -> 3; `esr_tf.labels` -> 0; `esr_tf` (the public API) -> 8."""
    if module == "esr_tf":  # the facade over everything: no esr_tf module imports it
        return 8
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in PACKAGE_LAYERS:
        layers = PACKAGE_LAYERS[parts[1]]
        return layers[parts[2]] if len(parts) > 2 else min(layers.values())  # the package itself: its lowest
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


def resolve(imported: str, modules: set[str]) -> str:
    """The module file an import names: `esr_tf.models.presets.X` -> `esr_tf.models.presets`."""
    while imported and imported not in modules:
        imported = imported.rpartition(".")[0]
    return imported


def import_graph() -> dict[str, set[str]]:
    """module -> the esr_tf modules it imports (`from package import module` names the module)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("esr_tf") and not node.level:
                targets |= {resolve(f"{node.module}.{a.name}", set(paths)) for a in node.names}
        targets |= {resolve(m, set(paths)) for m, _ in imported_modules(path)}
        graph[name] = targets - {name, ""}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in graph), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
    return cycles


def private_uses() -> list[str]:
    """`from esr_tf.m import _x` and `m._x` (m an esr_tf module) outside the module `m`."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        aliases = {}
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("esr_tf"):
                for alias in node.names:
                    if alias.name.startswith("_") and node.module != name:
                        problems.append(f"{name} (line {node.lineno}) imports {node.module}.{alias.name}")
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name.startswith("esr_tf")})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):
                problems.append(f"{name} (line {node.lineno}) uses {aliases[node.value.id]}.{node.attr}")
    return problems


def oversized() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_FILE_LINES:
            problems.append(f"{module_name(path)}: {source.count(chr(10))} lines (> {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    problems.append(f"{module_name(path)}.{node.name}: {length} lines (> {MAX_FUNCTION_LINES})")
    return problems


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


def test_no_import_cycles():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_no_private_names_across_modules():
    problems = private_uses()
    assert not problems, "\n".join(problems)


def test_files_and_functions_stay_small():
    problems = oversized()
    assert not problems, "\n".join(problems)


def test_architecture_doc_names_every_module():
    """docs/architecture.md's module table names each module of esr_tf, and only existing ones."""
    import re

    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"^\| `([\w/]+(?:\.py|/))` \|", text, flags=re.M))
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    packages = {f"{p.parent.relative_to(PACKAGE)}/" for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}
    assert modules - named == set(), f"not in docs/architecture.md: {sorted(modules - named)}"
    assert named - modules - packages == set(), f"named but gone: {sorted(named - modules - packages)}"
