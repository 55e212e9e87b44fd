"""Export: a Graph as a standalone PyTorch source file (+ safetensors), TorchScript or ONNX.

The Python export is generated from the Graph, one line per node with its output shape, and
imports only torch and safetensors: the result runs where nasgraph is not installed.
Submodules sit at the paths `lower` gives them, so the two share state dicts.

A graph file is untrusted input: its name and node ids reach the generated source only
escaped (`_escaped`), so no text in a graph can become code.
"""

from __future__ import annotations

import keyword
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from nasgraph.backends.torch.lower import _python_name, lower
from nasgraph.backends.torch.weights import import_weights
from nasgraph.errors import NasgraphError
from nasgraph.files import written_together
from nasgraph.ir import Graph, Node, ops

Format = Literal["python", "torchscript", "onnx"]
# kind -> the expression computing the node from its input variables
SourceEmitter = Callable[[Node, list[str]], str]

ACTIVATION_SOURCE: dict[str, str] = {
    "relu": "torch.relu", "relu6": "F.relu6", "sigmoid": "torch.sigmoid", "tanh": "torch.tanh",
    "silu": "F.silu", "hardswish": "F.hardswish", "gelu": "F.gelu",
}


def _pair(p: tuple[int, int]) -> str:
    return str(p[0]) if p[0] == p[1] else f"({p[0]}, {p[1]})"


def _pool_source(fn: str) -> SourceEmitter:
    def emit(node: Node, xs: list[str]) -> str:
        op = node.op
        args = [xs[0], _pair(op.kernel), f"stride={_pair(op.strides)}"]
        if op.padding != (0, 0):
            args.append(f"padding={_pair(op.padding)}")
        if op.ceil_mode:
            args.append("ceil_mode=True")
        if isinstance(op, ops.AvgPool2d) and not op.count_include_pad:
            args.append("count_include_pad=False")
        return f"{fn}({', '.join(args)})"
    return emit


def _add_source(node: Node, xs: list[str]) -> str:
    weights = node.op.weights or (1.0,) * len(xs)
    # the same left-to-right sum as the lowering, so results are bit-identical
    return " + ".join(x if w == 1.0 else f"{x} * {w!r}" for x, w in zip(xs, weights, strict=True))


def _upsample_source(node: Node, xs: list[str]) -> str:
    op: ops.Upsample = node.op
    how = f"size={op.size!r}" if op.size is not None else f"scale_factor={op.scale!r}"
    corners = f", align_corners={op.align_corners}" if op.mode == "bilinear" else ""
    return f"F.interpolate({xs[0]}, {how}, mode={op.mode!r}{corners})"


def _conv_module(node: Node, graph: Graph) -> str:
    op: ops.Conv2d = node.op
    args = [str(graph[node.inputs[0]].type.channels), str(op.out_channels), _pair(op.kernel)]
    for name, value, default in (("stride", op.stride, (1, 1)), ("padding", op.pad, (0, 0)),
                                 ("dilation", op.dilation, (1, 1))):
        if value != default:
            args.append(f"{name}={_pair(value)}")
    if op.groups != 1:
        args.append(f"groups={op.groups}")
    if not op.bias:
        args.append("bias=False")
    return f"nn.Conv2d({', '.join(args)})"


def _bn_module(node: Node, graph: Graph) -> str:
    op: ops.BatchNorm2d = node.op
    extra = (f", eps={op.eps!r}" if op.eps != 1e-5 else "") + (
        f", momentum={op.momentum!r}" if op.momentum != 0.1 else "")
    return f"nn.BatchNorm2d({node.type.channels}{extra})"


def _linear_module(node: Node, graph: Graph) -> str:
    bias = "" if node.op.bias else ", bias=False"
    return f"nn.Linear({graph[node.inputs[0]].type.channels}, {node.op.out_features}{bias})"


# kind -> the constructor of the submodule holding the node's weights (lower's MODULES)
MODULE_SOURCE: dict[str, Callable[[Node, Graph], str]] = {
    "conv2d": _conv_module, "fused_conv2d": _conv_module, "batchnorm2d": _bn_module,
    "linear": _linear_module, "dropout": lambda node, graph: f"nn.Dropout({node.op.p!r})",
}


def _fused_conv_source(node: Node, xs: list[str]) -> str:
    op: ops.FusedConv2d = node.op
    expr = f"{_module_access(node.param_key)}({xs[0]})"
    if op.residual:
        expr = f"{expr} + {xs[1]}"
    return expr if op.act is None else f"{ACTIVATION_SOURCE[op.act]}({expr})"

SOURCE: dict[str, SourceEmitter] = {
    "activation": lambda node, xs: f"{ACTIVATION_SOURCE[node.op.fn]}({xs[0]})",
    "maxpool2d": _pool_source("F.max_pool2d"),
    "avgpool2d": _pool_source("F.avg_pool2d"),
    "adaptive_avgpool2d": lambda node, xs: f"F.adaptive_avg_pool2d({xs[0]}, {node.op.size!r})",
    "global_avgpool": lambda node, xs: f"F.adaptive_avg_pool2d({xs[0]}, 1)",
    "concat": lambda node, xs: f"torch.cat([{', '.join(xs)}], dim=1)",
    "add": _add_source,
    "mul": lambda node, xs: f"{xs[0]} * {xs[1]}",
    "flatten": lambda node, xs: f"torch.flatten({xs[0]}, 1)",
    "upsample": _upsample_source,
    "channel_pad": lambda node, xs: (
        f"F.pad({xs[0]}, (0, 0, 0, 0, {node.op.before}, {node.op.after}))"),
    "fused_conv2d": _fused_conv_source,
    # other modules (MODULE_SOURCE) are called as self.<path>(x); identity and output emit
    # nothing
}

_RESERVED = {"self", "torch", "nn", "F", "Path", "load_file", "Model", "load_model"}
_MODULE_ATTRS = set(dir(nn.Module))


def _escaped(text: str) -> str:
    """`text` escaped for the inside of a double-quoted string, docstring or comment: every
    backslash, double quote and unprintable character (NUL, line breaks of every kind) as an
    escape sequence, so it cannot end the string or the line. Plain text is unchanged."""
    return repr(text)[1:-1].replace('"', '\\"')


def _variable_base(node_id: str) -> str:
    parts = node_id.split("/")
    leaf = parts[-1] if parts[-1][0].isalpha() or len(parts) == 1 else "_".join(parts[-2:])
    name = re.sub(r"\W", "_", leaf, flags=re.ASCII)
    return name if name[0].isalpha() or name[0] == "_" else "x" + name


def _is_attribute_name(name: str) -> bool:
    """Whether `owner.name` is valid Python and cannot hit an nn.Module method."""
    return name.isascii() and name.isidentifier() and not keyword.iskeyword(name) and \
        name not in _MODULE_ATTRS


def _attribute(owner: str, name: str, container: bool) -> str:
    """`owner.name` where that is valid Python and cannot hit a method, else an index."""
    if _is_attribute_name(name):
        return f"{owner}.{name}"
    return f'{owner}["{_escaped(name)}"]' if container else \
        f'getattr({owner}, "{_escaped(name)}")'


def _module_access(path: str) -> str:
    first, *rest = path.split(".")
    expr = _attribute("self", first, container=False)
    for part in rest:
        expr = _attribute(expr, part, container=True)
    return expr


def _shape_comment(node: Node) -> str:
    return "# " + " x ".join(map(str, node.type.shape))


def python_source(graph: Graph, weights_name: str | None = None) -> str:
    """The source of a standalone module computing `graph`: class `Model` and `load_model`.

    Submodules sit at the same paths as in `lower(graph)` (`layer1.0.conv1`), so their state
    dicts are interchangeable. `weights_name` is the weights file `load_model` reads by
    default, beside the source file.
    """
    init: list[str] = []
    containers: set[str] = set()
    for node in graph:
        if node.kind not in MODULE_SOURCE:
            continue
        *parents, _ = node.param_key.split(".")
        for k in range(1, len(parents) + 1):
            path = ".".join(parents[:k])
            if path not in containers:
                containers.add(path)
                init.append(f"{_assign(path)} = Block()")
        init.append(f"{_assign(node.param_key)} = {MODULE_SOURCE[node.kind](node, graph)}")

    # Variables are named after node ids; a name is reused once its value is dead, like
    # hand-written code, which keeps few activations alive at a time.
    order = {n.id: k for k, n in enumerate(graph)}
    last_use: dict[str, int] = {}  # position of the last line reading the node's variable
    for n in reversed(graph.nodes):
        last_use[n.id] = max((last_use[s.id] if s.kind in ("identity", "output") else order[s.id]
                              for s in graph.successors(n.id)), default=len(graph))
    holder: dict[str, str] = {}  # variable -> node id whose value it holds
    var: dict[str, str] = {}  # node id -> variable
    inputs = [n for n in graph if n.kind == "input"]

    def allocate(node: Node) -> str:
        base = _variable_base(node.id)
        base = base + "_" if keyword.iskeyword(base) or base in _RESERVED else base
        for k in range(len(graph) + 1):
            name = base if k == 0 else f"{base}_{k}"
            owner = holder.get(name)
            if owner is None or last_use[owner] <= order[node.id]:
                holder[name] = node.id
                return name
        raise AssertionError("unreachable: some suffix is always free")

    body: list[str] = []
    results: list[str] = []
    for node in graph:
        xs = [var[i] for i in node.inputs]
        if node.kind == "input":
            var[node.id] = allocate(node)
            continue
        if node.kind in ("identity", "output"):
            var[node.id] = xs[0]
            if node.kind == "output":
                results.append(xs[0])
            continue
        if node.kind in SOURCE:
            expr = SOURCE[node.kind](node, xs)
        else:
            expr = f"{_module_access(node.param_key)}({', '.join(xs)})"
        var[node.id] = allocate(node)
        body.append(f"{var[node.id]} = {expr}  {_shape_comment(node)}  {_escaped(node.id)}")

    args = ", ".join(var[n.id] for n in inputs)
    shapes = ", ".join("N x " + " x ".join(map(str, n.type.shape)) for n in inputs)
    ret = results[0] if len(results) == 1 else "(" + ", ".join(results) + ",)"
    weights = repr(weights_name) if weights_name else "None"
    name = _escaped(graph.name)
    lines = [
        f'"""{name}: a standalone PyTorch model exported by nasgraph.',
        "",
        "Needs only torch and safetensors. `load_model()` builds `Model` and loads the weights",
        "file written beside this one; state dict keys are the graph's node ids ('/' -> '.').",
        '"""',
        "",
        "from pathlib import Path",
        "",
        "import torch",
        "import torch.nn.functional as F",
        "from safetensors.torch import load_file",
        "from torch import nn",
        "",
        f"WEIGHTS = {weights}",
        "",
        "",
        "class Block(nn.Module):",
        '    """A block scope of the graph: submodules by name, `block["0"]` or `block.conv1`."""',
        "",
        "    def __getitem__(self, name):",
        "        return self._modules[name]",
        "",
        "    def __setitem__(self, name, module):",
        "        self.add_module(name, module)",
        "",
        "",
        "class Model(nn.Module):",
        f'    """{name}: input {shapes}."""',
        "",
        "    def __init__(self):",
        "        super().__init__()",
        *("        " + line for line in init),
        "",
        f"    def forward(self, {args}):",
        *("        " + line for line in body),
        f"        return {ret}",
        "",
        "",
        "def load_model(weights_path=None):",
        '    """`Model` in eval mode with the weights of `weights_path` (default: the safetensors',
        '    file written beside this source file)."""',
        "    model = Model()",
        "    if weights_path is None and WEIGHTS is not None:",
        "        weights_path = Path(__file__).with_name(WEIGHTS)",
        "    if weights_path is not None:",
        "        model.load_state_dict(load_file(str(weights_path)))",
        "    return model.eval()",
        "",
    ]
    return "\n".join(lines)


def _assign(path: str) -> str:
    """The left-hand side that creates submodule `path` (its parents exist)."""
    parent, _, leaf = path.rpartition(".")
    if not parent:
        return f"self.{leaf}" if _is_attribute_name(leaf) else \
            f'self._modules["{_escaped(leaf)}"]'
    return _attribute(_module_access(parent), leaf, container=True)


def _state_dict(graph: Graph, state_dict: Mapping[str, torch.Tensor] | None
                ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """`lower(graph)` with `state_dict` loaded (strictly), and its state dict on the CPU."""
    try:
        module = lower(graph)
    except (MemoryError, OverflowError, RuntimeError, TypeError) as e:
        # sizes a graph file may hold but no machine: past memory, or past torch's int64
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NasgraphError(f"graph {graph.name!r}: torch cannot allocate its weights "
                            f"({detail})") from e
    if state_dict is not None:
        module.load_state_dict(import_weights(graph, state_dict, origin="given"))
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return module.eval(), state


def _file_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir() or not path.name:
        raise NasgraphError(f"{path}: is a directory; hint: give the path of a file to write")
    return path


def export_python(graph: Graph, path: str | Path,
                  state_dict: Mapping[str, torch.Tensor] | None = None) -> tuple[Path, Path]:
    """Write `graph` as a standalone PyTorch source file and its weights beside it.

    `state_dict` is `lower(graph)`'s (random initialization when None). Returns the source
    and the weights paths (`out.py`, `out.safetensors`).

        >>> import nasgraph
        >>> from nasgraph.backends.torch import export_python
        >>> src, weights = export_python(nasgraph.zoo.get("lenet5"), "lenet5.py")  # doctest: +SKIP
        >>> # elsewhere, without nasgraph:  from lenet5 import load_model; m = load_model()
    """
    from safetensors.torch import save

    path = _file_path(path)
    weights_path = _file_path(path.with_suffix(".safetensors"))
    if weights_path == path:
        raise NasgraphError(f"{path}: the weights go to a .safetensors file beside the source; "
                            f"hint: name the source {path.with_suffix('.py').name}")
    _, state = _state_dict(graph, state_dict)
    source = python_source(graph, weights_path.name)
    with written_together(path, weights_path) as (source_tmp, weights_tmp):
        source_tmp.write_text(source, encoding="utf-8")
        weights_tmp.write_bytes(save(state))
    return path, weights_path


def _example_input(graph: Graph, batch: int = 1) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(batch, *n.type.shape) for n in graph.inputs)


def export_torchscript(graph: Graph, path: str | Path,
                       state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write `torch.jit.script(lower(graph))` with its weights; load with `torch.jit.load`."""
    path = _file_path(path)
    module, _ = _state_dict(graph, state_dict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        scripted = torch.jit.script(module)
    with written_together(path) as (tmp,), tmp.open("wb") as f:
        torch.jit.save(scripted, f)
    return path


def averaging_matrix(size: int, out: int) -> torch.Tensor:
    """out x size: row i averages [floor(i * size / out), ceil((i + 1) * size / out)), the
    window of torch's adaptive average pooling."""
    m = torch.zeros(out, size)
    for i in range(out):
        lo, hi = i * size // out, -(-(i + 1) * size // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


class MatrixAdaptiveAvgPool(nn.Module):
    """Adaptive average pooling as `P_h @ x @ P_w^T`: the same average, written with MatMul
    so that ONNX can express output sizes that do not divide the input."""

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", averaging_matrix(in_size[0], out_size[0]), persistent=False)
        self.register_buffer("cols", averaging_matrix(in_size[1], out_size[1]).t().contiguous(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x C x H x W -> N x C x H' x W -> N x C x H' x W'
        return self.rows @ x @ self.cols


def _onnx_compatible(module: torch.fx.GraphModule, graph: Graph) -> torch.fx.GraphModule:
    """`module` with every adaptive pool whose output does not divide its input (which the
    ONNX exporter refuses) replaced by `MatrixAdaptiveAvgPool`."""
    nodes = {_python_name(n.id): n for n in graph if n.kind == "adaptive_avgpool2d"}
    for fx_node in list(module.graph.nodes):
        node = nodes.get(fx_node.name)
        if node is None:
            continue
        src = graph[node.inputs[0]].type.spatial
        if all(n % o == 0 for n, o in zip(src, node.op.size, strict=True)):
            continue
        target = f"onnx_pool_{fx_node.name}"
        module.add_submodule(target, MatrixAdaptiveAvgPool(src, node.op.size))
        with module.graph.inserting_after(fx_node):
            replacement = module.graph.call_module(target, (fx_node.args[0],))
        fx_node.replace_all_uses_with(replacement)
        module.graph.erase_node(fx_node)
    module.recompile()
    return module


def export_onnx(graph: Graph, path: str | Path,
                state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write `lower(graph)` as ONNX (opset 17), batch dimension dynamic.

    Inputs are named after the graph's input nodes, outputs after its output nodes.
    """
    path = _file_path(path)
    module, _ = _state_dict(graph, state_dict)
    module = _onnx_compatible(module, graph)
    names_in = [n.id.replace("/", ".") for n in graph.inputs]
    names_out = [n.id.replace("/", ".") for n in graph.outputs]
    with written_together(path) as (tmp,), tmp.open("wb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, _example_input(graph, 2), f, dynamo=False,
                          opset_version=17, input_names=names_in, output_names=names_out,
                          dynamic_axes={n: {0: "batch"} for n in names_in + names_out})
    return path


def export(graph: Graph, path: str | Path, format: Format = "python",
           state_dict: Mapping[str, torch.Tensor] | None = None) -> list[Path]:
    """Export `graph` in `format` ("python", "torchscript" or "onnx"); the files written."""
    if format == "python":
        return list(export_python(graph, path, state_dict))
    if format == "torchscript":
        return [export_torchscript(graph, path, state_dict)]
    if format == "onnx":
        return [export_onnx(graph, path, state_dict)]
    raise NasgraphError(f"unknown export format {format!r}; hint: python, torchscript or onnx")
