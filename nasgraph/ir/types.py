"""Tensor types: what flows along the edges of a graph.

The batch dimension is implicit: a TensorType describes one sample. Spatial tensors are
C x H x W (NCHW layout with N left out); flat tensors (after Flatten, Linear) are vectors of
`channels` features and carry height = width = 1 with `flat=True`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DType = Literal["float32", "float16", "bfloat16"]

BYTES_PER_ELEMENT: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}


class TensorType(BaseModel):
    """The type of one sample of a tensor: channels x height x width, and its dtype."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: int = Field(gt=0)
    height: int = Field(default=1, gt=0)
    width: int = Field(default=1, gt=0)
    dtype: DType = "float32"
    flat: bool = False

    @classmethod
    def vector(cls, features: int, dtype: DType = "float32") -> TensorType:
        """A flat feature vector, as produced by Flatten or Linear."""
        return cls(channels=features, height=1, width=1, dtype=dtype, flat=True)

    @property
    def shape(self) -> tuple[int, ...]:
        """(C, H, W) for spatial tensors, (F,) for flat ones: torch's shape without N."""
        return (self.channels,) if self.flat else (self.channels, self.height, self.width)

    @property
    def spatial(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def numel(self) -> int:
        return self.channels * self.height * self.width

    @property
    def nbytes(self) -> int:
        return self.numel * BYTES_PER_ELEMENT[self.dtype]

    def __str__(self) -> str:
        return "x".join(str(d) for d in self.shape)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """Output length of a convolution or pooling window along one axis, as torch computes it.

    With `ceil_mode` the last window may start in the padding on the right, but never
    beyond the input and the left padding (torch's rule for pooling).
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return span // stride + 1
