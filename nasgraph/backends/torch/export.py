"""Export: a Graph as a standalone PyTorch source file (+ safetensors), TorchScript or ONNX.

The Python export is generated from the Graph, one line per node with its output shape, and
imports only torch and safetensors: the result runs where nasgraph is not installed.
Submodules sit at the paths `lower` gives them, so the two share state dicts.

A graph file is untrusted input: its name and node ids reach the generated source only
escaped (`_escaped`), so no text in a graph can become code.
"""

from __future__ import annotations

import inspect
import keyword
import operator
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from nasgraph.backends.torch.lower import _python_name, lower, trace
from nasgraph.backends.torch.weights import import_weights
from nasgraph.errors import NasgraphError
from nasgraph.files import written_together
from nasgraph.ir import Graph, Node

Format = Literal["python", "torchscript", "onnx"]
# kind -> the expression computing the node from its input variables
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


def _function_name(fn: Callable) -> str:
    """How generated code names `fn`: `F.name` or `torch.name`."""
    for prefix, namespace in (("F", F), ("torch", torch)):
        name = getattr(fn, "__name__", "")
        if getattr(namespace, name, None) is fn:
            return f"{prefix}.{name}"
        for name, value in vars(namespace).items():  # wrappers named otherwise (max_pool2d)
            if value is fn:
                return f"{prefix}.{name}"
    raise NasgraphError(f"the exporter cannot name function {fn!r} in generated code")


INFIX = {operator.add: "+", operator.mul: "*"}


def _compact(value: object) -> object:
    """(3, 3) -> 3: a pair argument written as torch's modules accept it, and people write it."""
    if isinstance(value, tuple) and len(set(value)) == 1:
        return value[0]
    return value


def _module_source(module: nn.Module) -> str:
    """The constructor call of a leaf torch.nn module, as a person writes it: the required
    arguments by position, the others by name where they differ from their default
    (`nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)`)."""
    cls = type(module)
    if cls is not getattr(nn, cls.__name__, None):
        raise NasgraphError(f"the exporter writes torch.nn modules only, not {cls.__name__}")
    args = []
    for p in inspect.signature(cls).parameters.values():
        if p.name in ("device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = getattr(module, p.name)
        if p.name == "bias" and not isinstance(value, bool):  # the tensor, or None
            value = value is not None
        value = _compact(value)
        if p.default is p.empty:
            args.append(repr(value))
        elif value != _compact(p.default):
            args.append(f"{p.name}={value!r}")
    return f"nn.{cls.__name__}({', '.join(args)})"


def python_source(graph: Graph, weights_name: str | None = None) -> str:
    """The source of a standalone module computing `graph`: class `Model` and `load_model`.

    It prints the fx graph that `lower` builds (`trace`), so the export computes exactly
    what the lowering does, in the same order: one line per node, with its output shape;
    intermediate values used once (a fused conv's add) are written inline. Submodules sit
    at the same paths as in `lower(graph)` (`layer1.0.conv1`), so their state dicts are
    interchangeable. `weights_name` is the weights file `load_model` reads by default,
    beside the source file.
    """
    root, fx_graph = trace(graph)
    fx_nodes = list(fx_graph.nodes)
    init: list[str] = []
    containers: set[str] = set()
    for n in fx_nodes:
        if n.op != "call_module" or n.target in containers:
            continue
        *parents, _ = n.target.split(".")
        for k in range(1, len(parents) + 1):
            path = ".".join(parents[:k])
            if path not in containers:
                containers.add(path)
                init.append(f"{_assign(path)} = Block()")
        containers.add(n.target)
        init.append(f"{_assign(n.target)} = {_module_source(root.get_submodule(n.target))}")

    # A value gets a line (and a variable) when it is a node's result or is read more than
    # once; others are written into their one reader's expression.
    def has_line(n: fx.Node) -> bool:
        return "nasgraph_node" in n.meta or len(n.users) != 1 or n.op == "placeholder"

    line_of: dict[fx.Node, int] = {}  # the position of the line that computes (or inlines) n
    for k, n in reversed(list(enumerate(fx_nodes))):
        line_of[n] = k if has_line(n) or n.op == "output" else line_of[next(iter(n.users))]
    last_use = {n: max((line_of[u] for u in n.users), default=len(fx_nodes)) for n in fx_nodes}
    # Variables are named after node ids; a name is reused once its value is dead, like
    # hand-written code, which keeps few activations alive at a time.
    holder: dict[str, fx.Node] = {}  # variable -> the fx node whose value it holds

    def allocate(n: fx.Node) -> str:
        node = n.meta.get("nasgraph_node")
        base = _variable_base(node.id) if node is not None else n.name
        base = base + "_" if keyword.iskeyword(base) or base in _RESERVED else base
        for k in range(len(fx_nodes) + 1):
            name = base if k == 0 else f"{base}_{k}"
            owner = holder.get(name)
            if owner is None or last_use[owner] <= line_of[n]:
                holder[name] = n
                return name
        raise AssertionError("unreachable: some suffix is always free")

    expr: dict[fx.Node, str] = {}  # a variable, or the inline expression of a value

    def source(arg: object, infix: str | None = None, left: bool = False) -> str:
        if isinstance(arg, fx.Node):
            text = expr[arg]
            inner = INFIX.get(arg.target) if not has_line(arg) else None
            if infix is not None and inner is not None and not (inner == infix and left):
                return f"({text})"  # a + (b + c), (a + b) * c
            return text
        if isinstance(arg, list | tuple):
            items = ", ".join(source(a) for a in arg)
            return f"[{items}]" if isinstance(arg, list) else \
                f"({items}{',' if len(arg) == 1 else ''})"
        return repr(arg)

    def call(n: fx.Node) -> str:
        if n.op == "call_module":
            return f"{_module_access(n.target)}({', '.join(source(a) for a in n.args)})"
        if n.target in INFIX:
            a, b = n.args
            sign = INFIX[n.target]
            return f"{source(a, sign, left=True)} {sign} {source(b, sign)}"
        args = [source(a) for a in n.args] + [f"{k}={source(_compact(v))}"
                                              for k, v in n.kwargs.items()]
        return f"{_function_name(n.target)}({', '.join(args)})"

    body: list[str] = []
    args_in: list[str] = []
    results: list[str] = []
    for n in fx_nodes:
        if n.op == "placeholder":
            expr[n] = allocate(n)
            args_in.append(expr[n])
        elif n.op == "output":
            outs = n.args[0] if isinstance(n.args[0], tuple) else (n.args[0],)
            results = [source(o) for o in outs]
        elif not has_line(n):
            expr[n] = call(n)
        else:
            text = call(n)
            expr[n] = allocate(n)
            node = n.meta.get("nasgraph_node")
            comment = f"  {_shape_comment(node)}  {_escaped(node.id)}" if node else ""
            body.append(f"{expr[n]} = {text}{comment}")

    inputs = graph.inputs
    args = ", ".join(args_in)
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


def _state_dict(graph: Graph, state_dict: Mapping[str, torch.Tensor | np.ndarray] | None
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
        # numpy arrays too (an importer's, init_state's): the same values as tensors
        state_dict = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                      for k, v in state_dict.items()}
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
