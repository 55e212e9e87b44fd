"""Writing benchmark results into docs/benchmarks.md, one marked section per benchmark."""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    """One line describing where the numbers were measured: CPU, vector ISA, cores."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"),
                                        ("asimd", "NEON")) if flag in flags), "")
    return (f"{cpu}{f' ({isa})' if isa else ''}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}")


def revision() -> str:
    """The git revision measured, as `revision 1a2b3c4`, with `+ changes` where the working
    tree's `nasgraph/` or `benchmarks/` differ from it; `revision unknown` outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=DOC.parent.parent, capture_output=True,
                              text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "nasgraph", "benchmarks")
    except (OSError, subprocess.CalledProcessError):
        return "revision unknown"
    return f"revision {head}{' + changes' if changed else ''}"


def write_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace (or append) the section between `<!-- name:begin -->` and `<!-- name:end -->`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + block + "\n"
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(text)
    tmp.replace(doc)


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(a) - mean(b) and its standard error (Welch): sqrt(var_a / n_a + var_b / n_b),
    the sample variances of the lists with more than one value."""
    se = math.sqrt(sum(statistics.variance(x) / len(x) for x in (a, b) if len(x) > 1))
    return statistics.fmean(a) - statistics.fmean(b), se
