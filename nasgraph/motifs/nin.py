"""Network in Network's mlpconv layer (Lin et al. 2013): a small MLP slid over the image.

A k x k conv followed by 1x1 convs, each with a ReLU: every output pixel is a multilayer
perceptron of its k x k patch, a more expressive local model than one linear filter.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from nasgraph.ir import GraphBuilder, Tensor
from nasgraph.motifs.conv import conv_unit


class MlpConv(BaseModel):
    """One mlpconv layer.

    Width is `widths` (the conv's channels, then each 1x1's); depth is its length (the
    paper's micro network has three layers). `padding=None` keeps the size at stride 1.
    `bn` adds batch normalization after each conv, which the 2013 paper predates.

        >>> MlpConv(widths=(192, 160, 96), kernel=5).depth
        3
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    widths: tuple[PositiveInt, ...] = Field(min_length=1)
    kernel: PositiveInt = 3
    stride: PositiveInt = 1
    padding: int | None = Field(default=None, ge=0)
    bn: bool = False
    act: str = "relu"

    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def out_channels(self) -> int:
        return self.widths[-1]


def mlpconv(b: GraphBuilder, x: Tensor, cfg: MlpConv) -> Tensor:
    """Add an mlpconv layer in the current scope: convs `conv0`, `conv1`, ...

        >>> from nasgraph.ir import GraphBuilder
        >>> b = GraphBuilder()
        >>> y = mlpconv(b, b.input(3, 32, 32), MlpConv(widths=(192, 160, 96), kernel=5))
        >>> str(y.type)
        '96x32x32'
    """
    for j, width in enumerate(cfg.widths):
        first = j == 0
        x = conv_unit(b, x, width, cfg.kernel if first else 1,
                      stride=cfg.stride if first else 1,
                      padding=cfg.padding if first else 0, act=cfg.act, bn=cfg.bn,
                      names=(f"conv{j}", f"bn{j}", f"{cfg.act}{j}"))
    return x
