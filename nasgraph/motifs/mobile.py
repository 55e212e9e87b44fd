"""Mobile motifs: depthwise-separable convolutions (Sifre 2014; Chollet 2016; Howard et al.
2017), the inverted residual (Sandler et al. 2018) and squeeze-and-excitation (Hu et al.
2017) as EfficientNet's MBConv uses it (Tan & Le 2019).

A k x k convolution from C to C' channels costs k*k*C*C' MACs per pixel; a depthwise k x k
(one filter per channel) followed by a pointwise 1x1 costs k*k*C + C*C', nearly k*k times
less for wide layers. The inverted residual widens the input by an expansion ratio, filters
depthwise there, and projects back to a narrow output without an activation.

Node names follow the reference modules (timm's `conv_dw`/`bn1`/`conv_pw`/`bn2`,
torchvision's sequential indices), so state dicts map onto lowered graphs key for key.

    >>> from nasgraph.ir import GraphBuilder
    >>> b = GraphBuilder("mb")
    >>> x = b.input(16, 32, 32)
    >>> cfg = InvertedResidual(out_channels=24, expand_ratio=6, stride=2, se_ratio=0.25)
    >>> y = inverted_residual(b, x, cfg)
    >>> str(y.type), cfg.hidden_channels(16), cfg.squeeze_channels(16)
    ('24x16x16', 96, 4)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from nasgraph.ir import GraphBuilder, Tensor
from nasgraph.motifs.conv import conv_unit


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """`value` rounded to the nearest multiple of `divisor`, never 10% below `value`.

    The channel rounding of MobileNet v2 and EfficientNet (TensorFlow's `_make_divisible`).

        >>> make_divisible(32 * 0.75), make_divisible(20), make_divisible(11)
        (24, 24, 16)
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# --------------------------------------------------------------------------- separable


class SeparableConv(BaseModel):
    """A depthwise k x k convolution, then a pointwise 1x1 to `out_channels`.

    Width is `out_channels`; the depthwise conv keeps its input's channels. MobileNet v1
    puts BN and an activation after both convs (`depthwise_bn=True`); Xception's
    SeparableConv2d has nothing between them (`depthwise_bn=False`) and normalizes after.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    out_channels: int = Field(gt=0)
    kernel: int = Field(default=3, gt=0)
    stride: int = Field(default=1, gt=0)
    dilation: int = Field(default=1, gt=0)
    depthwise_bn: bool = True
    pointwise_bn: bool = True
    act: str | None = "relu"  # after each BN; None for none
    bn_eps: float = Field(default=1e-5, gt=0)


def separable_conv(b: GraphBuilder, x: Tensor, cfg: SeparableConv,
                   names: tuple[str, str | None, str, str | None] = (
                       "conv_dw", "bn1", "conv_pw", "bn2")) -> Tensor:
    """Add a separable conv to `b` in the current scope; returns its output.

    `names` are the ids of the depthwise conv, its BN, the pointwise conv and its BN (timm's
    DepthwiseSeparableConv names by default; activations take default names). A BN's name
    is unused where the config leaves that BN out.
    """
    dw_name, dw_bn, pw_name, pw_bn = names
    # C x H x W -> C x H/s x W/s (one k x k filter per channel) -> C' x H/s x W/s
    x = conv_unit(b, x, x.channels, cfg.kernel, stride=cfg.stride, dilation=cfg.dilation,
                  groups=x.channels, bn=cfg.depthwise_bn, bias=False,
                  act=cfg.act if cfg.depthwise_bn else None,
                  names=(dw_name, dw_bn or "bn", None), eps=cfg.bn_eps)
    return conv_unit(b, x, cfg.out_channels, 1, bn=cfg.pointwise_bn, bias=False,
                     act=cfg.act if cfg.pointwise_bn else None,
                     names=(pw_name, pw_bn or "bn", None), eps=cfg.bn_eps)


def separable_stage(b: GraphBuilder, x: Tensor, cfg: SeparableConv, depth: int,
                    **kwargs: object) -> Tensor:
    """`depth` separable convs in scopes `0`, `1`, ...; only the first has `cfg.stride`."""
    rest = cfg.model_copy(update={"stride": 1})
    for k in range(depth):
        with b.scope(str(k)):
            x = separable_conv(b, x, cfg if k == 0 else rest, **kwargs)  # type: ignore[arg-type]
    return x


# --------------------------------------------------------------------------- squeeze-excite


def squeeze_excitation(b: GraphBuilder, x: Tensor, squeeze_channels: int, act: str = "relu",
                       gate: str = "sigmoid",
                       names: tuple[str, str] = ("fc1", "fc2")) -> Tensor:
    """Reweight the channels of `x` by a gate computed from their global averages.

    gap -> 1x1 conv to `squeeze_channels` -> `act` -> 1x1 conv back -> `gate` -> x * gate
    (torchvision's SqueezeExcitation, whose `fc1`/`fc2` name the two convs). The gate is a
    second path from `x` to the output: it doubles the multiplicity.
    """
    s = b.gap(x)  # C x H x W -> C x 1 x 1
    s = b.act(b.conv(s, squeeze_channels, 1, name=names[0]), act)
    s = b.act(b.conv(s, x.channels, 1, name=names[1]), gate)
    return b.mul(x, s)  # C x 1 x 1 broadcasts over H x W


# --------------------------------------------------------------------------- inverted residual


class InvertedResidual(BaseModel):
    """MobileNet v2's inverted residual, or EfficientNet's MBConv with `se_ratio > 0`.

    1x1 expansion to `expand_ratio` times the input channels (left out when that equals
    the input), depthwise `kernel` x `kernel` at `stride`, optional squeeze-excitation,
    linear 1x1 projection to `out_channels`; a residual add when the shapes allow.

    Width is `expand_ratio` (and `out_channels`); depth is how many blocks a stage repeats
    (`inverted_residual_stage`); multiplicity comes from the residual (`skip`) and the
    squeeze-excitation gate (`se_ratio`): a block multiplies the paths through it by 1, 2
    or 3.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    out_channels: int = Field(gt=0)
    expand_ratio: float = Field(default=6.0, gt=0)
    kernel: int = Field(default=3, gt=0)
    stride: int = Field(default=1, gt=0)
    se_ratio: float = Field(default=0.0, ge=0, lt=1)  # of the block's input channels
    act: str = "relu6"
    se_act: str = "silu"
    skip: bool = True  # add the input when stride is 1 and channels match
    divisor: int = Field(default=1, gt=0)  # round expanded channels to a multiple of this
    bn_eps: float = Field(default=1e-5, gt=0)

    def hidden_channels(self, in_channels: int) -> int:
        """Channels after expansion: torchvision's MobileNetV2 rounds (`divisor=1`),
        EfficientNet makes them divisible by 8."""
        if self.divisor == 1:
            return int(round(in_channels * self.expand_ratio))
        return make_divisible(in_channels * self.expand_ratio, self.divisor)

    def squeeze_channels(self, in_channels: int) -> int:
        """Channels of the squeeze-excitation bottleneck (0 without one)."""
        return max(1, int(in_channels * self.se_ratio)) if self.se_ratio > 0 else 0

    def has_residual(self, in_channels: int) -> bool:
        return self.skip and self.stride == 1 and in_channels == self.out_channels


def inverted_residual(b: GraphBuilder, x: Tensor, cfg: InvertedResidual, body: str = "block",
                      flat_projection: bool = False) -> Tensor:
    """Add one inverted residual to `b` in the current scope; returns its output.

    The layers sit in scope `body` numbered like a torch Sequential: each conv unit is
    `k/0` (conv), `k/1` (BN), `k/2` (act), the squeeze-excitation `k/fc1`, `k/fc2`
    (torchvision's EfficientNet MBConv, `body="block"`). `flat_projection` numbers the
    projection conv and its BN as two entries `k`, `k+1` (torchvision's MobileNetV2,
    `body="conv"`).
    """
    hidden = cfg.hidden_channels(x.channels)
    shortcut = x
    with b.scope(body):
        k = 0
        if hidden != x.channels:  # 1x1 expansion
            with b.scope(str(k)):
                x = conv_unit(b, x, hidden, 1, act=cfg.act, bias=False,
                              names=("0", "1", "2"), eps=cfg.bn_eps)
            k += 1
        with b.scope(str(k)):  # depthwise
            x = conv_unit(b, x, hidden, cfg.kernel, stride=cfg.stride, groups=hidden,
                          act=cfg.act, bias=False, names=("0", "1", "2"), eps=cfg.bn_eps)
        k += 1
        if cfg.se_ratio > 0:
            with b.scope(str(k)):
                x = squeeze_excitation(b, x, cfg.squeeze_channels(shortcut.channels),
                                       act=cfg.se_act)
            k += 1
        if flat_projection:  # linear: no activation after the projection
            x = conv_unit(b, x, cfg.out_channels, 1, act=None, bias=False,
                          names=(str(k), str(k + 1), None), eps=cfg.bn_eps)
        else:
            with b.scope(str(k)):
                x = conv_unit(b, x, cfg.out_channels, 1, act=None, bias=False,
                              names=("0", "1", None), eps=cfg.bn_eps)
    if cfg.has_residual(shortcut.channels):
        x = b.add([x, shortcut])
    return x


def inverted_residual_stage(b: GraphBuilder, x: Tensor, cfg: InvertedResidual, depth: int,
                            **kwargs: object) -> Tensor:
    """`depth` blocks in scopes `0`, `1`, ...; only the first has `cfg.stride` (and changes
    the channels), so the rest have residuals."""
    rest = cfg.model_copy(update={"stride": 1})
    for k in range(depth):
        with b.scope(str(k)):
            x = inverted_residual(b, x, cfg if k == 0 else rest,
                                  **kwargs)  # type: ignore[arg-type]
    return x
