"""LeNet-5 (LeCun et al. 1998): the first convolutional network trained end to end.

The modern form: full C3 connectivity, average-pooling subsampling without trainable
coefficients, and a linear output layer instead of the RBF units.
"""

from __future__ import annotations

from nasgraph.ir import Graph, GraphBuilder
from nasgraph.zoo._registry import register


@register("lenet5", family="lenet", num_classes=10, input_shape=(1, 32, 32),
          min_input=(1, 32, 32))
def lenet5(num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 32, 32),
           act: str = "tanh") -> Graph:
    b = GraphBuilder("lenet5")
    x = b.input(*input_shape)
    x = b.act(b.conv(x, 6, 5, name="c1"), act)  # 6 x 28 x 28
    x = b.avgpool(x, 2, name="s2")  # 6 x 14 x 14
    x = b.act(b.conv(x, 16, 5, name="c3"), act)  # 16 x 10 x 10
    x = b.avgpool(x, 2, name="s4")  # 16 x 5 x 5
    x = b.flatten(x)
    x = b.act(b.linear(x, 120, name="c5"), act)
    x = b.act(b.linear(x, 84, name="f6"), act)
    b.output(b.linear(x, num_classes, name="f7"))
    return b.build()
