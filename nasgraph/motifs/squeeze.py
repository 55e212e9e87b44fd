"""The SqueezeNet fire module (Iandola et al. 2016): a 1x1 squeeze layer feeding parallel
expand layers whose outputs are concatenated.

Node names follow torchvision's `Fire` (squeeze, expand1x1, expand3x3, and their
activations).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from nasgraph.ir import GraphBuilder, Tensor


class Fire(BaseModel):
    """A fire module.

    Width is `squeeze` (the 1x1 bottleneck) and `expand` (channels of each expand branch);
    multiplicity is the number of expand branches, one per entry of `kernels` (SqueezeNet
    uses a 1x1 and a 3x3 branch). Depth is how many modules a network stacks.

        >>> from nasgraph.ir import GraphBuilder
        >>> b = GraphBuilder()
        >>> x = fire(b, b.input(96, 54, 54), Fire(squeeze=16, expand=64))
        >>> str(x.type)
        '128x54x54'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    squeeze: int = Field(gt=0)
    expand: int = Field(gt=0)
    kernels: tuple[int, ...] = Field(default=(1, 3), min_length=1)
    act: str = "relu"

    @property
    def out_channels(self) -> int:
        return self.expand * len(self.kernels)


def fire(b: GraphBuilder, x: Tensor, cfg: Fire) -> Tensor:
    """Add a fire module in the current scope; returns the concatenated expand outputs."""
    x = b.act(b.conv(x, cfg.squeeze, 1, name="squeeze"), cfg.act, name="squeeze_activation")
    branches = []
    for k in cfg.kernels:
        name = f"expand{k}x{k}"
        y = b.conv(x, cfg.expand, k, padding=(k - 1) // 2, name=name)
        branches.append(b.act(y, cfg.act, name=f"{name}_activation"))
    return b.concat(branches)
