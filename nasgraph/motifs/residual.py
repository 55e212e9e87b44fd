"""Residual blocks (He et al. 2015, 2016): basic and bottleneck, post- and pre-activation,
projection or identity shortcuts, and the grouped (ResNeXt) and wide variants.

Node names follow torchvision's modules (conv1, bn1, downsample/0, ...), so that a
torchvision state dict maps onto a lowered graph key for key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nasgraph.ir import GraphBuilder, Tensor


class ResidualBlock(BaseModel):
    """One residual block.

    Width is `planes` (the block's inner channels, times `base_width / 64 * groups` for a
    bottleneck, as in torchvision); multiplicity is `groups` (ResNeXt's cardinality) and
    the shortcut itself; depth is how many blocks a stage repeats (`residual_stage`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["basic", "bottleneck"] = "basic"
    planes: int = Field(gt=0)
    stride: int = Field(default=1, gt=0)
    groups: int = Field(default=1, gt=0)
    base_width: int = Field(default=64, gt=0)
    preact: bool = False
    dilation: int = Field(default=1, gt=0)
    act: str = "relu"

    @property
    def expansion(self) -> int:
        return 1 if self.kind == "basic" else 4

    @property
    def out_channels(self) -> int:
        return self.planes * self.expansion

    @property
    def inner_width(self) -> int:
        if self.kind == "basic":
            return self.planes
        return int(self.planes * (self.base_width / 64.0)) * self.groups


def residual_block(b: GraphBuilder, x: Tensor, cfg: ResidualBlock) -> Tensor:
    """Add one block to `b` in the current scope; returns its output."""
    needs_projection = cfg.stride != 1 or x.channels != cfg.out_channels
    if cfg.preact:
        return _preact_block(b, x, cfg, needs_projection)
    shortcut = x
    if needs_projection:
        with b.scope("downsample"):
            shortcut = b.conv(x, cfg.out_channels, 1, stride=cfg.stride, bias=False, name="0")
            shortcut = b.bn(shortcut, name="1")
    for k, (width, kernel, stride) in enumerate(_layers(cfg), start=1):
        last = k == len(_layers(cfg))
        pad = cfg.dilation if kernel == 3 else 0
        x = b.conv(x, width, kernel, stride=stride, padding=pad,
                   dilation=cfg.dilation if kernel == 3 else 1,
                   groups=cfg.groups if kernel == 3 and cfg.kind == "bottleneck" else 1,
                   bias=False, name=f"conv{k}")
        x = b.bn(x, name=f"bn{k}")
        if not last:
            x = b.act(x, cfg.act)
    x = b.add([x, shortcut])
    return b.act(x, cfg.act)


def _layers(cfg: ResidualBlock) -> list[tuple[int, int, int]]:
    """(out channels, kernel, stride) of each conv of the block's main path."""
    if cfg.kind == "basic":
        return [(cfg.planes, 3, cfg.stride), (cfg.planes, 3, 1)]
    return [(cfg.inner_width, 1, 1), (cfg.inner_width, 3, cfg.stride),
            (cfg.out_channels, 1, 1)]


def _preact_block(b: GraphBuilder, x: Tensor, cfg: ResidualBlock,
                  needs_projection: bool) -> Tensor:
    # Identity mappings (He et al. 2016): BN -> act -> conv, nothing after the add. The
    # projection, when needed, reads the pre-activated input, as in the paper's code.
    shortcut = x
    for k, (width, kernel, stride) in enumerate(_layers(cfg), start=1):
        x = b.bn(x, name=f"bn{k}")
        x = b.act(x, cfg.act)
        if k == 1 and needs_projection:
            shortcut = b.conv(x, cfg.out_channels, 1, stride=cfg.stride, bias=False,
                              name="shortcut")
        x = b.conv(x, width, kernel, stride=stride, padding=1 if kernel == 3 else 0,
                   groups=cfg.groups if kernel == 3 and cfg.kind == "bottleneck" else 1,
                   bias=False, name=f"conv{k}")
    return b.add([x, shortcut])


def residual_stage(b: GraphBuilder, x: Tensor, cfg: ResidualBlock, depth: int,
                   dilation: int | None = None) -> Tensor:
    """`depth` blocks in scopes `0`, `1`, ...; the first is `cfg`, the rest have stride 1
    (and `dilation`, when given, as torchvision's dilated stages do)."""
    rest = cfg.model_copy(update={"stride": 1, "dilation": dilation or cfg.dilation})
    for k in range(depth):
        with b.scope(str(k)):
            x = residual_block(b, x, cfg if k == 0 else rest)
    return x
