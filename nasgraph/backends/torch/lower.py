"""Lowering: a nasgraph Graph -> a torch.fx.GraphModule.

One submodule per weighted node, at the node id's path (`layer1/0/conv1` becomes
`layer1.0.conv1`, so its weight is `layer1.0.conv1.weight`: the state-dict currency shared
with the Numba backend and export files). Parameter-free ops become plain function calls, so
`module.code` reads like hand-written PyTorch. The weights are `nasgraph.init_state`'s.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import fx, nn

from nasgraph.backends.torch.autocast import Autocast
from nasgraph.errors import GraphError
from nasgraph.init import init_state
from nasgraph.ir import Graph, Node, ops, walk
from nasgraph.ir.walk import outputs

# kind -> builds the submodule holding the node's weights (and buffers)
ModuleFactory = Callable[[Node, Graph], nn.Module]
# kind -> emits the node's computation into the fx graph, given its fx inputs
Emitter = Callable[[fx.Graph, Node, list[fx.Node]], fx.Node]

ACTIVATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "relu": torch.relu, "relu6": F.relu6, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "silu": F.silu, "hardswish": F.hardswish, "gelu": F.gelu,
}


def _in_channels(node: Node, graph: Graph) -> int:
    return graph[node.inputs[0]].type.channels


def _conv(node: Node, graph: Graph) -> nn.Module:
    op: ops.Conv2d = node.op
    return nn.Conv2d(_in_channels(node, graph), op.out_channels, op.kernel, op.stride, op.pad,
                     op.dilation, op.groups, op.bias)


def _bn(node: Node, graph: Graph) -> nn.Module:
    return nn.BatchNorm2d(node.type.channels, eps=node.op.eps, momentum=node.op.momentum)


def _linear(node: Node, graph: Graph) -> nn.Module:
    return nn.Linear(_in_channels(node, graph), node.op.out_features, node.op.bias)


def _dropout(node: Node, graph: Graph) -> nn.Module:
    return nn.Dropout(node.op.p)


MODULES: dict[str, ModuleFactory] = {
    "conv2d": _conv, "fused_conv2d": _conv, "batchnorm2d": _bn, "linear": _linear,
    "dropout": _dropout,
    "layernorm2d": lambda node, graph: nn.LayerNorm(node.type.channels, eps=node.op.eps),
}


def _call(fn: Callable, *args: object, **kwargs: object) -> Emitter:
    """An emitter calling `fn(*inputs, *args, **kwargs)`."""
    return lambda g, node, xs: g.call_function(fn, (*xs, *args), kwargs)


def _pool(fn: Callable) -> Emitter:
    def emit(g: fx.Graph, node: Node, xs: list[fx.Node]) -> fx.Node:
        op = node.op
        # the defaults left out, so that module.code (and the export) reads as people write
        kwargs: dict[str, object] = {"kernel_size": op.kernel, "stride": op.strides}
        if op.padding != (0, 0):
            kwargs["padding"] = op.padding
        if op.ceil_mode:
            kwargs["ceil_mode"] = True
        if isinstance(op, ops.AvgPool2d) and not op.count_include_pad:
            kwargs["count_include_pad"] = False
        return g.call_function(fn, (xs[0],), kwargs)
    return emit


def _add(g: fx.Graph, node: Node, xs: list[fx.Node]) -> fx.Node:
    weights = node.op.weights or (1.0,) * len(xs)
    terms = [x if w == 1.0 else g.call_function(operator.mul, (x, w))
             for x, w in zip(xs, weights, strict=True)]
    out = terms[0]
    for t in terms[1:]:
        out = g.call_function(operator.add, (out, t))
    return out


def _upsample(g: fx.Graph, node: Node, xs: list[fx.Node]) -> fx.Node:
    op: ops.Upsample = node.op
    kwargs: dict[str, object] = {"mode": op.mode}
    if op.size is not None:
        kwargs["size"] = op.size
    else:
        kwargs["scale_factor"] = op.scale
    if op.mode == "bilinear":
        kwargs["align_corners"] = op.align_corners
    return g.call_function(F.interpolate, (xs[0],), kwargs)


def _module(g: fx.Graph, node: Node, xs: list[fx.Node]) -> fx.Node:
    return g.call_module(node.param_key, tuple(xs))


def _fused_conv(g: fx.Graph, node: Node, xs: list[fx.Node]) -> fx.Node:
    op: ops.FusedConv2d = node.op
    y = g.call_module(node.param_key, (xs[0],))  # N x C x H x W -> N x F x H' x W'
    if op.residual:
        y = g.call_function(operator.add, (y, xs[1]))
    return y if op.act is None else g.call_function(ACTIVATIONS[op.act], (y,))


def _channel_shuffle(g: fx.Graph, node: Node, xs: list[fx.Node]) -> fx.Node:
    # N x C x H x W -> N x groups x C/groups x H x W, transposed, -> N x C x H x W: ShuffleNet's
    # view-transpose-reshape (ONNX has no channel_shuffle, torch's F.channel_shuffle is one)
    c, h, w = node.type.shape
    groups = node.op.groups
    y = g.call_function(torch.reshape, (xs[0], (-1, groups, c // groups, h, w)))
    y = g.call_function(torch.transpose, (y, 1, 2))
    return g.call_function(torch.reshape, (y, (-1, c, h, w)))


def _layer_norm(g: fx.Graph, node: Node, xs: list[fx.Node]) -> fx.Node:
    # nn.LayerNorm normalizes the last dim: on the channels-last view, and back
    y = g.call_function(torch.permute, (xs[0], (0, 2, 3, 1)))  # N x H x W x C
    y = g.call_module(node.param_key, (y,))
    return g.call_function(torch.permute, (y, (0, 3, 1, 2)))


EMITTERS: dict[str, Emitter] = {
    "conv2d": _module, "batchnorm2d": _module, "linear": _module, "dropout": _module,
    "fused_conv2d": _fused_conv,
    "activation": lambda g, node, xs: g.call_function(ACTIVATIONS[node.op.fn], (xs[0],)),
    "maxpool2d": _pool(F.max_pool2d),
    "avgpool2d": _pool(F.avg_pool2d),
    "adaptive_avgpool2d": lambda g, node, xs: g.call_function(
        F.adaptive_avg_pool2d, (xs[0], node.op.size)),
    "global_avgpool": _call(F.adaptive_avg_pool2d, 1),
    "concat": lambda g, node, xs: g.call_function(torch.cat, (xs,), {"dim": 1}),
    "add": _add,
    "mul": _call(operator.mul),
    "flatten": _call(torch.flatten, 1),
    "upsample": _upsample,
    "channel_pad": lambda g, node, xs: g.call_function(
        F.pad, (xs[0], (0, 0, 0, 0, node.op.before, node.op.after))),
    "channel_shuffle": _channel_shuffle,
    "layernorm2d": _layer_norm,
    "channel_slice": lambda g, node, xs: g.call_function(
        torch.narrow, (xs[0], 1, node.op.start, node.op.stop - node.op.start)),
    # input: a placeholder (trace); identity and output: their input (walk)
}


def _python_name(node_id: str) -> str:
    name = re.sub(r"\W", "_", node_id.replace("/", "_"))
    return name if name[0].isalpha() or name[0] == "_" else "n_" + name


def _install(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at dotted `path` under `root`, creating empty containers on the way."""
    *parents, leaf = path.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    root.add_module(leaf, module)


def trace(graph: Graph) -> tuple[nn.Module, fx.Graph]:
    """The module tree (on the meta device: shapes, no memory) and the fx graph computing
    `graph`; `lower` gives them weights. Each node's last fx node carries the IR node in
    `meta["nasgraph_node"]` and is named after it, so the exporter and passes can map fx
    back to the graph."""
    root = nn.Module()
    g = fx.Graph()

    def emit(node: Node, xs: list[fx.Node]) -> fx.Node:
        if node.kind in MODULES:
            try:
                with torch.device("meta"):  # no memory, no init: init_state's weights later
                    _install(root, node.param_key, MODULES[node.kind](node, graph))
            except KeyError as e:  # a path component that is an nn.Module attribute
                raise GraphError(f"node {node.id!r} ({node.kind}): cannot become submodule "
                                 f"{node.param_key!r}: {e.args[0]}; hint: rename the node "
                                 "(ids like 'type' or 'forward' clash with nn.Module)") from None
        value = (g.placeholder(_python_name(node.id)) if node.kind == "input"
                 else EMITTERS[node.kind](g, node, xs))
        if "nasgraph_node" not in value.meta:  # not an input's value passed on unchanged
            value.meta["nasgraph_node"] = node
            if value.op != "placeholder":
                # through fx's namespace (a plain `.name =` could repeat a name fx hands out)
                value._rename(_python_name(node.id))
        return value

    table = dict.fromkeys([*EMITTERS, "input"], emit)
    results = outputs(graph, walk(graph, table, name="the torch lowering (EMITTERS)"))
    g.output(results[0] if len(results) == 1 else tuple(results))
    return root, g


def lower(graph: Graph, state_dict: Mapping[str, object] | None = None, *,
          seed: int | None = None, channels_last: bool = False,
          autocast: str | torch.dtype | None = None) -> nn.Module:
    """A torch.fx.GraphModule computing `graph`, with the weights of `state_dict` (torch
    tensors or numpy arrays, keys as `graph.weight_specs()`), or `init_state(graph, seed)`.

    Inputs are N x C x H x W tensors in the order of `graph.inputs`; the result is one
    tensor, or a tuple when the graph has several outputs. `seed` None draws one from
    torch's global generator, so `torch.manual_seed(s)` fixes the weights too; a seed gives
    the weights the numba backend gets from `init_state` with it. `channels_last` stores
    4-D weights NHWC; `autocast` ("bf16" or "fp16") wraps the module in `Autocast`. Neither
    changes the state dict keys. The module keeps its graph (`module.meta["nasgraph_graph"]`)
    for `prepare(fold_bn=True)`, which runs the compiler passes on it.

        >>> import torch, nasgraph
        >>> from nasgraph.backends.torch import lower
        >>> m = lower(nasgraph.zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32)))
        >>> m(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> sorted(m.state_dict())[:2]
        ['bn1.bias', 'bn1.num_batches_tracked']
    """
    root, g = trace(graph)
    module = fx.GraphModule(root, g, class_name=_class_name(graph.name))
    module.meta["nasgraph_graph"] = graph
    if state_dict is None:
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
        state_dict = init_state(graph, seed)
    state = {k: torch.as_tensor(v) for k, v in state_dict.items()}
    for key, (_, spec) in graph.weight_specs().items():
        if spec.optional and key not in state:  # BN's step count, which numba's lack
            state[key] = torch.zeros(spec.shape, dtype=getattr(torch, spec.dtype))
    module.load_state_dict(state, assign=True)  # parameters stay parameters
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module if autocast is None else Autocast(module, autocast)


def _class_name(name: str) -> str:
    words = re.split(r"\W+|_", name)
    return "".join(w[:1].upper() + w[1:] for w in words if w) or "Model"
