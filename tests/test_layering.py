"""The IR stays at the ground floor: importing it loads no heavy framework."""

from __future__ import annotations

import subprocess
import sys


def test_ir_and_analysis_import_no_torch_numba_or_optuna():
    code = ("import sys, nasgraph.ir, nasgraph.analysis, nasgraph.zoo, nasgraph.passes; "
            "print(sorted({'torch', 'numba', 'optuna', 'graphviz'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
