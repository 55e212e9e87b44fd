"""from_torch: a PyTorch CNN (any `nn.Module`) -> a nasgraph Graph and its state dict.

The module is captured with `torch.export` and functionalized (`run_decompositions({})`:
in-place ops become out-of-place, so every fx node is one value; `conv2d`, `linear` and the
activations stay whole). Each ATen op is then mapped to IR ops by one table,
`_torch_ops.CONVERTERS`. Every imported tensor's shape is compared with the one torch
recorded for it, so a mistranslated op fails at that op instead of returning a wrong graph;
an op without an IR counterpart is refused in one line naming the op, the module and what
is supported.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx, nn

from nasgraph.errors import GraphError
from nasgraph.importers._common import ImportBuilder, node_id, op_from
from nasgraph.importers._torch_ops import (
    CONVERTERS,
    NO_OPS,
    ON_CHANNELS_LAST,
    PASS_THROUGH,
    Grouped,
    Permuted,
    getitem,
)
from nasgraph.ir import Graph, Tensor, ops


def _capture(module: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """`torch.export` in non-strict mode, else strict (TorchDynamo, which reads some Python
    the non-strict tracer cannot); a GraphError naming both failures otherwise.

    (torch.fx.symbolic_trace is no fallback: it fails on the same data-dependent control
    flow and yields module-level nodes that this table does not read.)
    """
    errors = []
    for strict in (False, True):
        try:
            return torch.export.export(module, (example_input,), strict=strict)
        except Exception as e:  # export raises many types; all mean "cannot capture"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            errors.append(f"{'strict' if strict else 'non-strict'}: {first[:160]}")
    raise GraphError(f"torch.export cannot capture {type(module).__name__} "
                     f"({'; '.join(errors)}); hint: data-dependent control flow or "
                     "Python that torch.export does not trace")


def _short(target: object) -> str:
    """`aten.relu_.default` -> `relu_`: the name of an ATen overload packet."""
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def _holds_tensor(value: object) -> bool:
    if isinstance(value, Tensor):
        return True
    return isinstance(value, list | tuple) and any(_holds_tensor(v) for v in value)


class TorchWalk:
    """One pass over an exported program's graph: the value of every fx node (an IR Tensor,
    a constant torch tensor, a Python literal or a tuple of these) and the builder.

    While an op is converted, `node` is its fx node, `raw` its arguments by schema name and
    `a` their values.
    """

    def __init__(self, program: torch.export.ExportedProgram, name: str) -> None:
        self.build = ImportBuilder(name)
        self.values: dict[fx.Node, object] = {}
        self.const_names: dict[fx.Node, str] = {}  # constant -> qualified parameter name
        self.made_by: dict[str, fx.Node] = {}  # IR node id -> the fx node that made it
        self.node: fx.Node | None = None
        self.batch: int | None = None
        self.raw: dict[str, object] = {}
        self.a: dict[str, object] = {}
        self._lift_constants(program)

    def _lift_constants(self, program: torch.export.ExportedProgram) -> None:
        """Parameters, buffers and tensor constants become constant values, named."""
        tables = {**program.state_dict, **program.constants}
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        for spec in program.graph_signature.input_specs:
            if spec.target is not None and spec.target in tables:
                node = placeholders[spec.arg.name]
                self.values[node] = tables[spec.target].detach()
                self.const_names[node] = spec.target

    # ------------------------------------------------------------------ context of an op

    @property
    def module(self) -> tuple[str, str]:
        """(module path, qualified class name) of the innermost module running the op."""
        stack = self.node.meta.get("nn_module_stack") or {}
        if not stack:
            return "", ""
        path, cls = list(stack.values())[-1]
        cls = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        return path, cls

    @property
    def where(self) -> str:
        """`aten.conv2d.default in module 'layer1.0.conv1' (Conv2d)`, for errors."""
        path, cls = self.module
        at = f"module '{path}' ({cls.rpartition('.')[2]})" if path else "the top module"
        return f"{self.node.target} in {at}"

    def refuse(self, reason: str) -> GraphError:
        """The one-line error for an op the IR cannot express."""
        supported = ", ".join(sorted({_short(t) for t in CONVERTERS}))
        return GraphError(f"cannot import {self.where}: {reason}; supported ATen ops: "
                          f"{supported}")

    def default_id(self, short: str) -> str:
        """The current op's node id: a torch.nn leaf module's own path (`layer1/0/relu`),
        else `<module path>/<short>` (`layer1/0/add`)."""
        path, cls = self.module
        if path and cls.startswith("torch.nn.modules.") and ".container." not in cls:
            return node_id(path, short)
        return node_id(f"{path}.{short}" if path else short)

    def weight_id(self, name: str, short: str) -> str:
        """The id of a weighted node: its parameter's module path (`features.0.0.weight` ->
        `features/0/0`), so state dict keys read like the source model's."""
        qualified = self.const_names.get(self.raw.get(name))
        if qualified and "." in qualified:
            return node_id(qualified.rpartition(".")[0])
        return self.default_id(short)

    # ------------------------------------------------------------------ arguments

    def value(self, arg: object) -> object:
        """An fx argument's value (lists and tuples mapped element by element)."""
        if isinstance(arg, fx.Node):
            return self.values[arg]
        if isinstance(arg, list | tuple):
            return type(arg)(self.value(a) for a in arg)
        return arg

    def _bind(self, node: fx.Node) -> None:
        """`raw` and `a`: the op's arguments by schema name, defaults filled in."""
        self.raw = {}
        schema = getattr(node.target, "_schema", None)
        if schema is not None:
            for k, arg in enumerate(schema.arguments):
                if k < len(node.args) and not arg.kwarg_only:
                    self.raw[arg.name] = node.args[k]
                elif arg.name in node.kwargs:
                    self.raw[arg.name] = node.kwargs[arg.name]
                elif arg.has_default_value():
                    self.raw[arg.name] = arg.default_value
        self.a = {name: self.value(v) for name, v in self.raw.items()}

    def tensor(self, name: str) -> Tensor:
        """Argument `name`, which must be an imported tensor (not a constant)."""
        value = self.a.get(name)
        if not isinstance(value, Tensor):
            raise self.refuse(f"argument {name!r} is a constant ({type(value).__name__}), "
                              "not a tensor computed from the input")
        return value

    def constant(self, name: str) -> np.ndarray | None:
        """Argument `name` as a float32 numpy array (a weight), or None when absent."""
        value = self.a.get(name)
        if value is None:
            return None
        if not isinstance(value, torch.Tensor):
            raise self.refuse(f"argument {name!r} must be a parameter or buffer, got "
                              f"{type(value).__name__}")
        return value.detach().to(torch.float32).cpu().numpy().copy()

    def spec(self, cls: type[ops.Op], **attrs: object) -> ops.Op:
        """`cls(**attrs)`; bad attributes are refused naming the ATen op."""
        return op_from(cls, f"cannot import {self.where}", **attrs)

    def emit(self, op: ops.Op, inputs: list[Tensor], short: str,
             weights: dict[str, np.ndarray] | None = None, wanted_id: str | None = None
             ) -> Tensor:
        """Append `op` for the current fx node (id `wanted_id`, by default `default_id`)."""
        out = self.build.add(op, inputs, wanted_id or self.default_id(short),
                             f"cannot import {self.where}", weights)
        self.made_by[out.id] = self.node
        return out

    def only_use(self, name: str) -> bool:
        """Whether argument `name` is the only use of the op that made it, which may then
        take a constant into its weights. The fx nodes that only pass the value on (a
        permute and back) count as the value itself."""
        value = self.a.get(name)
        if not isinstance(value, Tensor) or value.id not in self.made_by:
            return False
        holders = {n for n, v in self.values.items()
                   if (v.x if isinstance(v, Permuted | Grouped) else v) is value}
        readers = {u for n in holders for u in n.users if u not in holders}
        return readers == {self.node}

    # ------------------------------------------------------------------ the walk

    def run(self, graph: fx.Graph) -> None:
        """Convert every node of `graph`, in order."""
        for node in graph.nodes:
            self.node = node
            if node in self.values:
                continue
            if node.op == "placeholder":
                self.batch = node.meta["val"].shape[0]
                self.values[node] = self.build.input(tuple(node.meta["val"].shape[1:]))
            elif node.op == "call_function":
                self._bind(node)
                self.values[node] = self._call(node)
                self._check_shape(node)
            elif node.op == "output":
                self._outputs(node)
            else:
                raise self.refuse(f"fx {node.op} nodes are not supported")

    def _call(self, node: fx.Node) -> object:
        if not _holds_tensor(self.value([*node.args, *node.kwargs.values()])):
            return self._fold(node)
        if node.target is operator.getitem:
            return getitem(self)
        name = _short(node.target)
        if name in NO_OPS:
            return None
        if name in PASS_THROUGH:
            return self.value(node.args[0])
        if any(isinstance(v, Permuted) for v in self.a.values()):
            if node.target not in ON_CHANNELS_LAST:
                raise self.refuse("it applies to a channels-last view (a permute), which the "
                                  "IR has only around LayerNorm, linear layers and activations")
            return ON_CHANNELS_LAST[node.target](self)
        if node.target not in CONVERTERS:
            raise self.refuse("no nasgraph op computes it")
        return CONVERTERS[node.target](self)

    def _fold(self, node: fx.Node) -> object:
        """An op on constants only (a transposed weight, a size): computed now."""
        val = node.meta.get("val")
        if isinstance(val, int | float | bool):
            return val
        args, kwargs = self.value(node.args), self.value(dict(node.kwargs))
        with torch.no_grad():
            result = node.target(*args, **kwargs)
        sources = [a for a in node.args if isinstance(a, fx.Node) and a in self.const_names]
        if len(sources) == 1:
            self.const_names[node] = self.const_names[sources[0]]
        return result

    def _check_shape(self, node: fx.Node) -> None:
        """The imported tensor has the shape and dtype torch recorded: a safety net."""
        value, val = self.values[node], node.meta.get("val")
        if not isinstance(value, Tensor) or not isinstance(val, torch.Tensor):
            return
        if val.shape[0] != self.batch:
            raise self.refuse(f"it mixes the batch dimension ({self.batch}) with others "
                              f"(result {tuple(val.shape)})")
        if tuple(val.shape[1:]) != value.type.shape or val.dtype != torch.float32:
            raise self.refuse(f"imported as {value.type} but torch computes "
                              f"{'x'.join(map(str, val.shape[1:]))} ({val.dtype})")

    def _outputs(self, node: fx.Node) -> None:
        results = node.args[0] if isinstance(node.args[0], list | tuple) else [node.args[0]]
        for k, result in enumerate(results):
            value = self.value(result)
            if not isinstance(value, Tensor):
                raise GraphError(f"output {k} of the module is not a tensor computed from "
                                 "its input; nasgraph graphs return tensors")
            self.build.add(ops.Output(), [value], "output", f"output {k}")


def _batch_norm_counts(module: nn.Module) -> dict[str, int]:
    """Each BN's `num_batches_tracked` by module path (= the BN node's param key)."""
    return {key.removesuffix(".num_batches_tracked"): int(v)
            for key, v in module.state_dict().items() if key.endswith("num_batches_tracked")}


def from_torch(module: nn.Module, example_input: torch.Tensor
               ) -> tuple[Graph, dict[str, np.ndarray]]:
    """A nasgraph Graph computing `module` (in eval mode), and its weights.

    Node ids follow the module's structure (`layer2.0.conv1` becomes `layer2/0/conv1`),
    so the state dict's keys are the module's own and `graph.scopes()` are its blocks.

    Args:
        module: a CNN taking one N x C x H x W (or N x F) float32 tensor; it is put in
            eval mode.
        example_input: an input of the size the graph is for (IR shapes are static); a
            batch of 2 or more keeps the batch apart from the other dimensions.

    Returns:
        (graph, state): state maps `lower(graph).state_dict()`'s keys to numpy arrays
        (float32; BN's `num_batches_tracked` int64), for `lower(graph).load_state_dict` and
        `nasgraph.backends.numba.compile(graph, state)`.

    Raises:
        GraphError: one line naming the ATen op and module the IR cannot express.

    Example:
        >>> import torch
        >>> from nasgraph.importers import from_torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        >>> graph, state = from_torch(net, torch.randn(2, 3, 8, 8))
        >>> [n.id for n in graph], sorted(state)
        (['input', '0', '1', 'output'], ['0.bias', '0.weight'])
    """
    module = module.eval()
    with torch.no_grad():
        program = _capture(module, example_input).run_decompositions({})
    walk = TorchWalk(program, type(module).__name__)
    walk.run(program.graph)
    return walk.build.finish(_batch_norm_counts(module))
