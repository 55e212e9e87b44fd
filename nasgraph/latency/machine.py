"""Which machine a latency table was measured on, and where its cache file lives.

A table is only valid on the machine, thread count and library versions that measured it:
the file name carries a digest of all of them, so another CPU, another `--threads` or an
upgraded numba reads (and writes) another file rather than a stale one.

    >>> from nasgraph.latency.machine import machine
    >>> sorted(machine("numba", 1))[:3]
    ['cpu', 'isa', 'libraries']
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from importlib import metadata
from pathlib import Path

# the instruction sets that change which kernels numba and the BLAS run
ISA_FLAGS = ("avx512f", "avx2", "fma", "neon", "asimd")
# the libraries whose version changes a target's kernels
LIBRARIES = {"numba": ("numba", "numpy"), "torch-cpu": ("torch",), "torch-cuda": ("torch",),
             "onnxruntime": ("onnxruntime", "torch")}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux
        return ""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` says."""
    m = re.search(r"^(?:model name|Hardware|cpu model)\s*:\s*(.+)$", _cpuinfo(), re.M)
    return m.group(1).strip() if m else (platform.processor() or platform.machine())


def isa() -> list[str]:
    """The instruction-set flags of `ISA_FLAGS` the CPU has."""
    m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", _cpuinfo(), re.M)
    flags = set(m.group(1).split()) if m else set()
    return [f for f in ISA_FLAGS if f in flags]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def machine(target: str, threads: int) -> dict[str, object]:
    """What a table of `target` at `threads` threads is valid for: CPU model, ISA flags,
    threads and the versions of nasgraph and the target's libraries (read from package
    metadata: nothing is imported)."""
    return {"cpu": cpu_model(), "isa": isa(), "target": target, "threads": threads,
            "nasgraph": _version("nasgraph"),
            "libraries": {lib: _version(lib) for lib in LIBRARIES.get(target, ())}}


def cache_dir() -> Path:
    """Where latency tables are kept: $NASGRAPH_LATENCY_CACHE, else the user cache
    directory (platformdirs where installed, else ~/.cache/nasgraph/latency)."""
    if env := os.environ.get("NASGRAPH_LATENCY_CACHE"):
        return Path(env)
    try:
        import platformdirs
    except ImportError:
        return Path.home() / ".cache" / "nasgraph" / "latency"
    return Path(platformdirs.user_cache_dir("nasgraph")) / "latency"


def cache_path(identity: dict[str, object], folder: Path | None = None) -> Path:
    """The table file for `identity` (`machine`): `<target>-t<threads>-<digest>.json`."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return (folder or cache_dir()) / f"{identity['target']}-t{identity['threads']}-{digest}.json"
