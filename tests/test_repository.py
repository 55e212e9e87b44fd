"""The repository's text files are whole (no merge left half done), and the benchmarks name
the revision they measured."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS, THEIRS = re.compile(r"^<{7}( |$)", re.M), re.compile(r"^>{7}( |$)", re.M)


def test_no_merge_conflict_markers():
    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.toml", "*.yml", "*.cfg",
                            "Makefile", ".ci/*"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert files  # run from a git checkout
    texts = {f: (ROOT / f).read_text(errors="replace") for f in files if (ROOT / f).is_file()}
    marked = [f for f, text in texts.items() if OURS.search(text) or THEIRS.search(text)]
    assert marked == []


def test_benchmarks_name_the_revision_they_measured(monkeypatch):
    # `benchmarks._report.revision`: HEAD's short hash, `+ changes` where the code differs
    # from it, and a plain word where git cannot answer
    from benchmarks import _report

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()
    assert re.fullmatch(rf"revision {head}( \+ changes)?", _report.revision())

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(_report.subprocess, "run", no_git)
    assert _report.revision() == "revision unknown"
