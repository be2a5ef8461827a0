"""mdr's imports flow one way: no circle, and each layer imports only the layers below it.

The graph is read with :mod:`ast` from the source (every ``import`` statement: module level, inside functions and
under ``if TYPE_CHECKING:``), so a circle hidden in a function body counts as one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: dict[str, int] = {
    "mdr.utils": 0,
    "mdr.data": 1,
    "mdr.models": 2,
    "mdr.mining": 2,
    "mdr.evaluation": 2,
    "mdr.losses": 2,
    "mdr.distributed": 2,  # the DDP gathers losses and evaluation share
    "mdr.spec": 3,  # the typed run specification (the config read once, by mdr.validation)
    "mdr.cluster": 3,  # launch checks: the trainer against machine and launcher (a Hydra callback too)
    "mdr.run_folder": 3,
    "mdr.validation": 3,  # builds the spec from the composed config
    "mdr.stage_cache": 3,  # cached stages: keys, folders, running the schedule
    "mdr.tracking": 3,  # run names, loggers, the W&B summary
    "mdr.training": 3,  # encoder, pools and fit of one stage (mdr.stage_cache trains with it)
    "mdr.run_evaluation": 3,  # evaluation of a run and its metrics.json
    "mdr.lifecycle": 3,  # a run in its folder: claim, task, failure record
    "mdr.pipeline": 4,
    "mdr.pool_diagnostics": 4,  # the pool diagnostics CLI: composes configs and mines as mdr.training does
}
"""utils <- data <- (models, mining, evaluation, losses) <- stages <- pipeline; a module may import its own layer
and those below. ``mdr.reporting`` is outside the chain: it may import only ``mdr.utils`` and itself."""

EDGE_EXCEPTIONS: dict[str, set[str]] = {
    # the one place where Hydra configs become objects (DEVELOPERS.md): it builds readers
    "mdr.utils.instantiate": {"mdr.data.readers"},
}


def module_files(package_root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every ``.py`` file under ``package``."""
    modules = {}
    for path in sorted((package_root / package).rglob("*.py")):
        parts = list(path.relative_to(package_root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def import_graph(package_root: Path, package: str = "mdr") -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports anywhere in its source (its own package ``__init__``s left out).

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``.
    """
    modules = module_files(package_root, package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1 packages
                    package_parts = name.split(".") if is_package else name.split(".")[:-1]
                    package_parts = package_parts[: len(package_parts) - node.level + 1]
                    base = ".".join(package_parts + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]
                if not any(target in modules for target in targets):  # names defined in ``base``
                    targets = [base]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    found.add(target)
        graph[name] = found
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (``[a, b, ..., a]``) per strongly connected group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(_path_through(graph, sorted(group)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _path_through(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """A circle inside ``group`` starting at its first member (breadth-first back to the start)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    raise AssertionError(f"no circle through {group}")


def layer_of(module: str) -> int | None:
    """The declared layer of ``module`` (the longest matching prefix of :data:`LAYERS`), None if it has none."""
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` for every import against the declared direction."""
    found = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported - EDGE_EXCEPTIONS.get(module, set())):
            if module.startswith("mdr.reporting"):
                if not (target.startswith("mdr.reporting") or target.startswith("mdr.utils")):
                    found.append(f"{module} -> {target} (reporting depends only on mdr.utils)")
                continue
            mine, theirs = layer_of(module), layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                found.append(f"{module} (layer {mine}) -> {target} (layer {theirs})")
    return found


def test_every_mdr_module_has_a_layer() -> None:
    outside = ("mdr", "mdr.reporting")
    unplaced = [m for m in import_graph(ROOT) if m not in outside and not m.startswith("mdr.reporting.")]
    unplaced = [m for m in unplaced if layer_of(m) is None]
    assert not unplaced, f"add these modules to LAYERS: {unplaced}"


def test_mdr_has_no_import_circle() -> None:
    cycles = find_cycles(import_graph(ROOT))
    assert not cycles, "import circles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_mdr_imports_follow_the_layers() -> None:
    violations = layer_violations(import_graph(ROOT))
    assert not violations, "imports against the layer order:\n" + "\n".join(violations)


def _package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_circle_through_a_function_level_or_type_checking_import_is_found(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "mdr/__init__.py": "",
            "mdr/data/__init__.py": "",
            "mdr/data/a.py": "from mdr.data.b import thing\n",
            "mdr/data/b.py": "def thing():\n    from mdr.data import a\n",
            "mdr/data/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n",
            "mdr/data/d.py": "from .c import x\n",
            "mdr/data/e.py": "import mdr.data.a\n",  # imports into a circle, is not on one
        },
    )
    graph = import_graph(root)
    assert graph["mdr.data.b"] == {"mdr.data.a"}
    assert graph["mdr.data.c"] == {"mdr.data.d"}
    assert find_cycles(graph) == [
        ["mdr.data.a", "mdr.data.b", "mdr.data.a"],
        ["mdr.data.c", "mdr.data.d", "mdr.data.c"],
    ]


def test_imports_against_the_layers_are_named(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "mdr/__init__.py": "",
            "mdr/utils/__init__.py": "",
            "mdr/utils/io.py": "def helper():\n    from mdr.data.schema import X\n",
            "mdr/data/__init__.py": "",
            "mdr/data/schema.py": "from mdr.utils import io\n",
            "mdr/reporting/__init__.py": "",
            "mdr/reporting/aggregate.py": "from mdr.utils.io import helper\nfrom mdr.data import schema\n",
            "mdr/pipeline.py": "from mdr.data.schema import X\nfrom mdr.reporting import aggregate\n",
            "mdr/stage_cache.py": "from mdr import pipeline\n",
        },
    )
    assert layer_violations(import_graph(root)) == [
        "mdr.reporting.aggregate -> mdr.data.schema (reporting depends only on mdr.utils)",
        "mdr.stage_cache (layer 3) -> mdr.pipeline (layer 4)",
        "mdr.utils.io (layer 0) -> mdr.data.schema (layer 1)",
    ]


@pytest.mark.parametrize(
    ("module", "layer"), [("mdr.utils.io", 0), ("mdr.data.union", 1), ("mdr.stage_cache", 3), ("mdr.reporting.x", None)]
)
def test_layer_of(module: str, layer: int | None) -> None:
    assert layer_of(module) == layer
