"""The memory plan: which buffer every tensor lives in, reusing buffers by liveness.

Concat inputs used by nothing else are written straight into their slice of the concat's
buffer (`nasgraph.analysis.in_place_concat_parts`), views share their source's buffer, and
a buffer freed after its last use is handed to the next tensor that fits in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nasgraph.analysis import in_place_concat_parts, live_ranges, storage_owners
from nasgraph.ir import Graph, Node


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
