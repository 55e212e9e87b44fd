"""The specs of the ops that move or resample data without weights: spatial resizing
(`Upsample`), channel padding (`ChannelPad`), shuffling (`ChannelShuffle`) and slicing
(`ChannelSlice`).
Registered like every op (`register_op`); `nasgraph.ir.ops` re-exports them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from nasgraph.ir.op_base import (
    Op,
    PositivePair,
    Window,
    _fail,
    _fmt,
    _require_spatial,
    register_op,
)
from nasgraph.ir.types import TensorType

__all__ = ["ChannelPad", "ChannelShuffle", "ChannelSlice", "Upsample"]

# --------------------------------------------------------------------------- resizing


@register_op
class Upsample(Op):
    """Spatial resize by `scale` or to `size`; `nearest` or `bilinear` (torch's defaults)."""

    kind: ClassVar[str] = "upsample"
    family: ClassVar[str] = "pool"

    mode: Literal["nearest", "bilinear"] = "nearest"
    scale: float | None = Field(default=None, gt=0)
    size: PositivePair | None = None
    align_corners: bool = False

    @model_validator(mode="after")
    def _scale_xor_size(self) -> Upsample:
        if (self.scale is None) == (self.size is None):
            raise ValueError("give exactly one of scale and size")
        if self.align_corners and self.mode != "bilinear":
            raise ValueError("align_corners applies to bilinear mode only")
        return self

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = inputs
        _require_spatial(self, x)
        if self.size is not None:
            h, w = self.size
        else:
            h, w = math.floor(x.height * self.scale), math.floor(x.width * self.scale)
        if min(h, w) < 1:
            raise _fail(f"scale {self.scale:g} shrinks {x} to nothing")
        return x.model_copy(update={"height": h, "width": w})

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        return 7 * output.numel if self.mode == "bilinear" else 0  # 4 multiplies, 3 adds

    def window(self, inputs: Sequence[TensorType]) -> Window:
        out = self.infer(inputs)
        return ((1, 1), (inputs[0].height / out.height, inputs[0].width / out.width))

    def label(self) -> str:
        how = f"x{self.scale:g}" if self.scale is not None else f"to {_fmt(self.size)}"
        return f"upsample {self.mode} {how}"


@register_op
class ChannelPad(Op):
    """Zero channels added before and after the input's (PyramidNet's and the CIFAR ResNets'
    parameter-free shortcut, torch's `F.pad(x, (0, 0, 0, 0, before, after))`)."""

    kind: ClassVar[str] = "channel_pad"
    family: ClassVar[str] = "reshape"

    before: int = Field(default=0, ge=0)
    after: int = Field(default=0, ge=0)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        _require_spatial(self, inputs[0])
        return inputs[0].model_copy(
            update={"channels": inputs[0].channels + self.before + self.after})

    def label(self) -> str:
        return f"pad channels +{self.before + self.after}"


@register_op
class ChannelShuffle(Op):
    """ShuffleNet's channel shuffle: the channels, seen as `groups` rows of C / groups,
    transposed, so that the next grouped conv mixes every group (Zhang et al. 2018; torch's
    `F.channel_shuffle`). Output channel `j * groups + i` is input channel
    `i * (C / groups) + j`."""

    kind: ClassVar[str] = "channel_shuffle"
    family: ClassVar[str] = "reshape"

    groups: int = Field(gt=0)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = inputs
        _require_spatial(self, x)
        if x.channels % self.groups:
            raise _fail(f"cannot shuffle {x.channels} channels in {self.groups} groups",
                        "the channels must be a multiple of groups")
        return x

    def label(self) -> str:
        return f"shuffle {self.groups} groups"


@register_op
class ChannelSlice(Op):
    """Channels `start` to `stop` (exclusive) of the input: one part of a split, as
    ShuffleNet v2 splits its input between a branch and a shortcut (torch's
    `x.narrow(1, start, stop - start)`, `x.chunk(2, dim=1)[k]`)."""

    kind: ClassVar[str] = "channel_slice"
    family: ClassVar[str] = "reshape"

    start: int = Field(ge=0)
    stop: int = Field(gt=0)

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        (x,) = inputs
        _require_spatial(self, x)
        if not self.start < self.stop <= x.channels:
            raise _fail(f"cannot take channels {self.start}:{self.stop} of {x}",
                        f"0 <= start < stop <= {x.channels}")
        return x.model_copy(update={"channels": self.stop - self.start})

    def label(self) -> str:
        return f"channels {self.start}:{self.stop}"
