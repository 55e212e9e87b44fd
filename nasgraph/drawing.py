"""Pictures of graphs, drawn by graphviz: one node per op (or per merged conv-BN-activation
chain, or per collapsed block), blocks as nested clusters, tensor shapes on the edges.

What is drawn is decided first, without graphviz, as a list of units (`plan`); `to_dot`
turns the plan into DOT source and `render` runs the `dot` program on it. The module is
imported only when a picture is asked for: the IR and the analysis never load graphviz.

    >>> import nasgraph
    >>> from nasgraph.drawing import plan
    >>> p = plan(nasgraph.zoo.get("resnet18"), collapse=True, depth=2)
    >>> [u.title for u in p.units if u.kind == "block"][:2]
    ['layer1/0..1', 'layer2/0']
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import graphviz

from nasgraph.analysis import multiplicity, node_costs
from nasgraph.errors import RenderError
from nasgraph.files import write_atomic
from nasgraph.ir import Graph, Node
from nasgraph.units import count, si

FORMATS = ("svg", "png", "pdf", "dot")
DIRECTIONS = ("TB", "LR", "BT", "RL")
SHOW = ("shape", "params", "macs", "latency")
# The automatic collapse depth is the deepest whose picture has at most this many nodes.
PAGE_NODES = 40

FONT = "Helvetica"

# One style per op family (Op.family); a test walks the op registry against this table.
FAMILY_STYLES: dict[str, dict[str, str]] = {
    "io": {"shape": "box", "style": "rounded,filled", "fillcolor": "#eeeeee",
           "color": "#777777"},
    "conv": {"shape": "box", "style": "rounded,filled", "fillcolor": "#d3e4fb",
             "color": "#3c6eb4"},
    "norm": {"shape": "box", "style": "rounded,filled", "fillcolor": "#dcf0dc",
             "color": "#4a9a4a"},
    "act": {"shape": "box", "style": "rounded,filled", "fillcolor": "#dcf0dc",
            "color": "#4a9a4a"},
    "pool": {"shape": "box", "style": "rounded,filled", "fillcolor": "#fde3c8",
             "color": "#c77a2a"},
    "merge": {"shape": "ellipse", "style": "filled", "fillcolor": "#fbd5d5",
              "color": "#b94a4a"},
    "linear": {"shape": "box", "style": "rounded,filled", "fillcolor": "#e6dafa",
               "color": "#7052b0"},
    "reshape": {"shape": "box", "style": "rounded,dashed", "fillcolor": "#ffffff",
                "color": "#999999", "fontcolor": "#555555"},
}
# Ops of one family that people tell apart at a glance.
KIND_STYLES: dict[str, dict[str, str]] = {
    "concat": {"shape": "box", "style": "filled", "fillcolor": "#fff1b8", "color": "#b39500"},
    "input": {"shape": "invhouse"},
    "output": {"shape": "house"},
}
BLOCK_STYLE = {"shape": "box", "style": "rounded,filled,bold", "fillcolor": "#c9d7f2",
               "color": "#2f4f8f"}
CLUSTER_FILLS = ("#f5f7fa", "#e9eef4")

# conv -> bn -> act chains merge into their head: which kinds each kind may absorb next.
_ABSORBS = {"conv2d": ("batchnorm2d", "activation"), "batchnorm2d": ("activation",),
            "linear": ("activation",)}


@dataclass
class Unit:
    """One drawn node: a (merged) op or a collapsed block (repeated `count` times)."""

    id: str  # DOT name and SVG id: the head node's id, or the block's scope with a '/'
    kind: Literal["op", "block"]
    cluster: str  # the scope of the cluster it is drawn in ('' at the top)
    members: list[str]  # node ids, in topological order
    scopes: list[str] = field(default_factory=list)  # blocks: one scope per repeat
    title: str = ""

    @property
    def count(self) -> int:
        return max(1, len(self.scopes))


@dataclass
class Edge:
    """One tensor drawn from the unit producing it to a unit consuming it."""

    tensor: str  # id of the node whose output flows along the edge
    tail: str  # unit ids
    head: str
    label: str


@dataclass
class Plan:
    """What a picture shows: units, the clusters holding them and the edges between them."""

    graph: Graph
    units: list[Unit]
    clusters: list[str]  # scopes drawn as clusters, outermost first
    edges: list[Edge]
    depth: int | None  # the collapse depth used (None when not collapsed)


def _scope_at(scope: str, level: int) -> str | None:
    parts = scope.split("/") if scope else []
    return "/".join(parts[:level]) if len(parts) >= level else None


def _cluster_of(scope: str, levels: int | None) -> str:
    parts = scope.split("/") if scope else []
    return "/".join(parts if levels is None else parts[:levels])


def _merge_chains(graph: Graph, nodes: Sequence[Node], levels: int | None,
                  merge: bool) -> list[Unit]:
    """One unit per op, conv-BN-activation chains merged into their head."""
    units: list[Unit] = []
    unit_of: dict[str, Unit] = {}
    for node in nodes:
        if merge and len(node.inputs) == 1 and node.inputs[0] in unit_of:
            pred = graph[node.inputs[0]]
            head = unit_of[pred.id]
            tail_kind = graph[head.members[-1]].kind
            if (head.members[-1] == pred.id and pred.scope == node.scope
                    and len(graph.successors(pred.id)) == 1
                    and node.kind in _ABSORBS.get(graph[head.members[0]].kind, ())
                    and node.kind in _ABSORBS.get(tail_kind, ())):
                head.members.append(node.id)
                unit_of[node.id] = head
                continue
        unit = Unit(node.id, "op", _cluster_of(node.scope, levels), [node.id],
                    title=node.op.label())
        units.append(unit)
        unit_of[node.id] = unit
    return units


def _signature(graph: Graph, scope: str, members: list[str]) -> tuple:
    """What makes two blocks identical: ops, types and wiring relative to the scope."""
    inside, start, outside = set(members), len(scope) + 1, {}
    rows = []
    for m in members:
        node = graph[m]
        ins = tuple(i[start:] if i in inside else ("in", outside.setdefault(i, len(outside)),
                                                   graph[i].type) for i in node.inputs)
        rows.append((m[start:], node.op, node.type, ins))
    return tuple(rows)


def _repeats(graph: Graph, units: list[Unit]) -> list[Unit]:
    """Consecutive identical blocks of one cluster, each feeding only the next, as one unit."""
    out: list[Unit] = []
    last: dict[str, tuple[Unit, tuple, set[str]]] = {}  # per cluster: unit, signature, members
    for unit in units:
        if unit.kind != "block":
            out.append(unit)
            continue
        sig = _signature(graph, unit.scopes[0], unit.members)
        mine = set(unit.members)
        prev = last.get(unit.cluster)
        if prev is not None and prev[1] == sig:
            group, _, before = prev
            feeds = {i for m in unit.members for i in graph[m].inputs} - mine
            consumers = {s.id for m in before for s in graph.successors(m)} - before
            if feeds <= before and consumers <= mine:
                group.members.extend(unit.members)
                group.scopes.append(unit.scopes[0])
                last[unit.cluster] = (group, sig, mine)
                continue
        out.append(unit)
        last[unit.cluster] = (unit, sig, mine)
    return out


def _block_title(scopes: list[str]) -> str:
    if len(scopes) == 1:
        return scopes[0]
    return f"{scopes[0]}..{scopes[-1].rpartition('/')[2]}"


def plan(graph: Graph, *, collapse: bool = False, depth: int | None = None,
         merge: bool = True, repeat: bool = True) -> Plan:
    """Decide what to draw (see `render` for the options); no graphviz involved."""
    if depth is not None and depth < 1:
        raise RenderError(f"depth {depth}: must be 1 or more (1 = the outermost blocks)")
    if collapse and depth is None:
        return _auto_depth(graph, merge, repeat)
    units: list[Unit] = []
    loose: list[Node] = []
    if collapse:
        blocks: dict[str, Unit] = {}
        for node in graph:
            scope = _scope_at(node.scope, depth)
            if scope is None:
                loose.append(node)
                continue
            if scope not in blocks:
                blocks[scope] = Unit(scope + "/", "block", _cluster_of(scope, depth - 1), [],
                                     scopes=[scope])
                units.append(blocks[scope])
            blocks[scope].members.append(node.id)
        levels = depth - 1
    else:
        loose, levels = list(graph), depth
    units += _merge_chains(graph, loose, levels, merge)
    order = {n.id: k for k, n in enumerate(graph)}
    units.sort(key=lambda u: order[u.members[0]])
    if collapse and repeat:
        units = _repeats(graph, units)
    for u in units:
        if u.kind == "block":
            u.title = _block_title(u.scopes)
    return Plan(graph, units, _clusters(units), _edges(graph, units),
                depth if collapse else None)


def _auto_depth(graph: Graph, merge: bool, repeat: bool) -> Plan:
    deepest = max((len(s.split("/")) for s in graph.scopes()), default=1)
    best = plan(graph, collapse=True, depth=1, merge=merge, repeat=repeat)
    for level in range(2, deepest + 1):
        p = plan(graph, collapse=True, depth=level, merge=merge, repeat=repeat)
        if len(p.units) > PAGE_NODES:
            break
        best = p
    return best


def _clusters(units: list[Unit]) -> list[str]:
    seen: dict[str, None] = {}
    for u in units:
        parts = u.cluster.split("/") if u.cluster else []
        for k in range(1, len(parts) + 1):
            seen.setdefault("/".join(parts[:k]))
    return list(seen)


def drawn_inputs(graph: Graph) -> dict[str, tuple[str, ...]]:
    """Each node's inputs as drawn: a concat whose inputs extend an earlier concat's takes
    that concat's output instead of the shared prefix.

    concat(x, y1, .., yk) equals concat(concat(x, y1, .., yk-1), yk): drawn so, a DenseNet
    block has O(n) edges rather than O(n^2), which dot lays out in seconds, not minutes.
    """
    concats: dict[tuple[str, ...], str] = {}
    drawn: dict[str, tuple[str, ...]] = {}
    for node in graph:
        drawn[node.id] = node.inputs
        if node.kind != "concat":
            continue
        for k in range(len(node.inputs) - 1, 1, -1):
            earlier = concats.get(node.inputs[:k])
            if earlier is not None:
                drawn[node.id] = (earlier, *node.inputs[k:])
                break
        concats.setdefault(node.inputs, node.id)
    return drawn


def _edges(graph: Graph, units: list[Unit]) -> list[Edge]:
    unit_of = {m: u.id for u in units for m in u.members}
    edges: dict[tuple[str, str], Edge] = {}
    inputs = drawn_inputs(graph)
    for node in graph:
        head = unit_of[node.id]
        for i in inputs[node.id]:
            tail = unit_of[i]
            if tail != head and (i, head) not in edges:
                edges[(i, head)] = Edge(i, tail, head, str(graph[i].type))
    return list(edges.values())


# --------------------------------------------------------------------------- DOT


def _paths(n: int) -> str:
    return f"{count(n)} path{'s' if n != 1 else ''}"


def _html(title: str, lines: Iterable[str], bold: bool = False) -> str:
    head = html.escape(title)
    body = "".join(f'<br/><font point-size="9" color="#444444">{html.escape(t)}</font>'
                   for t in lines)
    return f"<{'<b>' + head + '</b>' if bold else head}{body}>"


def _outputs(graph: Graph, unit: Unit) -> list[Node]:
    """The members whose output leaves the unit (the last member when none does)."""
    inside = set(unit.members)
    leaving = [graph[m] for m in unit.members
               if any(s.id not in inside for s in graph.successors(m))]
    return leaving or [graph[unit.members[-1]]]


def _shape_line(graph: Graph, unit: Unit) -> str:
    return "out " + ", ".join(str(n.type) for n in _outputs(graph, unit))


def to_dot(graph: Graph, *, collapse: bool = False, depth: int | None = None,
           direction: str = "TB", show: Iterable[str] | str = (), merge: bool = True,
           repeat: bool = True, dpi: int | None = None,
           latency: Mapping[str, float] | None = None) -> str:
    """The DOT source of the picture `render` draws (same options)."""
    if direction not in DIRECTIONS:
        raise RenderError(f"direction {direction!r}: expected one of {', '.join(DIRECTIONS)}")
    show = _parse_show(show)
    if "latency" in show and latency is None:
        raise RenderError("show 'latency' needs the nodes' times: pass latency="
                          "LatencyModel(target).node_times(graph) (docs/latency.md)")
    p = plan(graph, collapse=collapse, depth=depth, merge=merge, repeat=repeat)
    costs = {c.id: c for c in node_costs(graph)}
    dot = graphviz.Digraph(graph.name, graph_attr={
        "rankdir": direction, "fontname": FONT, "fontsize": "11", "nodesep": "0.25",
        "ranksep": "0.3", "labeljust": "l", "newrank": "true",
        **({"dpi": str(dpi)} if dpi else {}),
    }, node_attr={"fontname": FONT, "fontsize": "11", "height": "0.3",
                  "margin": "0.12,0.04", "penwidth": "1.2"},
        edge_attr={"fontname": FONT, "fontsize": "9", "fontcolor": "#444444",
                   "color": "#666666", "arrowsize": "0.6"})
    children: dict[str, list[str]] = {}
    for c in p.clusters:
        children.setdefault(c.rpartition("/")[0] if "/" in c else "", []).append(c)
    members: dict[str, list[Unit]] = {}
    for u in p.units:
        members.setdefault(u.cluster, []).append(u)

    def emit(g: graphviz.Digraph, scope: str, level: int) -> None:
        for u in members.get(scope, []):
            g.node(u.id, **_node_attrs(graph, u, costs, show, latency or {}))
        for child in children.get(scope, []):
            with g.subgraph(name="cluster_" + child) as sub:
                sub.attr(id=child + "/", label=child, style="rounded,filled",
                         fillcolor=CLUSTER_FILLS[level % 2], color="#9aa5b1",
                         fontsize="10", fontcolor="#333333", **{"class": "block"})
                emit(sub, child, level + 1)

    emit(dot, "", 0)
    for e in p.edges:
        dot.edge(e.tail, e.head, label=e.label, id=f"{e.tensor}->{e.head}")
    return dot.source


def _node_attrs(graph: Graph, unit: Unit, costs: dict, show: set[str],
                latency: Mapping[str, float]) -> dict[str, str]:
    params = sum(costs[m].params for m in unit.members)
    macs = sum(costs[m].macs for m in unit.members)
    # a unit's time: its members' (those the compiler fused into another have none)
    ms = sum(latency.get(m, 0.0) for m in unit.members)
    if unit.kind == "block":
        paths = math.prod(multiplicity(graph.subgraph(s)) for s in unit.scopes)
        title = unit.title + (f" \u00d7 {unit.count}" if unit.count > 1 else "")
        lines = [f"params {si(params)} \u00b7 MACs {si(macs)}", _paths(paths)]
        if "shape" in show:
            lines.append(_shape_line(graph, unit))
        if "latency" in show:
            lines.append(_duration(ms))
        attrs = dict(BLOCK_STYLE, label=_html(title, lines, bold=True))
        attrs["class"] = "block"
        attrs["tooltip"] = (f"{_block_title(unit.scopes)}: {len(unit.members)} ops; "
                            f"params {params:,}; MACs {macs:,}; {_paths(paths)}")
    else:
        head = graph[unit.members[0]]
        lines = []
        if len(unit.members) > 1:
            lines.append(" + ".join(graph[m].op.label() for m in unit.members[1:]))
        if "shape" in show:
            lines.append(_shape_line(graph, unit))
        if "params" in show and params:
            lines.append(f"params {si(params)}")
        if "macs" in show and macs:
            lines.append(f"MACs {si(macs)}")
        if "latency" in show and ms:
            lines.append(_duration(ms))
        style = dict(FAMILY_STYLES[head.op.family], **KIND_STYLES.get(head.kind, {}))
        attrs = dict(style, label=_html(unit.title, lines))
        attrs["class"] = f"op {head.op.family} {head.kind}"
        tip = [f"{m} ({graph[m].op.label()})" for m in unit.members]
        attrs["tooltip"] = "; ".join(tip) + f" -> {_outputs(graph, unit)[-1].type}" + (
            f"; params {params:,}" if params else "") + (f"; MACs {macs:,}" if macs else "")
    attrs["id"] = unit.id
    return attrs


def _duration(ms: float) -> str:
    """A predicted time as a label: '85 \u00b5s', '1.24 ms'."""
    return f"{ms * 1e3:.0f} \u00b5s" if ms < 1 else f"{ms:.2f} ms"


def _parse_show(show: Iterable[str] | str) -> set[str]:
    items = [s.strip() for s in show.split(",")] if isinstance(show, str) else list(show)
    chosen = {s for s in items if s}
    unknown = chosen - set(SHOW)
    if unknown:
        raise RenderError(f"show {sorted(unknown)[0]!r}: expected some of {', '.join(SHOW)}")
    return chosen


# --------------------------------------------------------------------------- files

INSTALL_HINT = ("install graphviz (apt install graphviz, brew install graphviz or "
                "conda install -c conda-forge graphviz)")


def render(graph: Graph, path: str | Path, *, collapse: bool = False, depth: int | None = None,
           direction: str = "TB", show: Iterable[str] | str = (), merge: bool = True,
           repeat: bool = True, dpi: int = 96,
           latency: Mapping[str, float] | None = None) -> Path:
    """Draw `graph` into `path`: .svg, .png, .pdf (with graphviz's `dot`) or .dot (source).

    Args:
        graph: the graph to draw.
        path: the file to write; its suffix picks the format. Written atomically.
        collapse: draw each block at `depth` as one node with its params, MACs and number
            of paths; identical consecutive blocks become one node "x N" (unless
            `repeat=False`).
        depth: block level: 1 are the outermost scopes (`layer1`), 2 the next (`layer1/0`).
            Collapsed: the level drawn as nodes (default: the deepest that fits a page).
            Expanded: the deepest level drawn as clusters (default: all).
        direction: TB (top to bottom), LR, BT or RL.
        show: extra lines in op nodes: any of "shape", "params", "macs", "latency".
        merge: draw conv-BN-activation chains as one node.
        repeat: with `collapse`, draw identical consecutive blocks once, "x N".
        dpi: resolution of a PNG (150 or more for print).
        latency: predicted milliseconds per node (`LatencyModel.node_times`), drawn with
            `show="latency"`: a merged or collapsed unit shows the sum of its members'.

    Returns:
        The path written.

    Raises:
        RenderError: a bad option, or no `dot` program for an image format (the DOT
            source is then written next to `path` with the suffix .dot).

        >>> import nasgraph, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> nasgraph.render(nasgraph.zoo.get("resnet50"), folder / "resnet50.svg",
        ...                 collapse=True).name
        'resnet50.svg'
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise RenderError(f"{path}: unknown picture format {path.suffix!r}; hint: use "
                          f"{', '.join('.' + f for f in FORMATS)}")
    if dpi < 1:
        raise RenderError(f"dpi {dpi}: must be positive")
    source = to_dot(graph, collapse=collapse, depth=depth, direction=direction, show=show,
                    merge=merge, repeat=repeat, dpi=dpi if fmt == "png" else None,
                    latency=latency)
    if fmt == "dot":
        write_atomic(path, source, error=RenderError)
        return path
    try:
        data = graphviz.Source(source).pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        dot_path = path.with_suffix(".dot")
        write_atomic(dot_path, source, error=RenderError)
        raise RenderError(f"the graphviz 'dot' program was not found: wrote {dot_path} "
                          f"instead of {path}; hint: {INSTALL_HINT}") from None
    except graphviz.CalledProcessError as e:
        message = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        raise RenderError(f"{path}: dot failed ({message[0] if message else e})") from None
    write_atomic(path, data, error=RenderError)
    return path


