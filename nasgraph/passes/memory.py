"""Liveness and the memory plan: which buffer every tensor lives in, from when to when, and
buffers reused once free. The one place that knows liveness: `analysis.peak_memory_bytes`
and the numba executor read it from here.

Concat inputs used by nothing else are written straight into their slice of the concat's
buffer (`in_place_concat_parts`), views share their source's buffer, and
a buffer freed after its last use is handed to the next tensor that fits in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nasgraph.ir import Graph, Node


def in_place_concat_parts(graph: Graph) -> dict[str, tuple[str, int]]:
    """Concat inputs that can be written straight into their slice of the concat's buffer.

    A part qualifies when it owns its storage (not a view, not a graph input) and the concat
    is its only consumer. Returns part id -> (concat id, channel offset in the concat).
    """
    parts: dict[str, tuple[str, int]] = {}
    for node in graph:
        if node.kind != "concat":
            continue
        offset = 0
        for i in node.inputs:
            src = graph[i]
            succ = graph.successors(i)
            if not src.op.is_alias and src.kind != "input" and len(succ) == 1:
                parts[i] = (node.id, offset)
            offset += src.type.channels
    return parts


def storage_owners(graph: Graph, concat_in_place: bool = False) -> dict[str, str]:
    """The node whose buffer holds each node's output: itself, a view's source, or (with
    `concat_in_place`) the outermost concat an in-place part is written into."""
    parts = in_place_concat_parts(graph) if concat_in_place else {}
    owner: dict[str, str] = {}
    for node in reversed(graph.nodes):  # a concat comes after its parts
        if node.id in parts:
            owner[node.id] = owner[parts[node.id][0]]
        else:
            owner[node.id] = node.id
    for node in graph:
        if node.op.is_alias:
            owner[node.id] = owner[node.inputs[0]]
    return owner


def live_ranges(graph: Graph, concat_in_place: bool = False) -> dict[str, tuple[int, int]]:
    """Buffer id -> (step allocated, step after which it is freed), steps in topological
    order; graph outputs live to the end (step len(graph))."""
    order = {n.id: k for k, n in enumerate(graph)}
    owner = storage_owners(graph, concat_in_place)
    ranges: dict[str, tuple[int, int]] = {}
    for node in graph:
        if node.op.is_alias:
            continue
        s = owner[node.id]
        start, end = ranges.get(s, (order[node.id], order[node.id]))
        ranges[s] = (min(start, order[node.id]), max(end, order[node.id]))
    for node in graph:
        for i in node.inputs:
            s = owner[i]
            ranges[s] = (ranges[s][0], max(ranges[s][1], order[node.id]))
    for out in graph.outputs:
        s = owner[out.id]
        ranges[s] = (ranges[s][0], len(graph))
    return ranges



@dataclass(frozen=True)
class MemoryPlan:
    """Where each tensor of a graph lives, per sample (multiply the bytes by the batch).

    `owner[n]` is the node whose buffer holds n's output and `channel_offset[n]` where n's
    channels start in it; `slot[owner]` is the reusable buffer (index into `slot_bytes`)
    the owner occupies. `peak_bytes` is the most bytes live at once: what
    `analysis.peak_memory_bytes(graph, concat_in_place=True)` reports;
    `allocated_bytes` (the slots' sum) is at least that.
    """

    owner: dict[str, str]
    channel_offset: dict[str, int]
    slot: dict[str, int]
    slot_bytes: tuple[int, ...]
    peak_bytes: int

    @property
    def allocated_bytes(self) -> int:
        return sum(self.slot_bytes)


def plan_memory(graph: Graph, nbytes: Callable[[Node], int] | None = None) -> MemoryPlan:
    """Assign every tensor of `graph` a buffer, reusing the best-fitting freed buffer.

    `nbytes(node)` is the bytes per sample a buffer owner is stored in (default: its
    type's; an executor that stores some tensors in another layout, padded, says so here).

        >>> from nasgraph.ir import GraphBuilder
        >>> b = GraphBuilder(); x = b.input(4, 8, 8)
        >>> _ = b.output(b.relu(b.relu(b.relu(x))))
        >>> plan = plan_memory(b.build())
        >>> plan.peak_bytes, len(plan.slot_bytes)  # relu 2 reuses the input's buffer
        (2048, 2)
    """
    owner = storage_owners(graph, concat_in_place=True)
    parts = in_place_concat_parts(graph)
    offset: dict[str, int] = {}
    for node in reversed(graph.nodes):
        if node.id in parts:
            concat, at = parts[node.id]
            offset[node.id] = offset[concat] + at
        elif node.op.is_alias:
            continue
        else:
            offset[node.id] = 0
    for node in graph:
        if node.op.is_alias:
            offset[node.id] = offset[node.inputs[0]]
    ranges = live_ranges(graph, concat_in_place=True)
    starting: dict[int, list[str]] = {}
    ending: dict[int, list[str]] = {}
    for s, (start, end) in ranges.items():
        starting.setdefault(start, []).append(s)
        ending.setdefault(end, []).append(s)
    slot_bytes: list[int] = []
    free: list[int] = []
    slot: dict[str, int] = {}
    size = {s: nbytes(graph[s]) if nbytes else graph[s].type.nbytes for s in ranges}
    live = peak = 0
    for k in range(len(graph)):
        for s in starting.get(k, []):
            need = size[s]
            fits = [i for i in free if slot_bytes[i] >= need]
            if fits:
                best = min(fits, key=slot_bytes.__getitem__)
                free.remove(best)
            else:
                best = len(slot_bytes)
                slot_bytes.append(need)
            slot[s] = best
            live += need
        peak = max(peak, live)
        for s in ending.get(k, []):
            free.append(slot[s])
            live -= size[s]
    return MemoryPlan(owner, offset, slot, tuple(slot_bytes), peak)
