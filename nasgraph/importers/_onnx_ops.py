"""The ONNX op type -> IR op table of `from_onnx`: one converter per op type.

A converter reads the current node's inputs (`w.tensor(i)`, `w.constant(i)`) and
attributes (`w.attrs`, ONNX defaults applied here) and emits IR nodes; it returns the value
of the node's first output (or a tuple for several), or raises `w.refuse(...)`. A node
whose first input is a view (`_onnx_views`) is converted by `ON_VIEWS` instead.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from nasgraph.importers._onnx_views import (
    Grouped,
    Permuted,
    on_channels,
    per_sample,
    reshape_view,
    slice_channels,
    split_channels,
    transpose,
    viewed,
)
from nasgraph.importers._onnx_walk import Converter, OnnxWalk
from nasgraph.ir import Tensor, ops


def _decimal(value: object) -> float:
    """A float32 attribute as the shortest decimal that rounds to it (as people wrote it)."""
    return float(str(np.float32(value)))
# What an ONNX Shape node reports for the (unknown) batch dimension: a number no model
# computes by chance, so shape arithmetic mixing the batch with other dimensions is seen
# and refused, while Reshape to (batch, -1) and Resize to (batch, C, h, w) are read.
BATCH = 1_000_003


def _symmetric_pads(w: OnnxWalk, x: Tensor, kernel: tuple[int, int],
                    strides: tuple[int, int], dilations: tuple[int, int]) -> tuple[int, int]:
    """ONNX's `pads` [top, left, bottom, right] or `auto_pad` as the IR's (h, w) padding,
    which pads both sides alike; asymmetric padding is refused."""
    auto = w.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return (0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for n, k, s, d in zip(x.type.spatial, kernel, strides, dilations, strict=True):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads.append((total // 2, total - total // 2))
        begin, end = [p[0] for p in pads], [p[1] for p in pads]
    else:
        p = list(w.attrs.get("pads", [0, 0, 0, 0]))
        begin, end = p[:2], p[2:]
    if begin != end:
        raise w.refuse(f"asymmetric padding (begin {begin}, end {end}): the IR pads both "
                       "sides of an axis alike")
    return (int(begin[0]), int(begin[1]))


def _window(w: OnnxWalk, x: Tensor, kernel: tuple[int, int]
            ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(strides, dilations, padding) of a conv or pool node."""
    strides = tuple(w.attrs.get("strides", [1, 1]))
    dilations = tuple(w.attrs.get("dilations", [1, 1]))
    return strides, dilations, _symmetric_pads(w, x, kernel, strides, dilations)


# --------------------------------------------------------------------------- weighted ops


def _conv(w: OnnxWalk) -> Tensor:
    x, weight, bias = w.tensor(0), w.constant(1), w.constant(2)
    if weight is None or weight.ndim != 4:
        raise w.refuse("only 2-D convolutions with constant weights are supported")
    kernel = tuple(int(k) for k in weight.shape[2:])
    strides, dilations, padding = _window(w, x, kernel)
    op = w.spec(ops.Conv2d, out_channels=weight.shape[0], kernel=kernel, stride=strides,
                padding=padding, dilation=dilations, groups=int(w.attrs.get("group", 1)),
                bias=bias is not None)
    weights = {"weight": weight} | ({"bias": bias} if bias is not None else {})
    return w.emit(op, [x], weights)


def _batch_norm(w: OnnxWalk) -> Tensor:
    if w.attrs.get("training_mode", 0):
        raise w.refuse("batch normalization in training mode")
    scale, bias, mean, var = (w.constant(k) for k in range(1, 5))
    # ONNX's momentum weighs the old running value: torch's is 1 - it. Both are float32 in
    # the file: read as the shortest decimals that round to them (1e-05, not 9.9999997e-06)
    op = w.spec(ops.BatchNorm2d, eps=_decimal(w.attrs.get("epsilon", 1e-5)),
                momentum=_decimal(1.0 - _decimal(w.attrs.get("momentum", 0.9))))
    return w.emit(op, [w.tensor(0)], {"weight": scale, "bias": bias, "running_mean": mean,
                                      "running_var": var})


def _linear(w: OnnxWalk, x: Tensor, weight: np.ndarray, bias: np.ndarray | None) -> Tensor:
    if not x.type.flat:
        raise w.refuse(f"a fully connected layer on {x.type}: only N x F vectors (flatten "
                       "first)")
    op = w.spec(ops.Linear, out_features=weight.shape[0], bias=bias is not None)
    weights = {"weight": weight} | ({"bias": bias} if bias is not None else {})
    return w.emit(op, [x], weights)


def _gemm(w: OnnxWalk) -> Tensor:
    b, c = w.constant(1), w.constant(2)
    if w.attrs.get("transA", 0) or b is None or b.ndim != 2:
        raise w.refuse("Gemm with transA or a non-constant B")
    weight = (b if w.attrs.get("transB", 0) else b.T) * np.float32(w.attrs.get("alpha", 1.0))
    bias, out = None, weight.shape[0]
    if c is not None:
        c = c * np.float32(w.attrs.get("beta", 1.0))
        if c.size == 1:
            bias = np.full(out, c.item(), np.float32)
        elif c.size == out and c.shape[-1] == out:  # (F,) or (1, F)
            bias = c.reshape(out).astype(np.float32)
        else:
            raise w.refuse(f"Gemm with a bias C of shape {list(c.shape)} that varies per "
                           "sample: a Linear's bias is one value per feature")
    return _linear(w, w.tensor(0), weight, bias)


def _bias_after(w: OnnxWalk, features: int) -> np.ndarray | None:
    """The constant vector that the Add right after this node (its only reader) adds, that
    Add then being part of this node; None when there is no such Add."""
    add = w.only_consumer(w.node.output[0])
    if add is None or add.op_type != "Add":
        return None
    other = [n for n in add.input if n != w.node.output[0]]
    value = w.values.get(other[0]) if len(other) == 1 else None
    if not isinstance(value, np.ndarray) or value.size != features or value.shape[-1:] != (
            features,):
        return None
    w.skip(add)
    w.alias(add.output[0], w.node.output[0])
    return value.reshape(-1)


def _matmul(w: OnnxWalk) -> Tensor | Permuted:
    """MatMul by a constant, and the Add of a constant vector right after it: one Linear;
    on a channels-last view (ConvNeXt's pointwise layers) a 1x1 conv."""
    x, weight = w.input(0), w.constant(1)
    if weight is None or weight.ndim != 2:
        raise w.refuse("MatMul by anything but a constant matrix")
    bias = _bias_after(w, weight.shape[1])
    if not isinstance(x, Permuted):
        return _linear(w, w.tensor(0), weight.T.copy(), bias)
    if weight.shape[0] != x.x.channels:
        raise w.refuse(f"MatMul of {x.x.channels} channels by a {list(weight.shape)} matrix")
    # N x H x W x C @ C x F -> N x F x H x W: a 1x1 conv of weight F x C x 1 x 1
    op = w.spec(ops.Conv2d, out_channels=weight.shape[1], kernel=1, bias=bias is not None)
    weights = {"weight": weight.T[:, :, None, None]} | ({"bias": bias} if bias is not None
                                                         else {})
    return Permuted(w.emit(op, [x.x], weights))


def _layer_norm(w: OnnxWalk) -> Permuted:
    """LayerNormalization over the last axis of a channels-last view: `LayerNorm2d`."""
    x = w.input(0)
    if not isinstance(x, Permuted) or w.attrs.get("axis", -1) not in (-1, 3):
        raise w.refuse("LayerNormalization is an IR op only over the channels, on the "
                       "channels-last view (Transpose perm [0, 2, 3, 1], axis -1)")
    if any(w.node.output[1:]):
        raise w.refuse("LayerNormalization's mean and inverse deviation outputs have no IR "
                       "value")
    c = x.x.channels
    scale, bias = w.constant(1), w.constant(2) if len(w.node.input) > 2 else None
    if scale is None or scale.size != c or (bias is not None and bias.size != c):
        raise w.refuse(f"LayerNormalization of {c} channels with a scale or bias that is not "
                       "one value per channel")
    weights = {"weight": scale.reshape(c),
               "bias": np.zeros(c, np.float32) if bias is None else bias.reshape(c)}
    op = w.spec(ops.LayerNorm2d, eps=_decimal(w.attrs.get("epsilon", 1e-5)))
    return Permuted(w.emit(op, [x.x], weights))


# --------------------------------------------------------------------------- activations


def _activation(fn: str) -> Converter:
    return lambda w: w.emit(w.spec(ops.Activation, fn=fn), [w.tensor(0)])


def _clip(w: OnnxWalk) -> Tensor:
    bounds = [w.constant(1), w.constant(2)] if len(w.node.input) > 1 else [
        w.attrs.get("min"), w.attrs.get("max")]
    low, high = (None if b is None else float(np.asarray(b).reshape(-1)[0]) for b in bounds)
    fn = {(0.0, 6.0): "relu6", (0.0, None): "relu"}.get((low, high))
    if fn is None:
        raise w.refuse(f"Clip to [{low}, {high}]: only [0, 6] (relu6) and [0, inf) (relu) "
                       "are IR activations")
    return w.emit(w.spec(ops.Activation, fn=fn), [w.tensor(0)])


def _gelu(w: OnnxWalk) -> Tensor:
    approximate = w.attrs.get("approximate", b"none")
    if (approximate.decode() if isinstance(approximate, bytes) else approximate) != "none":
        raise w.refuse("Gelu with the tanh approximation: the IR's gelu is exact")
    return w.emit(w.spec(ops.Activation, fn="gelu"), [w.tensor(0)])


def _hard_sigmoid(w: OnnxWalk) -> Tensor:
    """torch's hardsigmoid (alpha 1/6, beta 1/2). Times its own input it is hardswish;
    alone (MobileNetV3's gate) it is relu6(y + 3) / 6 with the +3 folded into the bias of
    the conv or linear layer making y, as the IR has no hardsigmoid."""
    alpha, beta = w.attrs.get("alpha", 0.2), w.attrs.get("beta", 0.5)
    if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
        raise w.refuse(f"HardSigmoid with alpha {alpha:g}, beta {beta:g}: only torch's "
                       "(1/6, 1/2) is supported")
    x = w.tensor(0)
    mul = w.only_consumer(w.node.output[0])
    if mul is not None and mul.op_type == "Mul" and set(mul.input) == {
            w.node.input[0], w.node.output[0]}:
        w.skip(mul)
        w.alias(mul.output[0], w.node.output[0])
        return w.emit(w.spec(ops.Activation, fn="hardswish"), [x])
    if not (w.foldable(0) and w.build.add_to_bias(x, 3.0)):
        raise w.refuse("HardSigmoid is imported only times its input (hardswish) or right "
                       "after a conv or linear layer with a bias (as relu6(y + 3) / 6)")
    base = w.node_id()
    y = w.emit(w.spec(ops.Activation, fn="relu6"), [x], wanted_id=base + "/relu6")
    return w.build.scale(y, 1 / 6, base, w.where)


# --------------------------------------------------------------------------- pooling


def _pool(cls: type[ops.Op]) -> Converter:
    def convert(w: OnnxWalk) -> Tensor:
        if len(w.node.output) > 1 and w.node.output[1]:
            raise w.refuse("MaxPool's indices output has no IR value")
        x = w.tensor(0)
        kernel = tuple(w.attrs["kernel_shape"])
        strides, dilations, padding = _window(w, x, kernel)
        if dilations != (1, 1):
            raise w.refuse("dilated pooling has no IR op")
        attrs = {"kernel": kernel, "stride": strides, "padding": padding,
                 "ceil_mode": bool(w.attrs.get("ceil_mode", 0))}
        if cls is ops.AvgPool2d:
            attrs["count_include_pad"] = bool(w.attrs.get("count_include_pad", 0))
        return w.emit(w.spec(cls, **attrs), [x])
    return convert


def _reduce_mean(w: OnnxWalk) -> Tensor:
    x = w.tensor(0)
    axes = w.attrs.get("axes")
    if axes is None and len(w.node.input) > 1:
        axes = w.constant(1).tolist()
    if x.type.flat or axes is None or sorted(a % 4 for a in axes) != [2, 3]:
        raise w.refuse(f"ReduceMean over axes {axes}: only the spatial mean (axes 2 and 3 of "
                       "N x C x H x W) is global average pooling")
    y = w.emit(ops.GlobalAvgPool(), [x], wanted_id=w.node_id() + "/mean")
    return y if w.attrs.get("keepdims", 1) else w.emit(ops.Flatten(), [y])


# --------------------------------------------------------------------------- merging


def _concat(w: OnnxWalk) -> Tensor:
    xs = [w.input(k) for k in range(len(w.node.input))]
    rank = 2 if isinstance(xs[0], Tensor) and xs[0].type.flat else 4
    if w.attrs["axis"] % rank != 1 or not all(isinstance(x, Tensor) for x in xs):
        raise w.refuse(f"Concat along axis {w.attrs['axis']}, or of constants: only tensors "
                       "along channels (axis 1)")
    return xs[0] if len(xs) == 1 else w.emit(ops.Concat(), xs)


def _binary(w: OnnxWalk) -> tuple[object, object]:
    return w.input(0), w.input(1)


def _number(value: object) -> float | None:
    return float(value.reshape(-1)[0]) if isinstance(value, np.ndarray) and value.size == 1 \
        else None


def _add(sign: float) -> Converter:
    def convert(w: OnnxWalk) -> Tensor:
        a, b = _binary(w)
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            return w.emit(w.spec(ops.Add, weights=None if sign == 1 else (1.0, sign)), [a, b])
        x, constant = (a, _number(b)) if isinstance(a, Tensor) else (b, _number(a))
        if constant is None or (sign < 0 and x is b):
            raise w.refuse("adding a constant tensor has no IR op (tensor + tensor, and "
                           "tensor + number after a layer with a bias, are supported)")
        if constant == 0:
            return x
        if w.foldable(0 if x is a else 1) and w.build.add_to_bias(x, sign * constant):
            return x
        raise w.refuse("adding a number is imported only right after a conv or linear layer "
                       "with a bias (folded into it)")
    return convert


def _mul(w: OnnxWalk) -> Tensor:
    a, b = _binary(w)
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return w.emit(ops.Mul(), [a, b])
    x, factor = (a, _number(b)) if isinstance(a, Tensor) else (b, _number(a))
    if factor is None and _layer_scale(w, x, b if x is a else a):
        return x
    return _scaled(w, x, factor)


def _layer_scale(w: OnnxWalk, x: object, scale: object) -> bool:
    """`x * s`, s a constant C x 1 x 1 (ConvNeXt's layer scale): folded into the conv that
    made x when nothing else reads x; inference-exact, one parameter per channel fewer."""
    if not isinstance(x, Tensor) or x.type.flat or not isinstance(scale, np.ndarray) or \
            scale.shape not in ((x.channels, 1, 1), (1, x.channels, 1, 1)):
        return False
    return w.sole_reader(x) and w.build.scale_channels(x, scale.reshape(-1))


def _div(w: OnnxWalk) -> Tensor:
    a, b = _binary(w)
    factor = _number(b)
    if not isinstance(a, Tensor) or not factor:
        raise w.refuse("only division of a tensor by a nonzero number is supported")
    if math.isclose(factor, math.sqrt(2), rel_tol=1e-6):
        gelu = _erf_gelu(w, a)
        if gelu is not None:
            return gelu
    return _scaled(w, a, 1 / factor)


def _erf_gelu(w: OnnxWalk, x: Tensor) -> Tensor | None:
    """The exact gelu as torch exports it before opset 20, from this Div on:
    `x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5`, each step the previous one's only reader;
    one gelu Activation. None when the nodes after this Div are not that chain."""
    def constant(node: onnx.NodeProto, reads: str) -> float | None:
        other = [n for n in node.input if n != reads]
        return _number(w.values.get(other[0])) if len(other) == 1 else None

    erf = w.only_consumer(w.node.output[0])
    add = erf and erf.op_type == "Erf" and w.only_consumer(erf.output[0])
    if not add or add.op_type != "Add" or constant(add, erf.output[0]) != 1.0:
        return None
    times_x = w.only_consumer(add.output[0])
    if times_x is None or times_x.op_type != "Mul" or sorted(times_x.input) != sorted(
            [add.output[0], w.node.input[0]]):
        return None
    half = w.only_consumer(times_x.output[0])
    if half is None or half.op_type != "Mul" or constant(half, times_x.output[0]) != 0.5:
        return None
    for node in (erf, add, times_x, half):
        w.skip(node)
    w.alias(half.output[0], w.node.output[0])
    scope = w.node_id().rsplit("/", 1)[0]  # the Div's scope: torch's GELU module
    return w.emit(w.spec(ops.Activation, fn="gelu"), [x], wanted_id=scope + "/gelu")


def _scaled(w: OnnxWalk, x: Tensor, factor: float | None) -> Tensor:
    if factor is None:
        raise w.refuse("multiplying by a constant tensor has no IR op (tensor * tensor and "
                       "tensor * number are supported)")
    return x if factor == 1 else w.build.scale(x, factor, w.node_id(), w.where)


# --------------------------------------------------------------------------- reshaping


def _flatten(w: OnnxWalk) -> Tensor:
    x = w.tensor(0)
    if w.attrs.get("axis", 1) != 1:
        raise w.refuse(f"Flatten at axis {w.attrs['axis']}: only axis 1 keeps the batch")
    return x if x.type.flat else w.emit(ops.Flatten(), [x])


def _reshape(w: OnnxWalk) -> Tensor | Grouped:
    """Flattening to N x features, and the reshapes of a channel shuffle."""
    value, shape = w.input(0), w.constant(1)
    target = None if shape is None else [int(d) for d in shape]
    inside = viewed(value)
    sample = None if target is None or inside is None or (
        not isinstance(value, Tensor) and 0 in target[1:]) else per_sample(w, inside, target)
    shuffled = reshape_view(w, value, sample)
    if shuffled is not None:
        return shuffled
    x = w.tensor(0)
    if sample != [x.type.numel]:
        raise w.refuse(f"Reshape of {x.type} to {target}: only flattening to N x features "
                       "(a constant shape) is an IR op")
    return x if x.type.flat else w.emit(ops.Flatten(), [x])


def _resize(w: OnnxWalk) -> Tensor:
    """Resize and Upsample as torch exports interpolate: nearest (asymmetric, floor) and
    bilinear (half_pixel, or align_corners)."""
    x = w.tensor(0)
    mode = w.attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    how = w.attrs.get("coordinate_transformation_mode", b"half_pixel")
    how = how.decode() if isinstance(how, bytes) else how
    if w.node.op_type == "Upsample":
        scales, sizes, how = w.constant(1), None, "asymmetric"
    else:
        scales = w.constant(2) if len(w.node.input) > 2 else None
        sizes = w.constant(3) if len(w.node.input) > 3 else None
    attrs: dict[str, object] = {}
    if mode == "nearest" and how == "asymmetric" and w.attrs.get(
            "nearest_mode", b"floor") in (b"floor", "floor"):
        attrs["mode"] = "nearest"
    elif mode == "linear" and how in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        attrs.update(mode="bilinear", align_corners=how == "align_corners")
    else:
        raise w.refuse(f"Resize mode {mode!r} with {how!r} coordinates: only torch's nearest "
                       "(asymmetric, floor) and bilinear (half_pixel or align_corners)")
    if sizes is not None and sizes.size:
        if sizes.size != 4 or sizes[0] not in w.batches or sizes[1] != x.type.channels:
            raise w.refuse(f"Resize to {sizes.tolist()}: only H and W may change")
        attrs["size"] = (int(sizes[-2]), int(sizes[-1]))
    elif scales is not None and scales.size == 4 and scales[2] == scales[3]:
        attrs["scale"] = float(scales[2])
    else:
        raise w.refuse(f"Resize by scales {scales}: only equal constant scales over H and W, "
                       "or constant sizes")
    return w.emit(w.spec(ops.Upsample, **attrs), [x])


def _pad(w: OnnxWalk) -> Tensor:
    pads = w.constant(1) if len(w.node.input) > 1 else np.array(w.attrs.get("pads", []))
    value = w.constant(2) if len(w.node.input) > 2 else None
    mode = w.attrs.get("mode", b"constant")
    p = [int(v) for v in pads] if pads is not None else []
    if mode not in (b"constant", "constant") or len(p) != 8 or any(
            p[k] for k in (0, 2, 3, 4, 6, 7)) or min(p) < 0 or (_number(value) or 0) != 0:
        raise w.refuse(f"Pad {p}: only zero channels added is an IR op (spatial padding "
                       "belongs in the conv or pool)")
    return w.emit(w.spec(ops.ChannelPad, before=p[1], after=p[5]), [w.tensor(0)])


CONVERTERS: dict[str, Converter] = {
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Relu": _activation("relu"),
    "Sigmoid": _activation("sigmoid"),
    "Tanh": _activation("tanh"),
    "HardSwish": _activation("hardswish"),
    "Clip": _clip,
    "Gelu": _gelu,
    "HardSigmoid": _hard_sigmoid,
    "MaxPool": _pool(ops.MaxPool2d),
    "AveragePool": _pool(ops.AvgPool2d),
    "GlobalAveragePool": lambda w: w.emit(ops.GlobalAvgPool(), [w.tensor(0)]),
    "ReduceMean": _reduce_mean,
    "Concat": _concat,
    "Add": _add(1.0),
    "Sub": _add(-1.0),
    "Mul": _mul,
    "Div": _div,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Resize": _resize,
    "Upsample": _resize,
    "Pad": _pad,
    "Transpose": transpose,
    "Slice": slice_channels,
    "Split": split_channels,
    "LayerNormalization": _layer_norm,
}

# What reads a view (`_onnx_views.Grouped`, `Permuted`) as its first input; any other node
# reading one is refused
ON_VIEWS: dict[str, Converter] = {
    "Transpose": transpose,
    "Reshape": _reshape,
    "LayerNormalization": _layer_norm,
    "MatMul": _matmul,
    **{op: on_channels(CONVERTERS[op])
       for op in ("Relu", "Sigmoid", "Tanh", "Gelu", "Div")},  # Div: by a number only
}

# ONNX ops whose first output is their first input at inference
PASS_THROUGH = {"Identity", "Dropout"}
