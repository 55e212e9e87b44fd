"""Build a motif alone, between an input and an output, to measure it."""

from __future__ import annotations

from collections.abc import Callable

from nasgraph.ir import Graph, GraphBuilder, Tensor


def alone(motif: Callable[[GraphBuilder, Tensor], Tensor], shape: tuple[int, int, int]) -> Graph:
    b = GraphBuilder("motif")
    b.output(motif(b, b.input(*shape)))
    return b.build()
