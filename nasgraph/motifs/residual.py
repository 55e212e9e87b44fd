"""Residual blocks (He et al. 2015, 2016): basic and bottleneck, post- and pre-activation,
projection or zero-padded shortcuts, and the grouped (ResNeXt), wide (WRN) and pyramidal
(PyramidNet) variants.

Node names follow torchvision's modules (conv1, bn1, downsample/0, ...), so that a
torchvision state dict maps onto a lowered graph key for key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nasgraph.errors import GraphError
from nasgraph.ir import GraphBuilder, Tensor


class ResidualBlock(BaseModel):
    """One residual block.

    Width is `planes` (the block's inner channels, times `base_width / 64 * groups` for a
    bottleneck, as in torchvision) times `widen` (WRN's widening factor k); multiplicity is
    `groups` (ResNeXt's cardinality) and the shortcut itself; depth is how many blocks a
    stage repeats (`residual_stage`).

    `shortcut` says how the identity path changes shape when it must: `"conv"`, a 1x1
    projection (He et al.'s option B); `"pad"`, parameter-free subsampling and zero channels
    (option A, the CIFAR ResNets). `dropout` sits before the block's last conv, between the
    convs of a basic block as in wide ResNets.

        >>> from nasgraph.ir import GraphBuilder
        >>> b = GraphBuilder()
        >>> x = residual_block(b, b.input(16, 32, 32), ResidualBlock(planes=32, stride=2,
        ...                    shortcut="pad"))
        >>> str(x.type)
        '32x16x16'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["basic", "bottleneck"] = "basic"
    planes: int = Field(gt=0)
    stride: int = Field(default=1, gt=0)
    groups: int = Field(default=1, gt=0)
    base_width: int = Field(default=64, gt=0)
    widen: int = Field(default=1, gt=0)
    preact: bool = False
    dilation: int = Field(default=1, gt=0)
    shortcut: Literal["conv", "pad"] = "conv"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    act: str = "relu"

    @property
    def expansion(self) -> int:
        return 1 if self.kind == "basic" else 4

    @property
    def out_channels(self) -> int:
        return self.planes * self.expansion * (self.widen if self.kind == "basic" else 1)

    @property
    def inner_width(self) -> int:
        if self.kind == "basic":
            return self.out_channels
        return int(self.planes * (self.base_width / 64.0)) * self.groups * self.widen


def residual_block(b: GraphBuilder, x: Tensor, cfg: ResidualBlock) -> Tensor:
    """Add one block to `b` in the current scope; returns its output."""
    needs_projection = cfg.stride != 1 or x.channels != cfg.out_channels
    if cfg.preact:
        return _preact_block(b, x, cfg, needs_projection)
    shortcut = x
    if needs_projection and cfg.shortcut == "pad":
        shortcut = pad_shortcut(b, x, cfg.out_channels, cfg.stride)
    elif needs_projection:
        with b.scope("downsample"):
            shortcut = b.conv(x, cfg.out_channels, 1, stride=cfg.stride, bias=False, name="0")
            shortcut = b.bn(shortcut, name="1")
    for k, (width, kernel, stride) in enumerate(_layers(cfg), start=1):
        last = k == len(_layers(cfg))
        if last and cfg.dropout:
            x = b.dropout(x, cfg.dropout)
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


def pad_shortcut(b: GraphBuilder, x: Tensor, out_channels: int, stride: int,
                 pool: Literal["subsample", "avg"] = "subsample",
                 split: bool = True) -> Tensor:
    """The parameter-free shortcut: subsample by `stride`, then add zero channels.

    `pool="subsample"` keeps every `stride`-th pixel (`x[:, :, ::2, ::2]`, a 1x1 max pool);
    `"avg"` averages 2x2 windows (PyramidNet). `split` puts half the zero channels before
    and half after (the CIFAR ResNets); otherwise all go after (PyramidNet).
    """
    if stride != 1:
        if pool == "subsample":
            x = b.maxpool(x, 1, stride=stride, name="subsample")
        else:
            x = b.avgpool(x, stride, stride=stride, ceil_mode=True, name="downsample")
    extra = out_channels - x.channels
    if extra:
        before = extra // 2 if split else 0
        x = b.channel_pad(x, after=extra - before, before=before)
    return x


def _layers(cfg: ResidualBlock) -> list[tuple[int, int, int]]:
    """(out channels, kernel, stride) of each conv of the block's main path."""
    if cfg.kind == "basic":
        return [(cfg.out_channels, 3, cfg.stride), (cfg.out_channels, 3, 1)]
    return [(cfg.inner_width, 1, 1), (cfg.inner_width, 3, cfg.stride),
            (cfg.out_channels, 1, 1)]


def _preact_block(b: GraphBuilder, x: Tensor, cfg: ResidualBlock,
                  needs_projection: bool) -> Tensor:
    # Identity mappings (He et al. 2016): BN -> act -> conv, nothing after the add. The
    # projection, when needed, reads the pre-activated input, as in the paper's code.
    shortcut = x
    if needs_projection and cfg.shortcut == "pad":
        shortcut = pad_shortcut(b, x, cfg.out_channels, cfg.stride)
    layers = _layers(cfg)
    for k, (width, kernel, stride) in enumerate(layers, start=1):
        x = b.bn(x, name=f"bn{k}")
        x = b.act(x, cfg.act)
        if k == 1 and needs_projection and cfg.shortcut == "conv":
            shortcut = b.conv(x, cfg.out_channels, 1, stride=cfg.stride, bias=False,
                              name="shortcut")
        if k == len(layers) and cfg.dropout:  # WRN: dropout before the last conv
            x = b.dropout(x, cfg.dropout)
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


class PyramidBlock(BaseModel):
    """One PyramidNet block (Han et al. 2017): BN -> conv -> BN -> ReLU -> conv -> BN, added
    to a shortcut that is average-pooled when strided and zero-padded to the new width.

    Width is `out_channels`; PyramidNet widens every block a little (`pyramid_widths`)
    instead of doubling at each stage; depth is the blocks per stage (`pyramid_stage`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    out_channels: int = Field(gt=0)
    stride: int = Field(default=1, gt=0)
    act: str = "relu"


def pyramid_block(b: GraphBuilder, x: Tensor, cfg: PyramidBlock) -> Tensor:
    """Add one PyramidNet block to `b` in the current scope; returns its output."""
    if x.channels > cfg.out_channels:
        raise GraphError(f"pyramid block in {b.prefix!r} narrows {x.channels} to "
                         f"{cfg.out_channels} channels; hint: its shortcut can only pad")
    shortcut = pad_shortcut(b, x, cfg.out_channels, cfg.stride, pool="avg", split=False)
    x = b.bn(x, name="bn1")
    x = b.conv(x, cfg.out_channels, 3, stride=cfg.stride, padding=1, bias=False, name="conv1")
    x = b.act(b.bn(x, name="bn2"), cfg.act)
    x = b.conv(x, cfg.out_channels, 3, padding=1, bias=False, name="conv2")
    x = b.bn(x, name="bn3")
    return b.add([x, shortcut])


def pyramid_widths(start: int, alpha: float, blocks: int) -> list[int]:
    """Widths of `blocks` PyramidNet blocks growing linearly by `alpha` in all from `start`.

    Rounded as the authors' code rounds them (the running sum, Python's `round`):

        >>> pyramid_widths(16, 48, 6)
        [24, 32, 40, 48, 56, 64]
    """
    widths, width = [], float(start)
    for _ in range(blocks):
        width += alpha / blocks
        widths.append(int(round(width)))
    return widths


def pyramid_stage(b: GraphBuilder, x: Tensor, widths: list[int], stride: int = 1,
                  act: str = "relu") -> Tensor:
    """One block per entry of `widths` in scopes `0`, `1`, ...; the first has `stride`."""
    for k, width in enumerate(widths):
        with b.scope(str(k)):
            x = pyramid_block(b, x, PyramidBlock(out_channels=width,
                                                 stride=stride if k == 0 else 1, act=act))
    return x
