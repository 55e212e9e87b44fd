"""The conv-BN-activation unit: the brick every other motif is made of."""

from __future__ import annotations

from nasgraph.ir import GraphBuilder, Tensor

Size = int | tuple[int, int]


def same_padding(kernel: Size, dilation: Size = 1) -> tuple[int, int]:
    """Padding that keeps the spatial size at stride 1 for an odd (effective) kernel."""
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)


def conv_unit(b: GraphBuilder, x: Tensor, out_channels: int, kernel: Size = 3, *,
              stride: Size = 1, padding: Size | None = None, dilation: Size = 1,
              groups: int = 1, act: str | None = "relu", bn: bool = True,
              preact: bool = False, bias: bool | None = None, eps: float = 1e-5,
              names: tuple[str, str, str | None] = ("conv", "bn", "act")) -> Tensor:
    """conv -> BN -> activation (or BN -> activation -> conv with `preact`).

    `padding` defaults to 'same'-style padding for the kernel (so 1x7 pads (0, 3));
    `bias` defaults to True only without BN. `act=None` leaves the activation out and
    `bn=False` the normalization; `eps` is BN's (TensorFlow-born models use 1e-3). `names` are
    the ids of the three nodes in the current scope (None: the default name).
    """
    padding = same_padding(kernel, dilation) if padding is None else padding
    bias = (not bn) if bias is None else bias
    conv_name, bn_name, act_name = names

    def conv(t: Tensor) -> Tensor:
        return b.conv(t, out_channels, kernel, stride=stride, padding=padding,
                      dilation=dilation, groups=groups, bias=bias, name=conv_name)

    def norm_act(t: Tensor) -> Tensor:
        if bn:
            t = b.bn(t, eps=eps, name=bn_name)
        return b.act(t, act, name=act_name) if act else t

    return conv(norm_act(x)) if preact else norm_act(conv(x))
