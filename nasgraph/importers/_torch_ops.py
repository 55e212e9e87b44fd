"""The ATen op -> IR op table of `from_torch`: one converter per ATen overload.

A converter reads the current op's arguments by schema name from the walk (`w.a[...]` are
values: IR Tensors, constant torch tensors or literals; `w.raw[...]` the fx arguments) and
emits IR nodes. It returns the op's value (a tuple for ATen ops with several results), or
raises `w.refuse(...)` for a case the IR cannot express.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import fx

from nasgraph.errors import GraphError
from nasgraph.importers._common import ImportBuilder
from nasgraph.ir import Tensor, ops

aten = torch.ops.aten


class TorchWalk(Protocol):
    """What a converter uses of `torch_module.TorchWalk` (described here, not imported:
    that module imports this table)."""

    build: ImportBuilder
    node: fx.Node
    raw: dict[str, object]
    a: dict[str, object]
    where: str

    def refuse(self, reason: str) -> GraphError: ...
    def default_id(self, short: str) -> str: ...
    def weight_id(self, name: str, short: str) -> str: ...
    def value(self, arg: object) -> object: ...
    def tensor(self, name: str) -> Tensor: ...
    def constant(self, name: str) -> np.ndarray | None: ...
    def spec(self, cls: type[ops.Op], **attrs: object) -> ops.Op: ...
    def emit(self, op: ops.Op, inputs: list[Tensor], short: str,
             weights: dict[str, np.ndarray] | None = None, wanted_id: str | None = None
             ) -> Tensor: ...
    def only_use(self, name: str) -> bool: ...


Converter = Callable[[TorchWalk], object]


def _pair(value: object) -> tuple[int, int]:
    """An int, [n] or [h, w] as (h, w)."""
    if isinstance(value, int):
        return (value, value)
    items = [int(v) for v in value]
    return (items[0], items[0]) if len(items) == 1 else (items[0], items[1])


def _scalar(value: object) -> float | None:
    """A Python number or a one-element tensor as a float; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    return None


def _rank(w: TorchWalk) -> int:
    """Rank of the current op's input as torch recorded it (4 for images, 2 for vectors)."""
    return len(w.raw["self" if "self" in w.raw else "input"].meta["val"].shape)


# --------------------------------------------------------------------------- weighted ops


def _conv(w: TorchWalk, padding: object) -> Tensor:
    if w.a.get("transposed"):
        raise w.refuse("transposed convolution has no IR op")
    weight = w.constant("weight")
    if weight.ndim != 4:
        raise w.refuse(f"only 2-D convolutions are supported (weight of rank {weight.ndim})")
    if isinstance(padding, str):
        padding = "same" if padding == "same" else (0, 0)
    else:
        padding = _pair(padding)
    bias = w.constant("bias")
    op = w.spec(ops.Conv2d, out_channels=weight.shape[0], kernel=weight.shape[2:],
                stride=_pair(w.a["stride"]), padding=padding,
                dilation=_pair(w.a["dilation"]), groups=int(w.a["groups"]),
                bias=bias is not None)
    weights = {"weight": weight} | ({"bias": bias} if bias is not None else {})
    return w.emit(op, [w.tensor("input")], "conv", weights, w.weight_id("weight", "conv"))


def _batch_norm(w: TorchWalk) -> Tensor:
    if w.a.get("training"):
        raise w.refuse("batch norm in training mode; call module.eval() first")
    mean, var = w.constant("running_mean"), w.constant("running_var")
    if mean is None or var is None:
        raise w.refuse("batch norm without running statistics (track_running_stats=False)")
    weight, bias = w.constant("weight"), w.constant("bias")
    # affine=False: the IR's BN is always affine; scale 1 and shift 0 compute the same
    weights = {"weight": np.ones_like(mean) if weight is None else weight,
               "bias": np.zeros_like(mean) if bias is None else bias,
               "running_mean": mean, "running_var": var}
    # momentum only steers training; the IR has no cumulative average (momentum=None)
    momentum = w.a["momentum"]
    op = w.spec(ops.BatchNorm2d, eps=float(w.a["eps"]),
                momentum=0.1 if momentum is None else float(momentum))
    name = "weight" if weight is not None else "running_mean"
    return w.emit(op, [w.tensor("input")], "bn", weights, w.weight_id(name, "bn"))


def _linear(w: TorchWalk, weight: np.ndarray, bias: np.ndarray | None, x: Tensor,
            weight_arg: str) -> Tensor:
    if weight.ndim != 2 or not x.type.flat:
        raise w.refuse("linear layers apply to N x F feature vectors only (flatten first)")
    op = w.spec(ops.Linear, out_features=weight.shape[0], bias=bias is not None)
    weights = {"weight": weight} | ({"bias": bias} if bias is not None else {})
    return w.emit(op, [x], "linear", weights, w.weight_id(weight_arg, "linear"))


def _addmm(w: TorchWalk) -> Tensor:
    # addmm(bias, x, weight.T): torch's decomposition of linear
    if _scalar(w.a["beta"]) != 1 or _scalar(w.a["alpha"]) != 1:
        raise w.refuse("addmm with beta or alpha other than 1")
    return _linear(w, w.constant("mat2").T.copy(), w.constant("self"), w.tensor("mat1"), "mat2")


def _mm(w: TorchWalk) -> Tensor:
    return _linear(w, w.constant("mat2").T.copy(), None, w.tensor("self"), "mat2")


# --------------------------------------------------------------------------- activations


def _activation(fn: str) -> Converter:
    return lambda w: w.emit(w.spec(ops.Activation, fn=fn), [w.tensor("self")], fn)


def _clamp(low_name: str, high_name: str) -> Converter:
    """hardtanh / clamp: [0, 6] is relu6 and [0, inf) relu; other ranges are refused."""
    def convert(w: TorchWalk) -> Tensor:
        low, high = _scalar(w.a.get(low_name)), _scalar(w.a.get(high_name))
        fn = {(0.0, 6.0): "relu6", (0.0, None): "relu"}.get((low, high))
        if fn is None:
            raise w.refuse(f"clamping to [{low}, {high}]: only [0, 6] (relu6) and [0, inf) "
                           "(relu) are activations of the IR")
        return w.emit(w.spec(ops.Activation, fn=fn), [w.tensor("self")], fn)
    return convert


def _gelu(w: TorchWalk) -> Tensor:
    if w.a["approximate"] != "none":
        raise w.refuse(f"gelu approximate={w.a['approximate']!r}: the IR's gelu is exact")
    return w.emit(w.spec(ops.Activation, fn="gelu"), [w.tensor("self")], "gelu")


def _hardsigmoid(w: TorchWalk) -> Tensor:
    """relu6(y + 3) / 6, the +3 folded into the bias of the conv or linear making y (the
    squeeze-excitation gate of MobileNetV3); the IR has no hardsigmoid activation."""
    x = w.tensor("self")
    if not (w.only_use("self") and w.build.add_to_bias(x, 3.0)):
        raise w.refuse("hardsigmoid is imported only right after a conv or linear layer with "
                       "a bias (as relu6(y + 3) / 6)")
    base = w.default_id("hardsigmoid")
    y = w.emit(w.spec(ops.Activation, fn="relu6"), [x], "relu6", wanted_id=base + "/relu6")
    return w.build.scale(y, 1 / 6, base, w.where)


# --------------------------------------------------------------------------- pooling


def _max_pool(w: TorchWalk) -> Tensor:
    if _pair(w.a["dilation"]) != (1, 1):
        raise w.refuse("dilated max pooling has no IR op")
    stride = w.a["stride"]
    op = w.spec(ops.MaxPool2d, kernel=_pair(w.a["kernel_size"]),
                stride=_pair(stride) if stride else None, padding=_pair(w.a["padding"]),
                ceil_mode=bool(w.a["ceil_mode"]))
    return w.emit(op, [w.tensor("self")], "maxpool")


def _avg_pool(w: TorchWalk) -> Tensor:
    if w.a["divisor_override"] is not None:
        raise w.refuse("average pooling with divisor_override has no IR op")
    stride = w.a["stride"]
    op = w.spec(ops.AvgPool2d, kernel=_pair(w.a["kernel_size"]),
                stride=_pair(stride) if stride else None, padding=_pair(w.a["padding"]),
                ceil_mode=bool(w.a["ceil_mode"]),
                count_include_pad=bool(w.a["count_include_pad"]))
    return w.emit(op, [w.tensor("self")], "avgpool")


def _adaptive_avg_pool(w: TorchWalk) -> Tensor:
    size = _pair(w.a["output_size"])
    if size == (1, 1):
        return w.emit(ops.GlobalAvgPool(), [w.tensor("self")], "avgpool")
    return w.emit(w.spec(ops.AdaptiveAvgPool2d, size=size), [w.tensor("self")], "avgpool")


def _mean(w: TorchWalk) -> Tensor:
    x, dims = w.tensor("self"), w.a["dim"]
    if _rank(w) != 4 or dims is None or {d % 4 for d in dims} != {2, 3} or len(dims) != 2:
        raise w.refuse(f"mean over dims {dims}: only the spatial mean (dims 2 and 3 of an "
                       "N x C x H x W tensor) is global average pooling")
    y = w.emit(ops.GlobalAvgPool(), [x], "mean")
    return y if w.a["keepdim"] else w.emit(ops.Flatten(), [y], "flatten")


# --------------------------------------------------------------------------- merging


def _add(sign: float) -> Converter:
    """add / sub: tensor +- tensor is Add (alpha as weights); tensor + number is folded into
    the bias of the layer before, when there is one."""
    def convert(w: TorchWalk) -> Tensor:
        a, b = w.a["self"], w.a["other"]
        alpha = sign * _scalar(w.a.get("alpha", 1))
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            weights = None if alpha == 1 else (1.0, alpha)
            return w.emit(w.spec(ops.Add, weights=weights), [a, b], "add")
        if isinstance(a, Tensor) and _scalar(b) is not None:
            name, constant = "self", alpha * _scalar(b)
        elif isinstance(b, Tensor) and _scalar(a) is not None and alpha == 1:
            name, constant = "other", _scalar(a)
        else:
            raise w.refuse("adding a constant tensor, or subtracting from a number, has no "
                           "IR op (tensor + tensor, and tensor + number after a layer with a "
                           "bias, are supported)")
        x = w.a[name]
        if constant == 0:
            return x
        if w.only_use(name) and w.build.add_to_bias(x, constant):
            return x
        raise w.refuse("adding a number is imported only right after a conv or linear layer "
                       "with a bias (folded into it)")
    return convert


def _mul(w: TorchWalk) -> Tensor:
    a, b = w.a["self"], w.a["other"]
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return w.emit(ops.Mul(), [a, b], "mul")
    x, factor = (a, _scalar(b)) if isinstance(a, Tensor) else (b, _scalar(a))
    return _scaled(w, x, factor)


def _per_channel_scale(w: TorchWalk, x: Tensor) -> bool:
    """`x * s`, s a constant C x 1 x 1 (ConvNeXt's layer scale): folded into the conv that
    made x when nothing else reads x; inference-exact, one parameter per channel fewer."""
    name = "other" if w.a["self"] is x else "self"
    scale = w.constant(name)
    if scale is None or x.type.flat or scale.shape != (x.channels, 1, 1):
        return False
    other = "self" if name == "other" else "other"
    return w.only_use(other) and w.build.scale_channels(x, scale.reshape(-1))


def _div(w: TorchWalk) -> Tensor:
    factor = _scalar(w.a["other"])
    if not isinstance(w.a["self"], Tensor) or not factor:
        raise w.refuse("only division of a tensor by a nonzero number is supported")
    return _scaled(w, w.a["self"], 1 / factor)


def _scaled(w: TorchWalk, x: Tensor, factor: float | None) -> Tensor:
    if factor is None and _per_channel_scale(w, x):  # layer scale, folded into its conv
        return x
    if factor is None:
        raise w.refuse("multiplying by a constant tensor has no IR op (tensor * tensor and "
                       "tensor * number are supported)")
    if factor == 1:
        return x
    return w.build.scale(x, factor, w.default_id("scale"), w.where)


def _cat(w: TorchWalk) -> Tensor:
    xs = w.a["tensors"]
    rank = len(w.raw["tensors"][0].meta["val"].shape)
    if w.a["dim"] % rank != 1 or not all(isinstance(x, Tensor) for x in xs):
        raise w.refuse(f"concatenation along dim {w.a['dim']} of rank-{rank} tensors, or of "
                       "constants: only tensors along channels (dim 1) are supported")
    return xs[0] if len(xs) == 1 else w.emit(ops.Concat(), list(xs), "cat")


# --------------------------------------------------------------------------- reshaping


def _flat(w: TorchWalk, x: Tensor) -> Tensor:
    """N x C x H x W -> N x CHW (Flatten), and nothing for an already flat N x F."""
    out = tuple(w.node.meta["val"].shape)
    if len(out) != 2 or out[1] != x.type.numel:
        raise w.refuse(f"reshaping N x {x.type} to {'x'.join(map(str, out))}: only "
                       "flattening to N x features is an IR op")
    return x if x.type.flat else w.emit(ops.Flatten(), [x], "flatten")


def _flatten(w: TorchWalk) -> Tensor:
    if w.a["start_dim"] % _rank(w) != 1:
        raise w.refuse(f"flatten from dim {w.a['start_dim']}: only from dim 1 is supported")
    return _flat(w, w.tensor("self"))


class Grouped(NamedTuple):
    """A tensor viewed as N x groups x C/groups x H x W: the first step of ShuffleNet's
    channel shuffle (`view`, `transpose(1, 2)`, `view` back), which has no IR value of its
    own; `swapped` once dims 1 and 2 are transposed. The view back emits `ChannelShuffle`."""

    x: Tensor
    groups: int
    swapped: bool = False


def _view(w: TorchWalk) -> Tensor | Grouped:
    x, shape = w.a["self"], tuple(w.node.meta["val"].shape[1:])
    if isinstance(x, Grouped):
        if not x.swapped or shape != x.x.type.shape:
            raise w.refuse("a 5-D view is an IR op only as ShuffleNet's channel shuffle: "
                           "view to N x g x C/g x H x W, transpose(1, 2), view back")
        return w.emit(w.spec(ops.ChannelShuffle, groups=x.groups), [x.x], "channel_shuffle")
    x = w.tensor("self")
    if len(shape) == 4 and not x.type.flat and shape[0] * shape[1] == x.type.channels \
            and shape[2:] == x.type.spatial:
        return Grouped(x, shape[0])
    return _flat(w, x)


def _transpose(w: TorchWalk) -> Grouped:
    x, dims = w.a["self"], sorted((w.a["dim0"] % 5, w.a["dim1"] % 5))
    if not isinstance(x, Grouped) or x.swapped or dims != [1, 2]:
        raise w.refuse("transpose is an IR op only within ShuffleNet's channel shuffle "
                       "(view to N x g x C/g x H x W, transpose(1, 2), view back)")
    return x._replace(swapped=True)


def _split(sizes_of: Callable[[TorchWalk, int], list[int]]) -> Converter:
    """`split`, `split_with_sizes`, `chunk` along channels: one `ChannelSlice` per part."""
    def convert(w: TorchWalk) -> tuple[Tensor, ...]:
        x = w.tensor("self")
        if w.a.get("dim", 0) % _rank(w) != 1:
            raise w.refuse("only splits along channels (dim 1) are IR ops")
        parts, start = [], 0
        for size in sizes_of(w, x.channels):
            op = w.spec(ops.ChannelSlice, start=start, stop=min(start + size, x.channels))
            parts.append(w.emit(op, [x], "split"))
            start += size
        return tuple(parts)
    return convert


class Permuted(NamedTuple):
    """A tensor permuted to N x H x W x C (ConvNeXt's blocks and `LayerNorm2d`): LayerNorm
    and linear layers over its last dim are channel ops of `x` (`LayerNorm2d`, 1x1 convs),
    activations apply as they are, and the permute back gives the IR tensor again."""

    x: Tensor


def _permute(w: TorchWalk) -> Tensor | Permuted:
    x, dims = w.a["self"], [d % 4 for d in w.a["dims"]]
    if isinstance(x, Tensor) and not x.type.flat and dims == [0, 2, 3, 1]:
        return Permuted(x)
    if isinstance(x, Permuted) and dims == [0, 3, 1, 2]:
        return x.x
    raise w.refuse("a permute is an IR op only as the channels-last view around LayerNorm "
                   "and linear layers over channels (ConvNeXt), and back")


def _layer_norm_last(w: TorchWalk) -> Permuted:
    x = w.a["input"].x
    if list(w.a["normalized_shape"]) != [x.channels]:
        raise w.refuse("LayerNorm over more than the channels has no IR op")
    weight, bias = w.constant("weight"), w.constant("bias")
    weights = {"weight": np.ones(x.channels, np.float32) if weight is None else weight,
               "bias": np.zeros(x.channels, np.float32) if bias is None else bias}
    op = w.spec(ops.LayerNorm2d, eps=float(w.a["eps"]))
    return Permuted(w.emit(op, [x], "layernorm", weights, w.weight_id("weight", "layernorm")))


def _linear_last(w: TorchWalk) -> Permuted:
    """A linear layer over the channels-last view: a 1x1 conv."""
    x, weight, bias = w.a["input"].x, w.constant("weight"), w.constant("bias")
    op = w.spec(ops.Conv2d, out_channels=weight.shape[0], kernel=1, bias=bias is not None)
    weights = {"weight": weight[:, :, None, None]} | ({"bias": bias} if bias is not None else {})
    return Permuted(w.emit(op, [x], "conv", weights, w.weight_id("weight", "conv")))


def _on_channels(convert: Converter) -> Converter:
    """An elementwise op on a channels-last view: the op on the tensor, viewed again."""
    def run(w: TorchWalk) -> Permuted:
        key = "input" if "input" in w.a else "self"
        w.a[key] = w.a[key].x
        return Permuted(convert(w))
    return run


def _slice(w: TorchWalk) -> Tensor:
    x, step = w.tensor("self"), w.a.get("step", 1)
    if w.a["dim"] % _rank(w) != 1 or step != 1:
        raise w.refuse("only slices of channels (dim 1, step 1) are IR ops")
    start, stop, _ = slice(w.a.get("start"), w.a.get("end")).indices(x.channels)
    if start == 0 and stop == x.channels:
        return x
    return w.emit(w.spec(ops.ChannelSlice, start=start, stop=stop), [x], "slice")


def _even(size: int, channels: int) -> list[int]:
    return [size] * -(-channels // size)


def _dropout(w: TorchWalk) -> Tensor:
    p = float(w.a["p"])
    return w.emit(w.spec(ops.Dropout, p=p), [w.tensor("input")], "dropout")


def _upsample(mode: str) -> Converter:
    def convert(w: TorchWalk) -> Tensor:
        scales = w.a.get("scale_factors") or [w.a.get("scales_h"), w.a.get("scales_w")]
        attrs: dict[str, object] = {"mode": mode}
        if scales[0] is not None and scales[0] == scales[1]:
            attrs["scale"] = float(scales[0])
        else:
            attrs["size"] = tuple(w.node.meta["val"].shape[2:])
        if mode == "bilinear":
            attrs["align_corners"] = bool(w.a["align_corners"])
        return w.emit(w.spec(ops.Upsample, **attrs), [w.tensor("input" if "input" in w.a
                                                               else "self")], "upsample")
    return convert


def _pad(w: TorchWalk) -> Tensor:
    pad, value = list(w.a["pad"]), _scalar(w.a.get("value")) or 0.0
    if w.a.get("mode", "constant") != "constant" or value != 0 or len(pad) != 6 \
            or any(pad[:4]) or min(pad) < 0:
        raise w.refuse(f"padding {pad}: only zero channels added (pad (0, 0, 0, 0, a, b)) is "
                       "an IR op; spatial padding belongs in the conv or pool")
    op = w.spec(ops.ChannelPad, before=pad[4], after=pad[5])
    return w.emit(op, [w.tensor("self")], "pad")


def _first_of(convert: Converter) -> Converter:
    """For ATen ops returning (result, extras...): the result; an extra is never used
    (indices, saved statistics, dropout masks), and using one is refused by getitem."""
    return lambda w: (convert(w), None, None)


def getitem(w: TorchWalk) -> object:
    value = w.value(w.node.args[0])[w.node.args[1]]
    if value is None:
        raise w.refuse(f"result {w.node.args[1]} of {w.node.args[0].target} (indices, masks "
                       "or saved statistics) has no IR value")
    return value


CONVERTERS: dict[object, Converter] = {
    aten.conv2d.default: lambda w: _conv(w, w.a["padding"]),
    aten.conv2d.padding: lambda w: _conv(w, w.a["padding"]),
    aten.convolution.default: lambda w: _conv(w, w.a["padding"]),
    aten.batch_norm.default: _batch_norm,
    aten._native_batch_norm_legit_no_training.default: _first_of(_batch_norm),
    aten.linear.default: lambda w: _linear(w, w.constant("weight"), w.constant("bias"),
                                           w.tensor("input"), "weight"),
    aten.addmm.default: _addmm,
    aten.mm.default: _mm,
    aten.relu.default: _activation("relu"),
    aten.relu_.default: _activation("relu"),
    aten.relu6.default: _activation("relu6"),
    aten.sigmoid.default: _activation("sigmoid"),
    aten.sigmoid_.default: _activation("sigmoid"),
    aten.tanh.default: _activation("tanh"),
    aten.silu.default: _activation("silu"),
    aten.silu_.default: _activation("silu"),
    aten.hardswish.default: _activation("hardswish"),
    aten.hardswish_.default: _activation("hardswish"),
    aten.gelu.default: _gelu,
    aten.hardtanh.default: _clamp("min_val", "max_val"),
    aten.hardtanh_.default: _clamp("min_val", "max_val"),
    aten.clamp.default: _clamp("min", "max"),
    aten.clamp_min.default: _clamp("min", "max"),
    aten.hardsigmoid.default: _hardsigmoid,
    aten.max_pool2d.default: _max_pool,
    aten.max_pool2d_with_indices.default: _first_of(_max_pool),
    aten.avg_pool2d.default: _avg_pool,
    aten.adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten._adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten.mean.dim: _mean,
    aten.cat.default: _cat,
    aten.add.Tensor: _add(1.0),
    aten.add_.Tensor: _add(1.0),
    aten.sub.Tensor: _add(-1.0),
    aten.mul.Tensor: _mul,
    aten.mul_.Tensor: _mul,
    aten.div.Tensor: _div,
    aten.flatten.using_ints: _flatten,
    aten.view.default: _view,
    aten.reshape.default: _view,
    aten._unsafe_view.default: _view,
    aten.transpose.int: _transpose,
    aten.permute.default: _permute,
    aten.slice.Tensor: _slice,
    aten.split.Tensor: _split(lambda w, c: _even(w.a["split_size"], c)),
    aten.split_with_sizes.default: _split(lambda w, c: list(w.a["split_sizes"])),
    aten.chunk.default: _split(lambda w, c: _even(-(-c // w.a["chunks"]), c)),
    aten.dropout.default: _dropout,
    aten.dropout_.default: _dropout,
    aten.native_dropout.default: _first_of(_dropout),
    aten.upsample_nearest2d.vec: _upsample("nearest"),
    aten.upsample_nearest2d.default: _upsample("nearest"),
    aten.upsample_bilinear2d.vec: _upsample("bilinear"),
    aten.upsample_bilinear2d.default: _upsample("bilinear"),
    aten.constant_pad_nd.default: _pad,
    aten.pad.default: _pad,
}

# ATen ops on a channels-last view (`Permuted`); any other op on one is refused
ON_CHANNELS_LAST: dict[object, Converter] = {
    aten.layer_norm.default: _layer_norm_last,
    aten.native_layer_norm.default: _first_of(_layer_norm_last),
    aten.linear.default: _linear_last,
    aten.permute.default: _permute,
    aten.gelu.default: _on_channels(_gelu),
    aten.relu.default: _on_channels(_activation("relu")),
    aten.relu_.default: _on_channels(_activation("relu")),
    aten.silu.default: _on_channels(_activation("silu")),
}

# ATen ops that return their input's value (copies, aliases, no-ops at inference)
PASS_THROUGH = {"clone", "contiguous", "alias", "detach", "detach_", "lift_fresh_copy"}
# ATen ops that compute nothing the graph needs (checks torch.export inserts)
NO_OPS = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"}
