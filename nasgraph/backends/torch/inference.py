"""Inference-time options of a lowered module: BN folding, fused conv + ReLU, in-place ops,
channels_last, autocast.

Folding and fusing run the compiler's passes on the module's graph (`fold_and_fuse`), the
ones the Numba backend runs, and lower conv -> (add ->) ReLU as one cuDNN kernel on CUDA
(`fusion.FusedConvReLU`). In-place rewriting turns activations and adds whose input nothing
else reads into their in-place forms, as torchvision's modules are written. Autocast
(`autocast.Autocast`) wraps the module without renaming anything.
"""

from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn

from nasgraph import passes
from nasgraph.backends.torch.autocast import Autocast
from nasgraph.backends.torch.fusion import cudnn_fused, submodule
from nasgraph.backends.torch.lower import lower
from nasgraph.errors import NasgraphError


def fold_and_fuse(module: fx.GraphModule) -> fx.GraphModule:
    """`module` compiled for inference: the IR's pipeline (`nasgraph.passes.optimize`: drop
    identities, fold BN, fuse conv epilogues, merge residual biases) run on the graph it was
    lowered from, with its current weights, then lowered again with the fused convs whose
    activation is ReLU as `FusedConvReLU` (one cuDNN kernel on CUDA).

    The result is a new module in eval mode, on the module's device and dtype; the folded
    batch norms leave its state dict. The numba executor runs the same passes, so both
    backends fold and fuse the same nodes.

        >>> import torch, nasgraph
        >>> from nasgraph.backends.torch import lower
        >>> m = lower(nasgraph.zoo.get("resnet18", input_shape=(3, 32, 32))).eval()
        >>> f = fold_and_fuse(m)
        >>> x = torch.randn(1, 3, 32, 32)
        >>> bool((f(x) - m(x)).abs().max() < 1e-4), "bn1" in f.code
        (True, False)
    """
    graph = getattr(module, "meta", {}).get("nasgraph_graph")
    if graph is None:
        raise NasgraphError("prepare(fold_bn=True) needs a module made by lower(): it runs "
                            "the compiler passes on the module's graph")
    tensor = next(iter(module.state_dict().values()), None)
    optimized, state = passes.optimize(graph, module.state_dict())
    fused = lower(optimized, state_dict=state)
    if tensor is not None:
        fused = fused.to(device=tensor.device)
        if tensor.is_floating_point():
            fused = fused.to(dtype=tensor.dtype)
    return cudnn_fused(fused).eval()


# out-of-place activation -> its in-place form (same arguments)
INPLACE_ACTIVATIONS = {torch.relu: torch.relu_, torch.sigmoid: torch.sigmoid_,
                       torch.tanh: torch.tanh_}
# modules and functions whose result is a new tensor, never a view of an input
FRESH_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
FRESH_FUNCTIONS = {operator.add, torch.cat, *INPLACE_ACTIVATIONS, *INPLACE_ACTIVATIONS.values()}


def _owned(module: fx.GraphModule, value: object) -> bool:
    """Whether `value` is a tensor that the forward pass made and only one op reads, so that
    this op may overwrite it: not an input (the caller's tensor), not a view of another
    value, not read again later (nor returned)."""
    if not isinstance(value, fx.Node) or len(value.users) != 1:
        return False
    if value.op == "call_module":
        return isinstance(submodule(module, value), FRESH_MODULES)
    if value.op == "call_method":
        return value.target == "add_"
    return value.op == "call_function" and value.target in FRESH_FUNCTIONS


def inplace_ops(module: fx.GraphModule) -> fx.GraphModule:
    """A copy of `module` whose activations and two-input adds overwrite their input when
    nothing else reads it, as torchvision's `ReLU(inplace=True)` and `out += identity` do.

    Inference only: autograd needs some of the overwritten tensors for backward. On a GPU in
    eager mode this keeps the same passes over memory but allocates no new activation for
    them. An add overwrites its first input, whose dtype its result keeps (under autocast, a
    bf16 conv output stays bf16 even when the other input is fp32).

        >>> import torch, nasgraph
        >>> from nasgraph.backends.torch import inplace_ops, lower
        >>> m = lower(nasgraph.zoo.get("resnet18", input_shape=(3, 32, 32))).eval()
        >>> "relu_" in inplace_ops(m).code
        True
    """
    rewritten = copy.deepcopy(module)
    for node in list(rewritten.graph.nodes):
        if node.op != "call_function" or node.kwargs:
            continue
        if node.target in INPLACE_ACTIVATIONS and _owned(rewritten, node.args[0]):
            node.target = INPLACE_ACTIVATIONS[node.target]
        elif node.target is operator.add and len(node.args) == 2:
            a, b = node.args
            if not _owned(rewritten, a) and _owned(rewritten, b):
                a, b = b, a  # x + y == y + x: overwrite the operand that may be overwritten
            if _owned(rewritten, a) and isinstance(b, fx.Node):
                with rewritten.graph.inserting_after(node):
                    add_ = rewritten.graph.call_method("add_", (a, b))
                node.replace_all_uses_with(add_)
                rewritten.graph.erase_node(node)
                add_.name = node.name
    rewritten.graph.lint()
    rewritten.recompile()
    return rewritten


def prepare(module: fx.GraphModule, *, fold_bn: bool = False, channels_last: bool = False,
            autocast: str | torch.dtype | None = None) -> nn.Module:
    """Apply the inference options to a lowered module (already on its device).

    `fold_bn` runs the compiler's inference passes (`fold_and_fuse`: BN folded, conv ->
    (add ->) ReLU as `FusedConvReLU`, one cuDNN kernel on CUDA under no_grad) and makes
    other activations and adds in-place where nothing else reads their input (an
    inference-only copy in eval mode; state dict keys change),
    `channels_last` stores 4-D weights NHWC (pass NHWC inputs too for the fastest kernels),
    `autocast` runs under torch.autocast with "bf16" or "fp16".
    """
    if fold_bn:
        module = inplace_ops(fold_and_fuse(module))
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if autocast is not None:
        return Autocast(module, autocast)
    return module
