"""The wheel as a user gets it: built from the checkout, installed into a fresh virtual
environment, and run from a folder outside the checkout, so that nothing can come from the
source tree (issue 18: the built-in search spaces lived outside the package).

The fresh environment sees the project environment's site-packages (torch and the rest are
not downloaded again) through a `.pth` line. Such a line only adds the folder to sys.path:
the `.pth` files in it, among them the editable install of nasgraph, are not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONNOUSERSITE"] = "1"
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"{args}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the checkout (a build writes build/ and *.egg-info
    next to its sources)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT / "nasgraph", src / "nasgraph",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--no-index", "--quiet", "-w", tmp / "dist", src, cwd=tmp)
    (path,) = (tmp / "dist").glob("nasgraph-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed."""
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv)
    python = venv / "bin" / "python"
    site = Path(run(python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                    cwd=venv).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (site / "project_environment.pth").write_text("".join(f"{p}\n" for p in ours))
    # pip from the project environment; --ignore-installed: never touch its editable nasgraph
    run(python, "-I", "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
        "--quiet", wheel, cwd=venv)
    return venv


def test_the_wheel_holds_every_module_and_the_builtin_spaces(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "nasgraph/search/spaces/residual.py" in names
    ours = {p.relative_to(ROOT).as_posix() for p in (ROOT / "nasgraph").rglob("*.py")
            if "__pycache__" not in p.parts}
    assert ours - names == set()


def test_nasgraph_comes_from_the_wheel(venv, tmp_path):
    r = run(venv / "bin" / "python", "-c",
            "import nasgraph, nasgraph.search.spaces.residual as r; "
            "print(nasgraph.__file__); print(r.__file__)", cwd=tmp_path)
    for line in r.stdout.splitlines():
        assert Path(line).is_relative_to(venv), r.stdout


def test_spaces_command(venv, tmp_path):
    r = run(venv / "bin" / "nasgraph", "spaces", cwd=tmp_path)
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert {"dense", "inception", "macro", "residual"} <= set(names) and names == sorted(names)


def test_search_a_builtin_space(venv, tmp_path):
    run(venv / "bin" / "nasgraph", "search", "residual", "--dataset", "digits", "--budget",
        "200k", "--trials", "1", "--epochs", "1", "--final-seeds", "0", "--device", "cpu",
        cwd=tmp_path)
    assert (tmp_path / "runs" / "residual-digits" / "leaderboard.md").is_file()


def test_the_example_space_runs_on_the_installed_package(venv, tmp_path):
    example = ROOT / "search_spaces" / "example.py"
    run(venv / "bin" / "python", "-c",
        "import optuna; from nasgraph.search import Context, load_space; "
        f"space = load_space({str(example)!r}); "
        "study = optuna.create_study(); "
        "print(space(study.ask(), Context(input_shape=(1, 8, 8))))", cwd=tmp_path)
