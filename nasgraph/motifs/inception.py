"""Inception modules (Szegedy et al. 2014, 2015, 2016): parallel branches that see the
input at different scales, concatenated along channels.

A module is a tuple of `Branch`es, each a chain of conv-BN-ReLU units and pools, optionally
ending in a fan-out of parallel convs (the expanded filter bank). The classic modules are
configs that spell that tuple out from a few widths: `InceptionV1` (GoogLeNet),
`FactorizedInception` (5x5 as two 3x3; n x n as 1 x n then n x 1), `ExpandedInception`,
`GridReduction`, `InceptionResNetBlock` and `InceptionV4Stem`. `InceptionModule` takes any
branches. The search dimensions: width is every branch's channels; multiplicity is the
number of branches (a width of 0 or an empty tuple drops one); depth is the length of a
branch's chain and the repeats of `inception_stage`.

Node names follow the reference implementations' modules, so that their state dicts map
key for key. With the default *nested* names (torchvision's GoogLeNet, timm) a branch
`branch1` of several layers holds `branch1/0`, `branch1/1`, ... as an `nn.Sequential`
would, and a single layer is `branch1` itself. With *flat* names (torchvision's
Inception v3) the convs are `branch3x3dbl_1`, `branch3x3dbl_2`, ... A branch with a
fan-out is always flat: `branch3x3_1`, then `branch3x3_2a` and `branch3x3_2b`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from nasgraph.errors import GraphError
from nasgraph.ir import GraphBuilder, Tensor
from nasgraph.motifs.conv import conv_unit

Size = int | tuple[int, int]
Widths = tuple[PositiveInt, ...]

# BN epsilon of every Inception model: they come from TensorFlow, whose default it is.
INCEPTION_EPS = 1e-3


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConvLayer(_Config):
    """A conv-BN-ReLU unit; `padding=None` keeps the size at stride 1 ('same')."""

    out_channels: PositiveInt
    kernel: Size = 1
    stride: PositiveInt = 1
    padding: Size | None = None


class PoolLayer(_Config):
    """A max or average pool (the branch that keeps the input's features)."""

    kind: Literal["max", "avg"] = "max"
    kernel: PositiveInt = 3
    stride: PositiveInt = 1
    padding: int = Field(default=1, ge=0)
    ceil_mode: bool = False
    count_include_pad: bool = True


class Branch(_Config):
    """One path of a module: `layers` in a chain, then optionally `fan_out`, parallel convs
    on the chain's output whose results are concatenated (Inception v3's expanded bank)."""

    layers: tuple[ConvLayer | PoolLayer, ...] = ()
    fan_out: tuple[ConvLayer, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> Branch:
        if not self.layers and not self.fan_out:
            raise ValueError("a branch needs at least one layer")
        if len(self.fan_out) == 1 or len(self.fan_out) > 26:
            raise ValueError("a fan-out has 2 to 26 convs (an empty one for none)")
        return self

    @property
    def paths(self) -> int:
        """Input-to-output paths through this branch."""
        return max(1, len(self.fan_out))

    def out_channels(self, in_channels: int) -> int:
        if self.fan_out:
            return sum(c.out_channels for c in self.fan_out)
        convs = [layer for layer in self.layers if isinstance(layer, ConvLayer)]
        return convs[-1].out_channels if convs else in_channels


class _Module(_Config):
    """A config with a `branches` tuple (a field or a property)."""

    @property
    def multiplicity(self) -> int:
        """Input-to-output paths through the module (`analysis.multiplicity` of it alone)."""
        return sum(br.paths for br in self.branches)

    def out_channels(self, in_channels: int) -> int:
        return sum(br.out_channels(in_channels) for br in self.branches)


class InceptionModule(_Module):
    """Any branches, concatenated: the general form of every module here.

        >>> from nasgraph.motifs import Branch, ConvLayer, InceptionModule, PoolLayer
        >>> m = InceptionModule(branches=(Branch(layers=(ConvLayer(out_channels=8),)),
        ...                               Branch(layers=(PoolLayer(),))))
        >>> m.multiplicity, m.out_channels(16)
        (2, 24)
    """

    branches: tuple[Branch, ...] = Field(min_length=1)


def _chain(widths: Sequence[int], kernel: int, asymmetric: bool,
           wide_first: bool = True) -> tuple[ConvLayer, ...]:
    """A 1x1 reduction to widths[0], then one conv per further width: k x k, or alternately
    1 x k and k x 1 (starting with 1 x k when `wide_first`)."""
    layers = [ConvLayer(out_channels=widths[0])]
    for j, width in enumerate(widths[1:]):
        if asymmetric:
            k = (1, kernel) if (j % 2 == 0) == wide_first else (kernel, 1)
        else:
            k = (kernel, kernel)
        layers.append(ConvLayer(out_channels=width, kernel=k))
    return tuple(layers)


def _pool_branch(width: int, kind: str, count_include_pad: bool,
                 ceil_mode: bool = False) -> Branch:
    pool = PoolLayer(kind=kind, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    return Branch(layers=(pool, ConvLayer(out_channels=width)))


def _some(branches: list[Branch | None]) -> tuple[Branch, ...]:
    kept = tuple(br for br in branches if br is not None)
    if not kept:
        raise ValueError("every branch has width 0: a module needs at least one")
    return kept


class InceptionV1(_Module):
    """GoogLeNet's module (Szegedy et al. 2014, figure 2b):
    1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated.

    The widths are the columns of the paper's table 1; a width of 0 drops its branch.
    `large_kernel` is the '5x5' branch's kernel: torchvision's GoogLeNet has 3 there (a slip
    it keeps so that its weights load).

        >>> InceptionV1(ch1x1=64, ch3x3red=96, ch3x3=128, ch5x5red=16, ch5x5=32,
        ...             pool_proj=32).out_channels(192)
        256
    """

    ch1x1: int = Field(ge=0)
    ch3x3red: PositiveInt
    ch3x3: int = Field(ge=0)
    ch5x5red: PositiveInt
    ch5x5: int = Field(ge=0)
    pool_proj: int = Field(ge=0)
    large_kernel: PositiveInt = 5

    @property
    def branches(self) -> tuple[Branch, ...]:
        return _some([
            Branch(layers=_chain([self.ch1x1], 1, False)) if self.ch1x1 else None,
            Branch(layers=_chain([self.ch3x3red, self.ch3x3], 3, False)) if self.ch3x3 else None,
            Branch(layers=_chain([self.ch5x5red, self.ch5x5], self.large_kernel, False))
            if self.ch5x5 else None,
            _pool_branch(self.pool_proj, "max", True, ceil_mode=True) if self.pool_proj else None,
        ])


class FactorizedInception(_Module):
    """Inception v2/v3's factorized module (Szegedy et al. 2015, figures 5 and 6):
    1x1 | 1x1 -> k x k | 1x1 -> k x k -> k x k ... | pool -> 1x1.

    `mid` and `deep` are the widths of those branches: a 1x1 reduction, then one conv per
    further width (`deep`'s length is its depth). Two 3x3 see what one 5x5 sees, for 18/25
    of its cost. With `asymmetric` each conv is a 1 x k or k x 1 in turn, `mid` starting with
    1 x k and `deep` with k x 1 (figure 6, k = 7 on the 17x17 grid). `mid_kernel` overrides
    `mid`'s kernel (torchvision's and timm's first modules keep a 5x5 there). A width of 0 or
    an empty tuple drops its branch.

        >>> m = FactorizedInception(ch1x1=64, mid=(48, 64), deep=(64, 96, 96), pool_proj=32,
        ...                         mid_kernel=5)
        >>> m.multiplicity, m.out_channels(192)
        (4, 256)
    """

    ch1x1: int = Field(ge=0)
    mid: Widths = ()
    deep: Widths = ()
    pool_proj: int = Field(ge=0)
    kernel: PositiveInt = 3
    mid_kernel: PositiveInt | None = None
    asymmetric: bool = False
    pool: Literal["avg", "max"] = "avg"
    count_include_pad: bool = True

    @property
    def branches(self) -> tuple[Branch, ...]:
        mid_kernel = self.mid_kernel or self.kernel
        return _some([
            Branch(layers=_chain([self.ch1x1], 1, False)) if self.ch1x1 else None,
            Branch(layers=_chain(self.mid, mid_kernel, self.asymmetric)) if self.mid else None,
            Branch(layers=_chain(self.deep, self.kernel, self.asymmetric, wide_first=False))
            if self.deep else None,
            _pool_branch(self.pool_proj, self.pool, self.count_include_pad)
            if self.pool_proj else None,
        ])


def _fan(width: int, kernel: int) -> tuple[ConvLayer, ConvLayer]:
    return (ConvLayer(out_channels=width, kernel=(1, kernel)),
            ConvLayer(out_channels=width, kernel=(kernel, 1)))


class ExpandedInception(_Module):
    """The expanded filter bank (Szegedy et al. 2015, figure 7), for the coarsest grid:
    1x1 | 1x1 -> [1 x k, k x 1] | 1x1 -> k x k -> [1 x k, k x 1] | pool -> 1x1.

    The last width of `mid` and of `deep` is that of each of the two parallel convs, so a
    branch outputs twice it. `deep`'s middle convs are k x k, or k x 1 and 1 x k in turn with
    `asymmetric` (Inception-v4's C module). Multiplicity counts the fan-outs: 6 paths.

        >>> ExpandedInception(ch1x1=320, mid=(384, 384), deep=(448, 384, 384),
        ...                   pool_proj=192).out_channels(1280)
        2048
    """

    ch1x1: int = Field(ge=0)
    mid: Widths = ()
    deep: Widths = ()
    pool_proj: int = Field(ge=0)
    kernel: PositiveInt = 3
    asymmetric: bool = False
    pool: Literal["avg", "max"] = "avg"
    count_include_pad: bool = True

    @model_validator(mode="after")
    def _fan_has_a_reduction(self) -> ExpandedInception:
        if len(self.mid) == 1 or len(self.deep) == 1:
            raise ValueError("mid and deep need a 1x1 width and a fan-out width (or nothing)")
        return self

    def _bank(self, widths: Sequence[int]) -> Branch:
        chain = _chain(widths[:-1], self.kernel, self.asymmetric, wide_first=False)
        return Branch(layers=chain, fan_out=_fan(widths[-1], self.kernel))

    @property
    def branches(self) -> tuple[Branch, ...]:
        return _some([
            Branch(layers=_chain([self.ch1x1], 1, False)) if self.ch1x1 else None,
            self._bank(self.mid) if self.mid else None,
            self._bank(self.deep) if self.deep else None,
            _pool_branch(self.pool_proj, self.pool, self.count_include_pad)
            if self.pool_proj else None,
        ])


class GridReduction(_Module):
    """Grid-size reduction (Szegedy et al. 2015, figure 10): stride-2 conv branches beside a
    stride-2 pool, concatenated, so the grid halves while the channels grow without a
    representational bottleneck.

    Each entry of `convs` is a branch's widths: a single width is one 3x3/2 conv; otherwise
    a 1x1 reduction, middle convs (k x k, or 1 x k and k x 1 in turn with `asymmetric`) and
    the 3x3/2 conv. The pool branch comes last.

        >>> r = GridReduction(convs=((384,), (64, 96, 96)))
        >>> r.multiplicity, r.out_channels(288)
        (3, 768)
    """

    convs: tuple[Widths, ...] = Field(min_length=1)
    kernel: PositiveInt = 3
    asymmetric: bool = False
    stride: PositiveInt = 2
    pool: Literal["max", "avg"] = "max"

    @property
    def branches(self) -> tuple[Branch, ...]:
        out = []
        for widths in self.convs:
            if not widths:
                continue
            head = _chain(widths[:-1], self.kernel, self.asymmetric) if len(widths) > 1 else ()
            last = ConvLayer(out_channels=widths[-1], kernel=3, stride=self.stride, padding=0)
            out.append(Branch(layers=(*head, last)))
        pool = PoolLayer(kind=self.pool, kernel=3, stride=self.stride, padding=0)
        return (*out, Branch(layers=(pool,)))


class InceptionResNetBlock(_Module):
    """Inception-ResNet's residual module (Szegedy et al. 2016, figures 16, 17 and 19): branches,
    concatenated, a 1x1 conv (with bias, no BN) back to the input's channels, then
    `x + scale * branches` and a ReLU (`act`).

    Each entry of `convs` is a branch: a 1x1 then k x k convs (or 1 x k and k x 1 in turn).
    Scaling the residual by 0.1-0.3 keeps very wide residual Inception networks stable.
    Multiplicity is the branches plus the shortcut.

        >>> InceptionResNetBlock(convs=((32,), (32, 32), (32, 48, 64)), scale=0.17).multiplicity
        4
    """

    convs: tuple[Widths, ...] = Field(min_length=1)
    kernel: PositiveInt = 3
    asymmetric: bool = False
    scale: float = 1.0
    act: bool = True

    @property
    def branches(self) -> tuple[Branch, ...]:
        return _some([Branch(layers=_chain(w, self.kernel, self.asymmetric)) if w else None
                      for w in self.convs])

    @property
    def multiplicity(self) -> int:
        return super().multiplicity + 1

    def out_channels(self, in_channels: int) -> int:
        return in_channels


class InceptionV4Stem(_Config):
    """Inception-v4's stem (Szegedy et al. 2016, figure 3): three 3x3 convs, then three
    two-branch concatenations (pool beside a strided conv, two conv chains, conv beside pool):
    3 x 299 x 299 -> 384 x 35 x 35.

    `widths` are the three convs'; `mixed4` the two chains' (a 1x1, the middle convs, 1 x 7
    and 7 x 1 in turn, and an unpadded 3x3); `mixed3`, `mixed5` the strided convs'.
    """

    widths: tuple[PositiveInt, PositiveInt, PositiveInt] = (32, 32, 64)
    mixed3: PositiveInt = 96
    mixed4: tuple[Widths, Widths] = ((64, 96), (64, 64, 64, 96))
    mixed5: PositiveInt = 192
    kernel: PositiveInt = 7

    @property
    def modules(self) -> tuple[InceptionModule, InceptionModule, InceptionModule]:
        pool = Branch(layers=(PoolLayer(kernel=3, stride=2, padding=0),))

        def strided(width: int) -> Branch:
            return Branch(layers=(ConvLayer(out_channels=width, kernel=3, stride=2, padding=0),))

        def chain(widths: Sequence[int]) -> Branch:
            head = _chain(widths[:-1], self.kernel, True)
            return Branch(layers=(*head, ConvLayer(out_channels=widths[-1], kernel=3,
                                                   padding=0)))

        return (InceptionModule(branches=(pool, strided(self.mixed3))),
                InceptionModule(branches=tuple(chain(w) for w in self.mixed4)),
                InceptionModule(branches=(strided(self.mixed5), pool)))


AnyModule = (InceptionModule | InceptionV1 | FactorizedInception | ExpandedInception
             | GridReduction)


# ---------------------------------------------------------------------------- builders


def _layer(b: GraphBuilder, x: Tensor, layer: ConvLayer | PoolLayer, eps: float,
           name: str | None = None) -> Tensor:
    if isinstance(layer, PoolLayer):
        if layer.kind == "max":
            return b.maxpool(x, layer.kernel, layer.stride, layer.padding, layer.ceil_mode,
                             name=name)
        return b.avgpool(x, layer.kernel, layer.stride, layer.padding, layer.ceil_mode,
                         layer.count_include_pad, name=name)
    return conv_unit(b, x, layer.out_channels, layer.kernel, stride=layer.stride,
                     padding=layer.padding, eps=eps)


def _branch(b: GraphBuilder, x: Tensor, branch: Branch, name: str, flat: bool, first: int,
            eps: float) -> Tensor:
    if flat or branch.fan_out:
        convs = sum(isinstance(layer, ConvLayer) for layer in branch.layers)
        single = convs == 1 and not branch.fan_out
        k = first
        for layer in branch.layers:
            if isinstance(layer, PoolLayer):
                with b.scope(name):
                    x = _layer(b, x, layer, eps)
                continue
            with b.scope(name if single else f"{name}_{k}"):
                x = _layer(b, x, layer, eps)
            k += 1
        if branch.fan_out:
            outs = []
            for letter, layer in zip("abcdefghijklmnopqrstuvwxyz", branch.fan_out, strict=False):
                with b.scope(f"{name}_{k}{letter}"):
                    outs.append(_layer(b, x, layer, eps))
            x = b.concat(outs, name=f"{name}_concat")
        return x
    # nested, as nn.Sequential names its children; a lone layer is the branch itself
    several = len(branch.layers) > 1
    for j, layer in enumerate(branch.layers):
        layer_name = f"{name}/{j}" if several else name
        if isinstance(layer, PoolLayer):
            x = _layer(b, x, layer, eps, name=layer_name)
        else:
            with b.scope(layer_name):
                x = _layer(b, x, layer, eps)
    return x


def _branches(b: GraphBuilder, x: Tensor, branches: Sequence[Branch],
              names: Sequence[str] | None, flat: bool, first: int, eps: float) -> list[Tensor]:
    names = list(names) if names is not None else [f"branch{i}" for i in range(len(branches))]
    if len(names) != len(branches):
        raise GraphError(f"{len(names)} names for {len(branches)} branches in scope "
                         f"{b.prefix!r}; hint: give one name per branch")
    return [_branch(b, x, br, n, flat, first, eps) for br, n in zip(branches, names,
                                                                    strict=True)]


def inception_block(b: GraphBuilder, x: Tensor, cfg: AnyModule, *,
                    names: Sequence[str] | None = None, flat: bool = False, first: int = 0,
                    eps: float = INCEPTION_EPS) -> Tensor:
    """Add an Inception module in the current scope: its branches, concatenated.

    `names` name the branches (default `branch0`, `branch1`, ...); `flat` switches to
    torchvision Inception v3's flat layer names, numbered from `first` (see the module
    docstring). `eps` is the BN epsilon of every conv unit.

        >>> from nasgraph.ir import GraphBuilder
        >>> b = GraphBuilder()
        >>> x = b.input(192, 28, 28)
        >>> y = inception_block(b, x, InceptionV1(ch1x1=64, ch3x3red=96, ch3x3=128,
        ...                                       ch5x5red=16, ch5x5=32, pool_proj=32))
        >>> str(y.type)
        '256x28x28'
    """
    return b.concat(_branches(b, x, cfg.branches, names, flat, first, eps))


def inception_resnet_block(b: GraphBuilder, x: Tensor, cfg: InceptionResNetBlock, *,
                           names: Sequence[str] | None = None,
                           eps: float = INCEPTION_EPS) -> Tensor:
    """Add an Inception-ResNet module in the current scope (nodes named like timm's:
    `branch0`..., `conv2d`, `add`, `act`); the output has the input's type."""
    y = b.concat(_branches(b, x, cfg.branches, names, False, 0, eps))
    y = b.conv(y, x.channels, 1, name="conv2d")  # C' x H x W -> C x H x W, with bias
    # x + scale * y, as timm's `out * self.scale + x`; the ReLU follows the sum
    y = b.add([y, x], weights=(cfg.scale, 1.0))
    return b.act(y, "relu", name="act") if cfg.act else y


def inception_stage(b: GraphBuilder, x: Tensor, cfg: AnyModule | InceptionResNetBlock,
                    depth: int, *, start: int = 0, **naming: object) -> Tensor:
    """`depth` copies of one module in scopes `start`, `start + 1`, ... (as nn.Sequential
    indexes them); `naming` goes to `inception_block` or `inception_resnet_block`."""
    for k in range(depth):
        with b.scope(str(start + k)):
            if isinstance(cfg, InceptionResNetBlock):
                x = inception_resnet_block(b, x, cfg, **naming)  # type: ignore[arg-type]
            else:
                x = inception_block(b, x, cfg, **naming)  # type: ignore[arg-type]
    return x


def inception_v4_stem(b: GraphBuilder, x: Tensor, cfg: InceptionV4Stem | None = None, *,
                      eps: float = INCEPTION_EPS) -> Tensor:
    """Add Inception-v4's stem in scopes `0` to `5` (timm's `features.0` to `features.5`)."""
    cfg = cfg or InceptionV4Stem()
    for k, (width, stride, padding) in enumerate(zip(cfg.widths, (2, 1, 1), (0, 0, 1),
                                                     strict=True)):
        with b.scope(str(k)):
            x = conv_unit(b, x, width, 3, stride=stride, padding=padding, eps=eps)
    mixed3, mixed4, mixed5 = cfg.modules
    for k, module, names in ((3, mixed3, ("maxpool", "conv")), (4, mixed4, None),
                             (5, mixed5, ("conv", "maxpool"))):
        with b.scope(str(k)):
            x = inception_block(b, x, module, names=names, eps=eps)
    return x
