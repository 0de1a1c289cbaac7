"""The layering the code promises: imports flow one way,

    command line → training → zoo's library → schemes / architectures → layers

read from the source (every import statement, function-level ones included: lazy imports
are where cycles hid) and checked by importing ``zoo`` in a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the command line: the only modules that may import training and zoo's library alike
COMMAND_LINE = {"zoo.cli", "training.cli", "training.__main__"}
#: what the schemes and architectures build on: layers and helpers that import nothing above them
BUILDING_BLOCKS = {"zoo._env", "zoo.layers", "zoo.distillation", "zoo.recalibration", "zoo.files", "zoo.text"}
LAYERS = ["building blocks", "schemes / architectures", "zoo's library", "training", "command line"]


def _modules() -> dict[str, Path]:
    modules = {}
    for package in ("zoo", "training"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _targets(module: str, node: ast.AST) -> set[str]:
    """The modules of the two packages an import statement in ``module`` loads: what it
    names, and the packages above it whose ``__init__`` runs first (unless ``module`` is
    inside them, where they are already running)."""
    if isinstance(node, ast.Import):
        named = {alias.name for alias in node.names}
    else:
        if node.level:
            base = module.split(".")
            if MODULES[module].name != "__init__.py":
                base = base[:-1]
            base = base[:len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module
        # ``from package import name``: the submodule ``name`` if there is one, else the package
        named = {f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source for alias in node.names}
    loaded = set()
    for name in named:
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            target = ".".join(parts[:end])
            if target in MODULES and target != module and not module.startswith(target + "."):
                loaded.add(target)
    return loaded


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[module] = set().union(*(_targets(module, node) for node in ast.walk(tree)
                                      if isinstance(node, (ast.Import, ast.ImportFrom))))
    return graph


GRAPH = _graph()


def _layer(module: str) -> int:
    if module in COMMAND_LINE:
        return 4
    if module.split(".")[0] == "training":
        return 3
    if module.startswith(("zoo.schemes", "zoo.architectures")):
        return 1
    return 0 if module in BUILDING_BLOCKS else 2


def _is_method_module(module: str) -> bool:
    """A scheme's own module (``zoo.schemes.rbnn``), not the package or the shared base."""
    return module.startswith("zoo.schemes.") and module != "zoo.schemes.base"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_scan_sees_every_module_and_lazy_import():
    assert {"zoo", "zoo.cli", "zoo.registry", "zoo.layers", "training.loop", "training.recipes"} <= set(MODULES)
    assert "zoo.architectures.searched.config" in GRAPH["zoo.registry"]
    assert "training" in GRAPH["zoo.cli"] and "training.cli" in GRAPH["zoo.cli"]  # the package runs first
    assert "training.loop" in GRAPH["training.cli"]  # imported inside run()


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_only_go_down_the_layers():
    upward = [f"{module} ({LAYERS[_layer(module)]}) imports {target} ({LAYERS[_layer(target)]})"
              for module, targets in sorted(GRAPH.items()) for target in sorted(targets)
              if _layer(target) > _layer(module)]
    assert upward == []


def test_nothing_in_zoo_but_its_command_line_imports_training():
    assert [module for module, targets in GRAPH.items() if module.split(".")[0] == "zoo" and module != "zoo.cli"
            and any(t.split(".")[0] == "training" for t in targets)] == []


def test_schemes_and_architectures_do_not_import_each_other():
    crossing = [(module, target) for module, targets in GRAPH.items() for target in targets
                for a, b in (("zoo.schemes", "zoo.architectures"), ("zoo.architectures", "zoo.schemes"))
                if module.startswith(a) and target.startswith(b)]
    assert crossing == []


def test_layers_import_no_scheme_or_architecture():
    assert {target for module in BUILDING_BLOCKS for target in GRAPH[module]} <= BUILDING_BLOCKS


def test_zoo_library_reaches_a_method_only_through_the_registry():
    """A new method adds a scheme module (and registers it): nothing in the library, e.g.
    compress or deploy, names one method's module."""
    assert [(module, target) for module, targets in sorted(GRAPH.items()) if _layer(module) == 2
            for target in sorted(targets) if _is_method_module(target)] == []


def test_no_module_imports_another_ones_private_names():
    private = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("zoo", "training"):
                private += [f"{module}: from {node.module} import {alias.name}" for alias in node.names
                            if alias.name.startswith("_") and f"{node.module}.{alias.name}" not in MODULES]
    assert private == []


def test_import_zoo_loads_neither_training_nor_the_optional_heavy_libraries():
    code = ("import sys, zoo\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'training', 'keras_tuner', "
            "'tensorflow_model_optimization', 'tensorflow_datasets'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("module", sorted(COMMAND_LINE | BUILDING_BLOCKS))
def test_the_named_modules_exist(module):
    assert module in MODULES
