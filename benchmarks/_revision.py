"""The package as it was at a git revision, for benchmarks that compare code back to back."""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def extracted(ref: str) -> Iterator[Path]:
    """A temporary folder holding `nasgraph/` of git revision `ref` (put it on PYTHONPATH)."""
    archive = subprocess.run(["git", "archive", ref, "nasgraph"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
        yield Path(folder)
