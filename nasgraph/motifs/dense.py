"""Dense blocks (Huang et al. 2017): every layer reads the concatenation of all earlier
feature maps in its block and adds `growth_rate` new ones; transitions compress and pool.

Node names follow torchvision's DenseNet (denselayer1/norm1, transition1/conv, ...).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from nasgraph.ir import GraphBuilder, Tensor


class DenseBlock(BaseModel):
    """A dense block of `num_layers` BN-ReLU-conv1x1-BN-ReLU-conv3x3 layers (DenseNet-BC).

    Width is `growth_rate` (k, the channels each layer adds) and the bottleneck's
    `bn_size * growth_rate`; depth is `num_layers`; multiplicity is the dense connectivity:
    each layer reads the last `window` feature maps before it (the block input counts as
    one), all of them when `window` is None. A block of L layers with full connectivity has
    2^L input-output paths; with `window=1` it is a chain whose outputs are concatenated.

        >>> from nasgraph.ir import GraphBuilder
        >>> b = GraphBuilder()
        >>> x = dense_block(b, b.input(64, 8, 8), DenseBlock(num_layers=6, growth_rate=32))
        >>> x.channels  # 64 + 6 * 32
        256
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_layers: int = Field(gt=0)
    growth_rate: int = Field(default=32, gt=0)
    bn_size: int | None = Field(default=4, gt=0)
    drop_rate: float = Field(default=0.0, ge=0, lt=1)
    window: int | None = Field(default=None, gt=0)

    def out_channels(self, in_channels: int) -> int:
        return in_channels + self.num_layers * self.growth_rate


def dense_layer(b: GraphBuilder, inputs: list[Tensor], cfg: DenseBlock) -> Tensor:
    """One layer in the current scope: concat -> [BN-ReLU-1x1] -> BN-ReLU-3x3 (-> dropout).

    `bn_size=None` leaves the 1x1 bottleneck out (plain DenseNet rather than DenseNet-BC).
    """
    x = inputs[0] if len(inputs) == 1 else b.concat(inputs)
    if cfg.bn_size is not None:
        x = b.relu(b.bn(x, name="norm1"), name="relu1")
        x = b.conv(x, cfg.bn_size * cfg.growth_rate, 1, bias=False, name="conv1")
    x = b.relu(b.bn(x, name="norm2"), name="relu2")
    x = b.conv(x, cfg.growth_rate, 3, padding=1, bias=False, name="conv2")
    return b.dropout(x, cfg.drop_rate) if cfg.drop_rate else x


def dense_block(b: GraphBuilder, x: Tensor, cfg: DenseBlock) -> Tensor:
    """Layers in scopes `denselayer1`, ...; returns the concatenation of the block input and
    every layer's output (`concat` in the current scope)."""
    features = [x]
    for k in range(1, cfg.num_layers + 1):
        seen = features if cfg.window is None else features[-cfg.window:]
        with b.scope(f"denselayer{k}"):
            features.append(dense_layer(b, seen, cfg))
    return b.concat(features)


class Transition(BaseModel):
    """BN-ReLU-conv1x1-avgpool between dense blocks; the conv keeps `floor(compression * C)`
    channels (theta in DenseNet-BC) and the pool halves the size."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    compression: float = Field(default=0.5, gt=0, le=1)

    def out_channels(self, in_channels: int) -> int:
        return math.floor(in_channels * self.compression)


def transition(b: GraphBuilder, x: Tensor, cfg: Transition) -> Tensor:
    """Add a transition (`norm`, `relu`, `conv`, `pool`) in the current scope."""
    x = b.relu(b.bn(x, name="norm"), name="relu")
    x = b.conv(x, cfg.out_channels(x.channels), 1, bias=False, name="conv")
    return b.avgpool(x, 2, stride=2, name="pool")
