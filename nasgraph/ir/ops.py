"""One frozen spec per op, and the registry of them all.

Each spec defines, once, everything the rest of nasgraph needs to know about its op:
its attributes (validated by pydantic), its type rule (`infer`), its trainable parameter
count (`params`), its weights (`weight_specs`: names, shapes, initialization), its
multiply-accumulates (`macs`) and other arithmetic (`flops`), its window for receptive-field
arithmetic (`window`) and a short label for tables and pictures.
Backends, the renderer and the exporter look ops up by `kind` in `OPS`; a test walks the
registry and fails when any of them lacks an entry.

Cost conventions (docs/costs.md): `macs` counts the multiply-accumulates of conv and linear
layers only (what papers and torchvision call FLOPs); `flops` counts 2 per MAC plus every
other arithmetic op, one per add, multiply, compare or divide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import (
    Field,
    model_validator,
)

from nasgraph.ir.op_base import (  # noqa: F401  (the registry and base, re-exported)
    ACTIVATION_FLOPS,
    OPS,
    ActivationFn,
    Init,
    Op,
    PaddingPair,
    PositivePair,
    WeightSpec,
    Window,
    _fail,
    _fmt,
    _require_spatial,
    attribute_error,
    register_op,
)
from nasgraph.ir.types import DType, TensorType, conv_output_size

# --------------------------------------------------------------------------- graph ends


@register_op
class Input(Op):
    """A graph input of one sample's shape (the batch dimension is implicit)."""

    kind: ClassVar[str] = "input"
    arity: ClassVar[tuple[int, int | None]] = (0, 0)
    family: ClassVar[str] = "io"

    channels: int = Field(gt=0)
    height: int = Field(default=1, gt=0)
    width: int = Field(default=1, gt=0)
    dtype: DType = "float32"
    flat: bool = False  # a feature vector (a block cut out after a Flatten: Graph.subgraph)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        return TensorType(channels=self.channels, height=self.height, width=self.width,
                          dtype=self.dtype, flat=self.flat)

    def label(self) -> str:
        return f"input {self.infer([])}"


@register_op
class Output(Op):
    """Marks its input as a graph output. A graph may have several."""

    kind: ClassVar[str] = "output"
    family: ClassVar[str] = "io"
    is_alias: ClassVar[bool] = True


# --------------------------------------------------------------------------- convolution


@register_op
class Conv2d(Op):
    """2-D convolution; `kernel`, `stride`, `padding`, `dilation` take an int or (h, w).

    `padding="same"` keeps the spatial size (stride 1, odd effective kernel), and
    `groups=in_channels` makes a depthwise convolution.
    """

    kind: ClassVar[str] = "conv2d"
    family: ClassVar[str] = "conv"
    is_layer: ClassVar[bool] = True

    out_channels: int = Field(gt=0)
    kernel: PositivePair = (3, 3)
    stride: PositivePair = (1, 1)
    padding: PaddingPair | Literal["same"] = (0, 0)
    dilation: PositivePair = (1, 1)
    groups: int = Field(default=1, gt=0)
    bias: bool = True

    @model_validator(mode="after")
    def _same_padding_is_resolvable(self) -> Conv2d:
        if self.padding == "same":
            if self.stride != (1, 1):
                raise ValueError("padding='same' needs stride 1 (give explicit padding)")
            for k, d in zip(self.kernel, self.dilation, strict=True):
                if d * (k - 1) % 2:
                    raise ValueError("padding='same' needs an odd effective kernel")
        if self.out_channels % self.groups:
            raise ValueError(f"groups={self.groups} does not divide "
                             f"out_channels={self.out_channels}")
        return self

    @property
    def pad(self) -> tuple[int, int]:
        """Padding as an (h, w) pair, with 'same' resolved."""
        if self.padding == "same":
            return (self.dilation[0] * (self.kernel[0] - 1) // 2,
                    self.dilation[1] * (self.kernel[1] - 1) // 2)
        return self.padding

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = inputs
        _require_spatial(self, x)
        if x.channels % self.groups:
            raise _fail(f"groups={self.groups} does not divide the {x.channels} input channels",
                        "choose groups dividing both in and out channels")
        size = [conv_output_size(n, k, s, p, d) for n, k, s, p, d in
                zip(x.spatial, self.kernel, self.stride, self.pad, self.dilation, strict=True)]
        if min(size) < 1:
            raise _fail(f"kernel {_fmt(self.kernel)} (dilation {_fmt(self.dilation)}) is larger "
                        f"than its padded input {x.height}x{x.width} (padding {_fmt(self.pad)})",
                        "use a smaller kernel, more padding or a larger input")
        return TensorType(channels=self.out_channels, height=size[0], width=size[1],
                          dtype=x.dtype)

    def weight_specs(self, inputs: Sequence[TensorType]) -> dict[str, WeightSpec]:
        # Cout x Cin/groups x kh x kw; torch's fan_out ignores groups: Cout * kh * kw
        fan_out = self.out_channels * self.kernel[0] * self.kernel[1]
        specs = {"weight": WeightSpec((self.out_channels, inputs[0].channels // self.groups,
                                       *self.kernel), "he_normal_fan_out", fan_out)}
        if self.bias:
            specs["bias"] = WeightSpec((self.out_channels,), "zeros")
        return specs

    def macs(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        k = self.kernel[0] * self.kernel[1]
        return output.numel * (inputs[0].channels // self.groups) * k

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return 2 * self.macs(inputs, output) + (output.numel if self.bias else 0)

    def window(self, inputs: Sequence[TensorType]) -> Window:
        eff = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation, strict=True))
        return (eff, (float(self.stride[0]), float(self.stride[1])))

    def label(self) -> str:
        stride = ""
        if self.stride != (1, 1):
            square = self.stride[0] == self.stride[1]
            stride = f"/{self.stride[0]}" if square else f"/{_fmt(self.stride)}"
        text = f"conv {_fmt(self.kernel)}{stride}, {self.out_channels}"
        if self.dilation != (1, 1):
            text += f", dil {self.dilation[0]}"
        if self.groups > 1:
            text += f", g{self.groups}"
        return text


@register_op
class FusedConv2d(Conv2d):
    """Conv2d, then `+ residual` (a second input, when `residual`), then `act` (if any).

    What `nasgraph.passes.fuse_epilogues` makes of `act(conv(x) + r)` chains, so that a
    backend adds and activates while the conv's result is still in registers. Its weights
    are the conv's.
    """

    kind: ClassVar[str] = "fused_conv2d"
    arity: ClassVar[tuple[int, int | None]] = (1, 2)

    act: ActivationFn | None = None
    residual: bool = False

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        out = super().infer(inputs[:1])
        if len(inputs) != 1 + self.residual:
            raise _fail(f"fused conv takes {1 + self.residual} inputs, got {len(inputs)}")
        if self.residual and inputs[1] != out:
            raise _fail(f"residual {inputs[1]} does not match the conv's output {out}")
        return out

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        extra = int(self.residual) + (ACTIVATION_FLOPS[self.act] if self.act else 0)
        return super().flops(inputs[:1], output) + extra * output.numel

    def label(self) -> str:
        return super().label() + ("+res" if self.residual else "") + (
            f"+{self.act}" if self.act else "")


# --------------------------------------------------------------------------- normalization


@register_op
class BatchNorm2d(Op):
    """Batch normalization over channels (affine; running statistics are not parameters)."""

    kind: ClassVar[str] = "batchnorm2d"
    family: ClassVar[str] = "norm"

    eps: float = Field(default=1e-5, gt=0)
    momentum: float = Field(default=0.1, ge=0, le=1)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        _require_spatial(self, inputs[0])
        return inputs[0]

    def weight_specs(self, inputs: Sequence[TensorType]) -> dict[str, WeightSpec]:
        c = (inputs[0].channels,)
        return {"weight": WeightSpec(c, "ones"), "bias": WeightSpec(c, "zeros"),
                "running_mean": WeightSpec(c, "zeros", trainable=False),
                "running_var": WeightSpec(c, "ones", trainable=False),
                "num_batches_tracked": WeightSpec((), "zeros", trainable=False, optional=True,
                                                  dtype="int64")}

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return 2 * output.numel  # inference: one multiply and one add per element

    def label(self) -> str:
        return "bn"


@register_op
class LayerNorm2d(Op):
    """Layer normalization over the channels of each pixel (ConvNeXt's `LayerNorm2d`, torch's
    `nn.LayerNorm(C)` on the channels-last view): each pixel's C values less their mean, over
    the root of their (biased) variance + eps, times `weight` plus `bias`, per channel."""

    kind: ClassVar[str] = "layernorm2d"
    family: ClassVar[str] = "norm"

    eps: float = Field(default=1e-6, gt=0)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        _require_spatial(self, inputs[0])
        return inputs[0]

    def weight_specs(self, inputs: Sequence[TensorType]) -> dict[str, WeightSpec]:
        c = (inputs[0].channels,)
        return {"weight": WeightSpec(c, "ones"), "bias": WeightSpec(c, "zeros")}

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        # per element: an add for the mean, a subtract, a multiply and an add for the
        # variance, a subtract and a multiply to normalize, a multiply and an add of the
        # affine transform
        return 8 * output.numel

    def label(self) -> str:
        return "layernorm"


@register_op
class Activation(Op):
    """An elementwise nonlinearity."""

    kind: ClassVar[str] = "activation"
    family: ClassVar[str] = "act"

    fn: ActivationFn = "relu"

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return ACTIVATION_FLOPS[self.fn] * output.numel

    def label(self) -> str:
        return self.fn


# --------------------------------------------------------------------------- pooling


class _Pool2d(Op):
    family: ClassVar[str] = "pool"

    kernel: PositivePair = (2, 2)
    stride: PositivePair | None = None  # None: equal to the kernel, as in torch
    padding: PaddingPair = (0, 0)
    ceil_mode: bool = False

    @property
    def strides(self) -> tuple[int, int]:
        return self.stride if self.stride is not None else self.kernel

    @model_validator(mode="after")
    def _padding_at_most_half_kernel(self) -> _Pool2d:
        if any(2 * p > k for p, k in zip(self.padding, self.kernel, strict=True)):
            raise ValueError(f"padding {_fmt(self.padding)} exceeds half the kernel "
                             f"{_fmt(self.kernel)}")
        return self

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = inputs
        _require_spatial(self, x)
        size = [conv_output_size(n, k, s, p, 1, self.ceil_mode) for n, k, s, p in
                zip(x.spatial, self.kernel, self.strides, self.padding, strict=True)]
        if min(size) < 1:
            raise _fail(f"kernel {_fmt(self.kernel)} is larger than its padded input "
                        f"{x.height}x{x.width} (padding {_fmt(self.padding)})",
                        "use a smaller window or a larger input")
        return x.model_copy(update={"height": size[0], "width": size[1]})

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        # (k - 1) compares or adds per output, plus one divide for averages
        extra = 0 if self.kind == "maxpool2d" else 1
        return output.numel * (self.kernel[0] * self.kernel[1] - 1 + extra)

    def window(self, inputs: Sequence[TensorType]) -> Window:
        return (self.kernel, (float(self.strides[0]), float(self.strides[1])))

    def label(self) -> str:
        name = self.kind.removesuffix("2d")
        stride = self.strides
        s = f"/{stride[0]}" if stride[0] == stride[1] else f"/{_fmt(stride)}"
        return f"{name} {_fmt(self.kernel)}{s if stride != (1, 1) else ''}"


@register_op
class MaxPool2d(_Pool2d):
    """Max pooling; `stride` defaults to the kernel size."""

    kind: ClassVar[str] = "maxpool2d"


@register_op
class AvgPool2d(_Pool2d):
    """Average pooling; `count_include_pad` as in torch."""

    kind: ClassVar[str] = "avgpool2d"

    count_include_pad: bool = True


@register_op
class GlobalAvgPool(Op):
    """Average over all positions: C x H x W -> C x 1 x 1 (torch's AdaptiveAvgPool2d(1))."""

    kind: ClassVar[str] = "global_avgpool"
    family: ClassVar[str] = "pool"
    is_global: ClassVar[bool] = True

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        _require_spatial(self, inputs[0])
        return inputs[0].model_copy(update={"height": 1, "width": 1})

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return inputs[0].numel  # H*W - 1 adds and one divide per channel

    def label(self) -> str:
        return "global avgpool"


@register_op
class AdaptiveAvgPool2d(Op):
    """Average pooling to a fixed output `size` (torch's AdaptiveAvgPool2d).

    Window i along an axis covers [floor(i * n / size), ceil((i + 1) * n / size)): AlexNet's
    and VGG's classifiers use it so that any input size works.
    """

    kind: ClassVar[str] = "adaptive_avgpool2d"
    family: ClassVar[str] = "pool"

    size: PositivePair = (1, 1)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        _require_spatial(self, inputs[0])
        return inputs[0].model_copy(update={"height": self.size[0], "width": self.size[1]})

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        # each output averages its window: (window - 1) adds and a divide
        windows = [sum(-(-(i + 1) * n // s) - (i * n // s) for i in range(s))
                   for n, s in zip(inputs[0].spatial, self.size, strict=True)]
        return inputs[0].channels * windows[0] * windows[1]

    def window(self, inputs: Sequence[TensorType]) -> Window:
        n, s = inputs[0].spatial, self.size
        kernel = tuple(-(-n[a] // s[a]) + (1 if n[a] % s[a] else 0) for a in (0, 1))
        return (kernel, (n[0] / s[0], n[1] / s[1]))

    def label(self) -> str:
        return f"adaptive avgpool to {_fmt(self.size)}"


# --------------------------------------------------------------------------- merging


def _describe(inputs: Sequence[TensorType]) -> str:
    return ", ".join(str(t) for t in inputs)


@register_op
class Concat(Op):
    """Concatenation along the channel axis; inputs share their spatial size."""

    kind: ClassVar[str] = "concat"
    arity: ClassVar[tuple[int, int | None]] = (1, None)
    family: ClassVar[str] = "merge"

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        first = inputs[0]
        for t in inputs[1:]:
            if t.flat != first.flat or t.spatial != first.spatial:
                raise _fail(f"spatial mismatch: cannot concatenate {_describe(inputs)} "
                            "along channels",
                            "bring the branches to the same height and width "
                            "(stride, padding or pooling)")
            if t.dtype != first.dtype:
                raise _fail(f"dtype mismatch: {first.dtype} and {t.dtype}")
        return first.model_copy(update={"channels": sum(t.channels for t in inputs)})


@register_op
class Add(Op):
    """Elementwise sum of n inputs of the same type, optionally weighted: sum(w_i * x_i).

    Weights give the scaled residual add of Inception-ResNet (`weights=(0.17, 1.0)`).
    """

    kind: ClassVar[str] = "add"
    arity: ClassVar[tuple[int, int | None]] = (2, None)
    family: ClassVar[str] = "merge"

    weights: tuple[float, ...] | None = None

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        first = inputs[0]
        for t in inputs[1:]:
            if t != first:
                what = "channel" if t.channels != first.channels else "shape"
                raise _fail(f"{what} mismatch: cannot add {_describe(inputs)}",
                            "project the shortcut with a 1x1 conv (and stride) to match")
        if self.weights is not None and len(self.weights) != len(inputs):
            raise _fail(f"{len(self.weights)} weights for {len(inputs)} inputs")
        return first

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        scaled = sum(w != 1.0 for w in self.weights) if self.weights else 0
        return output.numel * (len(inputs) - 1 + scaled)

    def label(self) -> str:
        return "add" if self.weights is None else "add " + ", ".join(
            f"{w:g}" for w in self.weights)


@register_op
class Mul(Op):
    """Elementwise product of two inputs; a C x 1 x 1 input broadcasts over H x W.

    This is the gate of squeeze-and-excitation: `mul(x, sigmoid(fc(gap(x))))`.
    """

    kind: ClassVar[str] = "mul"
    arity: ClassVar[tuple[int, int | None]] = (2, 2)
    family: ClassVar[str] = "merge"

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        a, b = inputs
        out = a if a.numel >= b.numel else b
        for t in (a, b):
            if (t.channels != out.channels or t.flat != out.flat
                    or t.spatial not in (out.spatial, (1, 1))):
                raise _fail(f"cannot multiply {a} by {b}",
                            "shapes must match, or one must be C x 1 x 1 with the same C")
        return out

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return output.numel


# --------------------------------------------------------------------------- classifier


@register_op
class Flatten(Op):
    """C x H x W -> a vector of C*H*W features (a view, no copy)."""

    kind: ClassVar[str] = "flatten"
    family: ClassVar[str] = "reshape"
    is_alias: ClassVar[bool] = True
    is_global: ClassVar[bool] = True

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        return TensorType.vector(inputs[0].numel, inputs[0].dtype)


@register_op
class Linear(Op):
    """Fully connected layer on a flat vector."""

    kind: ClassVar[str] = "linear"
    family: ClassVar[str] = "linear"
    is_layer: ClassVar[bool] = True

    out_features: int = Field(gt=0)
    bias: bool = True

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = inputs
        if not x.flat:
            raise _fail(f"linear needs a flat vector, got {x}", "insert a Flatten before it")
        return TensorType.vector(self.out_features, x.dtype)

    def weight_specs(self, inputs: Sequence[TensorType]) -> dict[str, WeightSpec]:
        # torch's default: weight and bias uniform within 1/sqrt(in_features)
        fan_in = inputs[0].channels
        specs = {"weight": WeightSpec((self.out_features, fan_in), "uniform_fan_in", fan_in)}
        if self.bias:
            specs["bias"] = WeightSpec((self.out_features,), "uniform_fan_in", fan_in)
        return specs

    def macs(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return inputs[0].channels * self.out_features

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return 2 * self.macs(inputs, output) + (self.out_features if self.bias else 0)

    def label(self) -> str:
        return f"linear {self.out_features}"


@register_op
class Dropout(Op):
    """Dropout with probability `p` in training; the identity at inference."""

    kind: ClassVar[str] = "dropout"
    family: ClassVar[str] = "reshape"
    is_alias: ClassVar[bool] = True

    p: float = Field(default=0.5, ge=0, lt=1)

    def label(self) -> str:
        return f"dropout {self.p:g}"


@register_op
class Identity(Op):
    """Passes its input through unchanged."""

    kind: ClassVar[str] = "identity"
    family: ClassVar[str] = "reshape"
    is_alias: ClassVar[bool] = True


# Ops that move or resample data (resizing, channel padding and shuffling), in their own
# file; imported here so that `ops.Upsample` and the registry have them too.
from nasgraph.ir.ops_layout import *  # noqa: E402, F403
