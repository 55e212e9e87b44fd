"""A fully-convolutional segmentation head (Long et al. 2015, as torchvision's FCNHead):
conv-BN-ReLU layers, dropout, a 1x1 classifier per pixel, and a bilinear upsample of the
class scores back to the input's size.
"""

from __future__ import annotations

import itertools

from pydantic import BaseModel, ConfigDict, Field

from nasgraph.ir import GraphBuilder, Tensor


class SegmentationHead(BaseModel):
    """The head's shape.

    Width is `width` (the 3x3 layers' channels; None: a quarter of the input's, as
    torchvision's FCN); depth is `depth`, the number of 3x3 conv-BN-ReLU layers.

        >>> from nasgraph.ir import GraphBuilder
        >>> b = GraphBuilder()
        >>> y = segmentation_head(b, b.input(2048, 8, 8), SegmentationHead(num_classes=21),
        ...                       size=(64, 64))
        >>> str(y.type), y.id
        ('21x64x64', 'upsample')
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_classes: int = Field(gt=0)
    width: int | None = Field(default=None, gt=0)
    depth: int = Field(default=1, ge=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    act: str = "relu"


def segmentation_head(b: GraphBuilder, x: Tensor, cfg: SegmentationHead,
                      size: tuple[int, int], scope: str = "classifier") -> Tensor:
    """Per-pixel class scores at `size` (H, W), usually the network input's size.

    The layers are numbered `scope/0`, `scope/1`, ... as in a torch `nn.Sequential`, so
    torchvision's FCN weights map onto them; the upsample is `upsample` in the current scope.
    """
    width = cfg.width or max(x.channels // 4, 1)
    index = itertools.count()
    with b.scope(scope):
        for _ in range(cfg.depth):
            x = b.conv(x, width, 3, padding=1, bias=False, name=str(next(index)))
            x = b.bn(x, name=str(next(index)))
            x = b.act(x, cfg.act, name=str(next(index)))
        x = b.dropout(x, cfg.dropout, name=str(next(index)))
        x = b.conv(x, cfg.num_classes, 1, name=str(next(index)))
    return b.upsample(x, size=size, mode="bilinear", name="upsample")
