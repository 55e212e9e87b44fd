"""Numbers for people: SI suffixes and counts, the one formatter of the package.

    >>> si(12_345_678), si(12_345_678, ".2f", "B"), si(950), count(1_234), count(3_456_789)
    ('12.3M', '12.35MB', '950', '1,234', '3.46e+06')
"""

from __future__ import annotations

SUFFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si(n: float, fmt: str = ".3g", unit: str = "") -> str:
    """`n` scaled to the largest SI suffix below it (k, M, G, T), formatted with `fmt`."""
    for factor, suffix in SUFFIXES:
        if abs(n) >= factor:
            return f"{n / factor:{fmt}}{suffix}{unit}"
    return f"{n:g}{unit}"


def count(n: int) -> str:
    """Exact below a million, else 3 significant digits: path counts grow like 2^depth."""
    return f"{n:,}" if n < 1_000_000 else f"{n:.3g}"
