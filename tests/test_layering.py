"""The layers of DESIGN.md, read from the imports of every module (at its top and inside
functions): arrows point down only, no module imports another in a circle, the heavy
frameworks are imported only where DESIGN.md says, and the IR stays at the ground floor."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

import nasgraph.search


def test_ir_and_analysis_import_no_torch_numba_or_optuna():
    code = ("import sys, nasgraph.ir, nasgraph.analysis, nasgraph.zoo, nasgraph.passes; "
            "print(sorted({'torch', 'numba', 'optuna', 'graphviz'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


PACKAGE = Path(nasgraph.__file__).parent
# utilities every layer may use: they import nothing else of nasgraph
GROUND = {"nasgraph.errors", "nasgraph.files", "nasgraph.units"}
# layer -> the layers it may import (DESIGN.md's layout; besides GROUND and itself)
ALLOWED = {
    "nasgraph.ir": set(),
    "nasgraph.analysis": {"nasgraph.ir", "nasgraph.passes"},  # liveness: passes.memory
    "nasgraph.motifs": {"nasgraph.ir"},
    "nasgraph.zoo": {"nasgraph.ir", "nasgraph.motifs"},
    "nasgraph.passes": {"nasgraph.ir"},
    "nasgraph.init": {"nasgraph.ir"},
    "nasgraph.recipe": set(),  # how a candidate trains: pydantic, no torch, for both trainers
    "nasgraph.backends": set(),
    "nasgraph.backends.torch": {"nasgraph.ir", "nasgraph.analysis", "nasgraph.passes",
                                "nasgraph.init"},
    "nasgraph.backends.numba": {"nasgraph.ir", "nasgraph.analysis", "nasgraph.passes",
                                "nasgraph.init", "nasgraph.recipe"},
    "nasgraph.drawing": {"nasgraph.ir", "nasgraph.analysis"},
    "nasgraph.data": set(),
    "nasgraph.train": {"nasgraph.ir", "nasgraph.analysis", "nasgraph.backends.torch",
                       "nasgraph.data", "nasgraph.recipe", "nasgraph.backends.numba"},
    "nasgraph.importers": {"nasgraph.ir", "nasgraph.analysis", "nasgraph.backends.torch"},
    "nasgraph.latency": {"nasgraph.ir", "nasgraph.analysis", "nasgraph.passes",
                         "nasgraph.init", "nasgraph.backends.torch",
                         "nasgraph.backends.numba"},
    # the public API: the IR, its analysis, the zoo, init_state (render on first use)
    "nasgraph": {"nasgraph.ir", "nasgraph.analysis", "nasgraph.zoo", "nasgraph.init",
                 "nasgraph.drawing"},
}
ALLOWED["nasgraph.search"] = {layer for layer in ALLOWED if layer != "nasgraph"}
# frameworks -> the layers that may import them
FRAMEWORKS = {
    "torch": {"nasgraph.backends.torch", "nasgraph.train", "nasgraph.data", "nasgraph.search",
              "nasgraph.latency", "nasgraph.importers"},
    "optuna": {"nasgraph.search"},
    "numba": {"nasgraph.backends.numba"},
    "graphviz": {"nasgraph.drawing"},
    "onnx": {"nasgraph.importers", "nasgraph.backends.torch", "nasgraph.latency"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The modules a file imports, at its top or inside functions: `from a import b`
    imports module a.b when there is one (a package's __init__ importing its submodules is
    no circle), else a."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = {f"{node.module}.{alias.name}" for alias in node.names}
            submodules = {name for name in names if _is_module(name)}
            found |= submodules
            if len(submodules) < len(names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


MODULES = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> str:
    """The DESIGN.md layer of a module: nasgraph.backends.torch.lower -> nasgraph.backends.torch."""
    parts = module.split(".")
    depth = 3 if parts[1:2] == ["backends"] and len(parts) > 2 else 2
    return ".".join(parts[:depth])


def _nasgraph_imports(path: Path) -> set[str]:
    """The nasgraph modules a file imports, at its top or inside functions."""
    return {name for name in _imports(path) if name.startswith("nasgraph.")}


def test_no_nasgraph_module_imports_another_in_a_circle():
    graph = nx.DiGraph()
    graph.add_edges_from((module, target) for module, imported in MODULES.items()
                         for target in imported if target in MODULES and target != module)
    assert graph.number_of_edges() > 100  # the walk found the imports
    cycles = list(nx.simple_cycles(graph))
    assert cycles == [], f"import circles: {cycles[:5]}"


def test_every_layer_imports_only_the_layers_below_it():
    wrong = []
    for module, imported in MODULES.items():
        layer = _layer(module)
        if layer in ("nasgraph.cli", "nasgraph.__main__") or layer in GROUND:
            continue
        assert layer in ALLOWED, f"{module}: a layer DESIGN.md does not name"
        for target in imported:
            if target.startswith("nasgraph.") and target in MODULES:
                to = _layer(target)
                if to != layer and to not in GROUND and to not in ALLOWED[layer]:
                    wrong.append(f"{module} imports {target}")
    assert wrong == [], "\n".join(wrong)


def test_nothing_but_the_cli_imports_the_cli():
    users = [m for m, imported in MODULES.items() if _layer(m) not in
             ("nasgraph.cli", "nasgraph.__main__") and any(_layer(t) == "nasgraph.cli"
                                                           for t in imported)]
    assert users == []


def test_the_ground_floor_imports_no_other_part_of_nasgraph():
    for module in GROUND:
        assert {t for t in MODULES[module] if t.startswith("nasgraph")} <= GROUND, module


def test_frameworks_are_imported_only_where_design_says():
    wrong = [f"{module} imports {target}" for module, imported in MODULES.items()
             for target in imported
             if (framework := target.split(".")[0]) in FRAMEWORKS
             and _layer(module) not in FRAMEWORKS[framework]]
    assert wrong == [], "\n".join(wrong)


def test_the_ir_imports_pydantic_networkx_numpy_and_the_standard_library_only():
    allowed = {"pydantic", "networkx", "numpy", "nasgraph", "__future__"}
    for module, imported in MODULES.items():
        if _layer(module) == "nasgraph.ir":
            outside = {t.split(".")[0] for t in imported} - allowed - sys.stdlib_module_names
            assert outside == set(), module


def test_the_search_modules_import_each_other_as_a_dag():
    package = Path(nasgraph.search.__file__).parent
    modules = {f"nasgraph.search.{p.stem}": p for p in package.glob("*.py")
               if p.stem != "__init__"}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in _nasgraph_imports(path)
                             if target in modules)
    assert graph.number_of_edges() > 10  # the walk found the imports
    cycles = list(nx.simple_cycles(graph))
    assert cycles == [], f"import circles in nasgraph/search: {cycles}"
