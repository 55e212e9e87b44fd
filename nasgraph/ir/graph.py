"""Graph: an immutable, typed DAG of ops, backed by networkx.

A graph is checked completely when it is made: ids are unique and well formed, every input
exists, there is no cycle, every op accepts its inputs' types. After that it never changes;
rewrites (passes) build a new Graph. Nodes are kept in a stable topological order: the order
they were given in whenever that order is valid.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
from pydantic import ValidationError

from nasgraph.errors import GraphError, ShapeError
from nasgraph.files import write_atomic
from nasgraph.ir.ops import OPS, Input, Op, Output, WeightSpec, attribute_error
from nasgraph.ir.types import TensorType

SCHEMA = "nasgraph.graph"
SCHEMA_VERSION = 1

_ID = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*")
# Unicode categories that never belong in a name: control characters (NUL, terminal escapes,
# line feeds), line and paragraph separators, lone surrogates (not encodable as UTF-8).
_NOT_IN_NAMES = {"Cc", "Cs", "Zl", "Zp"}


@dataclass(frozen=True, slots=True)
class Node:
    """One op applied to the outputs of other nodes.

    `id` is hierarchical (`stage2/block1/conv2`): its `/`-separated prefixes are the block
    scopes it belongs to. `type` is the inferred output type.
    """

    id: str
    op: Op
    inputs: tuple[str, ...]
    type: TensorType

    @property
    def kind(self) -> str:
        return self.op.kind

    @property
    def scope(self) -> str:
        """The enclosing block scope ('' at top level)."""
        return self.id.rpartition("/")[0]

    @property
    def param_key(self) -> str:
        """Prefix of this node's weights in a state dict: the id with '/' replaced by '.'."""
        return self.id.replace("/", ".")


NodeDef = tuple[str, Op, Sequence[str]]


def _checked_name(name: object) -> str:
    if not isinstance(name, str) or any(unicodedata.category(c) in _NOT_IN_NAMES
                                        for c in name):
        raise GraphError(f"graph name {name!r} is not one line of text; hint: remove "
                         "control characters and line breaks")
    return name


def _where(node_id: str, op: Op) -> str:
    return f"node {node_id!r} ({op.kind})"


class Graph:
    """An immutable, type-checked DAG of ops.

    Build one with `GraphBuilder` (types checked at each call) or from `(id, op, inputs)`
    triples in any order::

        >>> from nasgraph.ir import Graph, ops
        >>> g = Graph([("x", ops.Input(channels=3, height=8, width=8), []),
        ...            ("conv", ops.Conv2d(out_channels=4, kernel=3, padding=1), ["x"]),
        ...            ("out", ops.Output(), ["conv"])], name="tiny")
        >>> str(g["conv"].type)
        '4x8x8'
    """

    def __init__(self, nodes: Iterable[NodeDef | Node], name: str = "graph") -> None:
        self.name = _checked_name(name)
        defs: dict[str, tuple[Op, tuple[str, ...]]] = {}
        for item in nodes:
            node_id, op, inputs = (item.id, item.op, item.inputs) if isinstance(item, Node) \
                else item
            if not isinstance(node_id, str) or not _ID.fullmatch(node_id):
                raise GraphError(f"node id {node_id!r} is not of the form 'name/name/...' "
                                 "with letters, digits and '_'")
            if node_id in defs:
                raise GraphError(f"node {node_id!r} is defined twice; hint: ids must be unique")
            if not isinstance(op, Op):
                raise GraphError(f"node {node_id!r}: op must be an op spec, got {op!r}")
            defs[node_id] = (op, tuple(inputs))
        self._check_inputs(defs)
        order = self._topological_order(defs)
        types: dict[str, TensorType] = {}
        self._nodes: dict[str, Node] = {}
        for node_id in order:
            op, inputs = defs[node_id]
            in_types = [types[i] for i in inputs]
            try:
                out = op.infer(in_types)
            except ShapeError as e:
                shapes = ", ".join(f"{t} (from {i!r})" for i, t in
                                   zip(inputs, in_types, strict=True))
                raise ShapeError(f"{_where(node_id, op)}: {e}; inputs: {shapes or 'none'}") \
                    from None
            types[node_id] = out
            self._nodes[node_id] = Node(node_id, op, inputs, out)
        self._succ: dict[str, list[str]] = {i: [] for i in self._nodes}
        for node in self._nodes.values():
            for i in node.inputs:
                self._succ[i].append(node.id)
        if not self.outputs:
            raise GraphError(f"graph {name!r} has no output node; hint: mark the result with "
                             "an Output op (GraphBuilder.output)")
        for node in self.outputs:
            if self._succ[node.id]:
                raise GraphError(f"{_where(node.id, node.op)} is consumed by "
                                 f"{self._succ[node.id][0]!r}; outputs end the graph")

    @staticmethod
    def _check_inputs(defs: dict[str, tuple[Op, tuple[str, ...]]]) -> None:
        for node_id, (op, inputs) in defs.items():
            low, high = op.arity
            if len(inputs) < low or (high is not None and len(inputs) > high):
                want = f"{low}" if low == high else f"{low} to {high or 'any number of'}"
                raise GraphError(f"{_where(node_id, op)} takes {want} inputs, got {len(inputs)}")
            seen: set[str] = set()
            for i in inputs:
                if not isinstance(i, str):
                    raise GraphError(f"{_where(node_id, op)}: input {i!r} is not a node id")
                if i not in defs:
                    close = difflib.get_close_matches(i, defs, n=1)
                    hint = f"; hint: did you mean {close[0]!r}?" if close else ""
                    raise GraphError(f"{_where(node_id, op)}: input {i!r} is not a node of "
                                     f"the graph (dangling input){hint}")
                if i in seen:
                    raise GraphError(f"{_where(node_id, op)}: input {i!r} is given twice; "
                                     "hint: use an Identity node for the second use")
                if isinstance(defs[i][0], Output):
                    raise GraphError(f"{_where(node_id, op)}: input {i!r} is an output node; "
                                     "hint: consume the node the output marks")
                seen.add(i)

    @staticmethod
    def _topological_order(defs: dict[str, tuple[Op, tuple[str, ...]]]) -> list[str]:
        g = nx.DiGraph()
        g.add_nodes_from(defs)
        g.add_edges_from((i, n) for n, (_, inputs) in defs.items() for i in inputs)
        position = {n: k for k, n in enumerate(defs)}
        try:
            return list(nx.lexicographical_topological_sort(g, key=position.__getitem__))
        except nx.NetworkXUnfeasible:
            cycle = [u for u, _ in nx.find_cycle(g)]
            path = " -> ".join(repr(n) for n in [*cycle, cycle[0]])
            raise GraphError(f"{_where(cycle[0], defs[cycle[0]][0])} is on a cycle: {path}; "
                             "hint: a graph must be acyclic") from None

    # ------------------------------------------------------------------ access

    def __getitem__(self, node_id: str) -> Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in graph {self.name!r}") from None

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __iter__(self) -> Iterator[Node]:
        """The nodes in topological order."""
        return iter(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Graph) and self.name == other.name and \
            list(self._nodes.values()) == list(other._nodes.values())

    def __hash__(self) -> int:
        # computed once: a training step looks its graph's plan up by it (11 us a call
        # for a 24-node graph). Not pickled: str hashes differ from process to process.
        try:
            return self._hash
        except AttributeError:
            self._hash: int = hash((self.name, tuple(self._nodes.values())))
            return self._hash

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self)} nodes)"

    @property
    def nodes(self) -> tuple[Node, ...]:
        """All nodes in topological order."""
        return tuple(self._nodes.values())

    def topological_order(self) -> list[str]:
        """Node ids, every node after its inputs."""
        return list(self._nodes)

    @property
    def inputs(self) -> list[Node]:
        """The Input nodes, in order."""
        return [n for n in self if isinstance(n.op, Input)]

    @property
    def outputs(self) -> list[Node]:
        """The Output nodes, in order."""
        return [n for n in self if isinstance(n.op, Output)]

    def predecessors(self, node_id: str) -> list[Node]:
        """The node's inputs, in argument order."""
        return [self._nodes[i] for i in self[node_id].inputs]

    def successors(self, node_id: str) -> list[Node]:
        """The nodes consuming this node's output, in topological order."""
        self[node_id]
        return [self._nodes[i] for i in self._succ[node_id]]

    def scope(self, prefix: str) -> list[Node]:
        """The nodes inside block scope `prefix` (`stage2` holds `stage2/block1/conv1`)."""
        start = prefix.rstrip("/") + "/"
        return [n for n in self if n.id.startswith(start)]

    def scopes(self) -> list[str]:
        """Every block scope, outermost first, in order of appearance."""
        seen: dict[str, None] = {}
        for n in self:
            parts = n.id.split("/")[:-1]
            for k in range(1, len(parts) + 1):
                seen.setdefault("/".join(parts[:k]))
        return list(seen)

    def subgraph(self, prefix: str) -> Graph:
        """Block scope `prefix` as a graph of its own.

        Tensors entering the block become Input nodes (named after their producer, '/'
        replaced by '__'); nodes used outside the block, or that are graph outputs, get
        Output nodes.
        """
        members = self.scope(prefix)
        if not members:
            raise GraphError(f"graph {self.name!r} has no block scope {prefix!r}")
        inside = {n.id for n in members}
        defs: list[NodeDef] = []
        renamed: dict[str, str] = {}
        for n in members:
            for i in n.inputs:
                if i not in inside and i not in renamed:
                    renamed[i] = "in__" + i.replace("/", "__")
                    t = self[i].type
                    defs.append((renamed[i], Input(channels=t.channels, height=t.height,
                                                   width=t.width, dtype=t.dtype, flat=t.flat),
                                 []))
            defs.append((n.id, n.op, [renamed.get(i, i) for i in n.inputs]))
        for n in members:
            used_outside = any(s.id not in inside for s in self.successors(n.id))
            if used_outside and not isinstance(n.op, Output):
                defs.append(("out__" + n.id.replace("/", "__"), Output(), [n.id]))
        return Graph(defs, name=f"{self.name}:{prefix}")

    def weight_specs(self) -> dict[str, tuple[Node, WeightSpec]]:
        """Every state-dict entry of the graph, in graph order: key
        (`<node.param_key>.<suffix>`) -> (its node, its spec, from `Op.weight_specs`).

            >>> from nasgraph.ir import ops
            >>> g = Graph([("x", ops.Input(channels=3, height=8, width=8), []),
            ...            ("conv", ops.Conv2d(out_channels=4, bias=False), ["x"]),
            ...            ("out", ops.Output(), ["conv"])])
            >>> {k: spec.shape for k, (_, spec) in g.weight_specs().items()}
            {'conv.weight': (4, 3, 3, 3)}
        """
        specs = {}
        for node in self:
            inputs = [self._nodes[i].type for i in node.inputs]
            for suffix, spec in node.op.weight_specs(inputs).items():
                specs[f"{node.param_key}.{suffix}"] = (node, spec)
        return specs

    def fingerprint(self) -> str:
        """A hash of the architecture, the same for any node names and any order of
        parallel branches, and for what inference folds (`fingerprint` below)."""
        return fingerprint(self)

    def to_networkx(self) -> nx.DiGraph:
        """A networkx copy: node attributes `op` and `type`, edge attribute `index`."""
        g = nx.DiGraph(name=self.name)
        for n in self:
            g.add_node(n.id, op=n.op, type=n.type)
            for k, i in enumerate(n.inputs):
                g.add_edge(i, n.id, index=k)
        return g

    def replace_input(self, channels: int, height: int, width: int) -> Graph:
        """The same graph with its (single) input resized, every type inferred again."""
        (inp,) = self.inputs or [None]
        if inp is None:
            raise GraphError(f"graph {self.name!r} has no input to resize")
        op = inp.op.model_copy(update={"channels": channels, "height": height, "width": width})
        return Graph([(n.id, op if n is inp else n.op, n.inputs) for n in self], self.name)

    # ------------------------------------------------------------------ serialization

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "name": self.name,
            "nodes": [{"id": n.id, "op": n.kind, "attrs": n.op.attrs(),
                       "inputs": list(n.inputs), "shape": list(n.type.shape)} for n in self],
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: object, source: str = "graph JSON") -> Graph:
        """Rebuild a graph from `to_dict()` data, with a GraphError naming what is wrong."""
        if not isinstance(data, dict):
            raise GraphError(f"{source}: expected an object at the top, got "
                             f"{type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise GraphError(f"{source}: not a nasgraph graph (schema {data.get('schema')!r}, "
                             f"expected {SCHEMA!r})")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise GraphError(f"{source}: 'version' must be a positive integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise GraphError(f"{source}: schema version {version} is newer than this nasgraph "
                             f"reads ({SCHEMA_VERSION}); hint: upgrade nasgraph")
        nodes = data.get("nodes")
        name = data.get("name", "graph")
        if not isinstance(nodes, list) or not isinstance(name, str):
            raise GraphError(f"{source}: 'nodes' must be a list and 'name' a string")
        defs: list[NodeDef] = []
        shapes: dict[str, object] = {}
        for k, raw in enumerate(nodes):
            defs.append(_node_from_dict(raw, k, source))
            if isinstance(raw, dict) and "shape" in raw:
                shapes[raw["id"]] = raw["shape"]
        try:
            graph = cls(defs, name=name)
        except GraphError as e:  # ShapeError included: the same class, naming the file
            raise type(e)(f"{source}: {e}") from None
        for node_id, shape in shapes.items():
            node = graph[node_id]
            if list(node.type.shape) != shape:
                raise ShapeError(f"{source}: {_where(node_id, node.op)}: stored shape {shape} "
                                 f"differs from the inferred {list(node.type.shape)}; hint: the "
                                 "file was edited by hand or written by another version")
        return graph

    @classmethod
    def from_json(cls, text: str, source: str = "graph JSON") -> Graph:
        """Parse `to_json()` text; every problem is a one-line GraphError naming `source`."""
        if not text.strip():
            raise GraphError(f"{source}: empty, not a graph JSON")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GraphError(f"{source}, line {e.lineno}, column {e.colno}: invalid JSON "
                             f"({e.msg})") from None
        except RecursionError:
            raise GraphError(f"{source}: invalid JSON (nested too deeply)") from None
        except ValueError as e:  # an integer literal of more than 4300 digits
            raise GraphError(f"{source}: invalid JSON ({e})") from None
        return cls.from_dict(data, source)


def _node_from_dict(raw: object, index: int, source: str) -> NodeDef:
    where = f"{source}: node #{index}"
    if not isinstance(raw, dict):
        raise GraphError(f"{where}: expected an object, got {type(raw).__name__}")
    node_id, kind = raw.get("id"), raw.get("op")
    if not isinstance(node_id, str):
        raise GraphError(f"{where}: 'id' must be a string, got {node_id!r}")
    where = f"{source}: node {node_id!r}"
    if not isinstance(kind, str):
        raise GraphError(f"{where}: 'op' must be a string, got {kind!r}")
    if kind not in OPS:
        close = difflib.get_close_matches(kind, OPS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(OPS))
        raise GraphError(f"{where}: unknown op {kind!r}; hint: {hint}")
    attrs, inputs = raw.get("attrs", {}), raw.get("inputs", [])
    if not isinstance(attrs, dict):
        raise GraphError(f"{where} ({kind}): 'attrs' must be an object, got {attrs!r}")
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise GraphError(f"{where} ({kind}): 'inputs' must be a list of node ids, got {inputs!r}")
    try:
        # JSON's own rules, strictly: "8" is not 8 and true is not 1; arrays become tuples
        op = OPS[kind].model_validate_json(json.dumps(attrs), strict=True)
    except ValidationError as e:
        raise GraphError(f"{where} ({kind}): {attribute_error(OPS[kind], attrs, e)}") from None
    except RecursionError:
        raise GraphError(f"{where} ({kind}): attributes nested too deeply") from None
    return node_id, op, inputs


def save(graph: Graph, path: str | Path) -> None:
    """Write `graph` as JSON to `path`, all or nothing (nasgraph.files); a failure is a
    GraphError naming `path`."""
    write_atomic(path, graph.to_json() + "\n", error=GraphError)


def load(path: str | Path) -> Graph:
    """Read a graph written by `save`, with errors that name the file and the node."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise GraphError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise GraphError(f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset "
                         f"{e.start}); hint: a graph JSON is UTF-8") from None
    return Graph.from_json(text, source=str(path))


# --------------------------------------------------------------------------- fingerprint
# `fingerprint`: one hash per architecture, whatever its node names and branch order.
#
# Two graphs get the same fingerprint when they compute the same function shape for shape:
# the same ops with the same attributes, wired the same way. Node ids do not count, nor
# the order of the operands of the commutative ops (add, mul, and concat, whose branch order
# only permutes channels), nor what inference drops or folds: identities and dropouts are
# their input, and a conv -> BatchNorm pair is a conv with a bias. So a zoo model and its
# ONNX round trip (which folds BN) share a fingerprint, and a search can tell a candidate it
# has trained before.
#
# The hash is a Merkle hash over the DAG: a node's is that of its op, attributes, output
# type and the hashes of its inputs (sorted for commutative ops); the graph's is that of its
# outputs in order.

COMMUTATIVE = {"add", "concat", "mul"}  # operand order changes no architecture
PASSED_ON = {"identity", "dropout"}  # the identity at inference


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _folded_conv(graph: Graph, node: Node) -> Node | None:
    """The conv a BatchNorm folds into at inference: its input, read by nothing else."""
    (src,) = node.inputs
    conv = graph[src]
    if conv.kind == "conv2d" and len(graph.successors(src)) == 1:
        return conv
    return None


def fingerprint(graph: Graph) -> str:
    """A hex digest naming the architecture of `graph` (see the comment above).

        >>> from nasgraph.ir import GraphBuilder
        >>> def net(names):
        ...     b = GraphBuilder(); x = b.input(3, 8, 8)
        ...     a, c = (b.conv(x, 4, k, padding=k // 2, name=n) for k, n in zip((1, 3), names))
        ...     _ = b.output(b.add([a, c] if names[0] == "p" else [c, a]))
        ...     return b.build()
        >>> fingerprint(net(["p", "q"])) == fingerprint(net(["r", "s"]))
        True
    """
    hashes: dict[str, str] = {}
    for node in graph:
        ins = [hashes[i] for i in node.inputs]
        if node.kind in PASSED_ON:
            hashes[node.id] = ins[0]
            continue
        attrs = node.op.attrs()
        if node.kind == "batchnorm2d" and (conv := _folded_conv(graph, node)) is not None:
            # conv -> BN is a conv with a bias, as folding makes it
            conv_attrs = {**conv.op.attrs(), "bias": True}
            hashes[node.id] = _digest("conv2d", json.dumps(conv_attrs, sort_keys=True),
                                      str(node.type), *[hashes[i] for i in conv.inputs])
            continue
        if node.kind == "conv2d" and [s.kind for s in graph.successors(node.id)] == [
                "batchnorm2d"]:
            hashes[node.id] = ""  # folded: its BN's hash stands for both
            continue
        if node.kind in COMMUTATIVE:
            weights = attrs.pop("weights", None) or [1.0] * len(ins)
            ins = sorted(f"{h}*{w!r}" for h, w in zip(ins, weights, strict=True))
        hashes[node.id] = _digest(node.kind, json.dumps(attrs, sort_keys=True),
                                  str(node.type), *ins)
    return _digest(*(hashes[n.id] for n in graph.outputs))
