"""Inference-time options of a lowered module: BN folding, fused conv + ReLU, in-place ops,
channels_last, autocast.

Folding rewrites the fx module (a conv followed by its batch norm becomes one conv); the
graph-level `fold_batchnorm` pass does the same on a Graph for the Numba backend. Fusing
(`fusion.fuse_conv_relu`) turns conv -> (add ->) ReLU into one cuDNN kernel on CUDA. In-place
rewriting turns activations and adds whose input nothing else reads into their in-place
forms, as torchvision's modules are written. Autocast wraps the module without renaming
anything: the wrapper's state dict keys are the module's.
"""

from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from nasgraph.backends.torch.fusion import fuse_conv_relu, submodule
from nasgraph.errors import NasgraphError

AUTOCAST_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def fuse_conv_bn(module: fx.GraphModule) -> fx.GraphModule:
    """A copy of `module`, in eval mode, with each conv -> batch norm pair folded into the conv.

    A batch norm is folded when its input is a conv whose output nothing else reads. The
    folded module computes the same function in eval mode with one pass less over memory;
    its state dict lacks the folded batch norms.

        >>> import torch, nasgraph
        >>> from nasgraph.backends.torch import fuse_conv_bn, lower
        >>> m = lower(nasgraph.zoo.get("resnet18", input_shape=(3, 32, 32))).eval()
        >>> f = fuse_conv_bn(m)
        >>> x = torch.randn(1, 3, 32, 32)
        >>> bool((f(x) - m(x)).abs().max() < 1e-4)
        True
    """
    fused = copy.deepcopy(module).eval()
    for node in list(fused.graph.nodes):
        bn = submodule(fused, node)
        if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
            continue
        producer = node.args[0]
        conv = submodule(fused, producer)
        if not isinstance(conv, nn.Conv2d) or len(producer.users) != 1:
            continue
        # N x C x H x W -> N x F x H' x W': conv(x) * scale + shift, with scale and shift
        # folded into the conv's weight and bias
        fused.add_submodule(producer.target, fuse_conv_bn_eval(conv, bn))
        node.replace_all_uses_with(producer)
        fused.graph.erase_node(node)
        fused.delete_submodule(node.target)
    fused.graph.lint()
    fused.recompile()
    return fused


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


class Autocast(nn.Module):
    """Runs a module under `torch.autocast` on its input's device.

    The wrapper holds the module's children as its own, so its state dict keys (and
    parameters) are exactly the module's: weights load into either.

        >>> import torch, nasgraph
        >>> from nasgraph.backends.torch import Autocast, lower
        >>> m = lower(nasgraph.zoo.get("lenet5"))
        >>> a = Autocast(m, "bf16")
        >>> a(torch.randn(2, 1, 32, 32)).dtype
        torch.bfloat16
        >>> list(a.state_dict()) == list(m.state_dict())
        True
    """

    def __init__(self, module: nn.Module, dtype: str | torch.dtype = "bf16") -> None:
        super().__init__()
        if isinstance(dtype, str):
            if dtype not in AUTOCAST_DTYPES:
                raise NasgraphError(f"autocast dtype {dtype!r} is not one of "
                                    f"{', '.join(AUTOCAST_DTYPES)}")
            dtype = AUTOCAST_DTYPES[dtype]
        self.dtype = dtype
        for name, child in module.named_children():
            self.add_module(name, child)
        # kept out of _modules, so that parameters are not listed twice
        self.__dict__["module"] = module

    @property
    def code(self) -> str:
        """The wrapped module's generated code (fx modules)."""
        return self.module.code

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        with torch.autocast(inputs[0].device.type, dtype=self.dtype):
            return self.module(*inputs)


def prepare(module: fx.GraphModule, *, fold_bn: bool = False, channels_last: bool = False,
            autocast: str | torch.dtype | None = None) -> nn.Module:
    """Apply the inference options to a lowered module (already on its device).

    `fold_bn` folds conv -> BN pairs, fuses conv -> (add ->) ReLU into `FusedConvReLU`
    (one cuDNN kernel on CUDA under no_grad) and makes other activations and adds in-place
    where nothing else reads their input (an inference-only copy in eval mode; state dict
    keys change),
    `channels_last` stores 4-D weights NHWC (pass NHWC inputs too for the fastest kernels),
    `autocast` runs under torch.autocast with "bf16" or "fp16".
    """
    if fold_bn:
        module = inplace_ops(fuse_conv_relu(fuse_conv_bn(module)))
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if autocast is not None:
        return Autocast(module, autocast)
    return module
