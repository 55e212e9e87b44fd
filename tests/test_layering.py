"""The layers: the IR stays at the ground floor (importing it loads no heavy framework), and
the search's modules import each other as a DAG, never in a circle."""

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


def _nasgraph_imports(path: Path) -> set[str]:
    """The nasgraph modules a file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("nasgraph.")}


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
