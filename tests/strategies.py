"""Hypothesis strategies shared by the tests: random, valid nasgraph DAGs.

`graphs()` draws a graph using every op kind of the registry, with odd sizes, strides,
dilations, groups, branches and merges. Backends use it to check that they agree.
`step_sized_nets()` draws classifiers of the kinds a search trains, at the sizes where
the numba backend's training kernels take their fast paths.
"""

from __future__ import annotations

from hypothesis import strategies as st

from nasgraph.errors import ShapeError
from nasgraph.ir import Graph, GraphBuilder, Tensor, ops

ACTIVATIONS = ["relu", "relu6", "sigmoid", "tanh", "silu", "hardswish", "gelu"]


@st.composite
def graphs(draw: st.DrawFn, max_nodes: int = 12, max_channels: int = 12,
           max_size: int = 14, classifier: bool = False) -> Graph:
    """`classifier`: the only output is a classifier head on the last tensor drawn (what a
    training loss takes), else that tensor, and maybe a head as a second output."""
    b = GraphBuilder("random")
    c = draw(st.integers(1, max_channels))
    h = draw(st.integers(3, max_size))
    w = draw(st.integers(3, max_size))
    pool = [b.input(c, h, w)]
    steps = draw(st.integers(1, max_nodes))
    for _ in range(steps):
        x = draw(st.sampled_from(pool))
        kind = draw(st.sampled_from(
            ["conv", "conv", "dwconv", "bn", "act", "maxpool", "avgpool", "add", "concat",
             "mul", "upsample", "pad", "identity", "dropout", "adaptive", "fused", "shuffle",
             "slice", "layernorm"]))
        try:
            y = _step(draw, b, x, kind, pool, max_channels)
        except ShapeError:
            continue  # a drawn window larger than its input: skip this step
        if y is not None:
            pool.append(y)
    last = pool[-1]
    if classifier:
        b.output(b.linear(b.flatten(b.gap(last)), draw(st.integers(2, 7))))
        return b.build()
    b.output(last)
    if draw(st.booleans()):  # a classifier head as a second output
        head = b.linear(b.flatten(b.gap(pool[draw(st.integers(0, len(pool) - 1))])),
                        draw(st.integers(1, 7)))
        b.output(head, name="logits")
    return b.build()


def _step(draw: st.DrawFn, b: GraphBuilder, x: Tensor, kind: str, pool: list[Tensor],
          max_channels: int) -> Tensor | None:
    small = st.integers(1, 3)
    if kind == "conv":
        kh, kw = draw(st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 1), (5, 5), (2, 2)]))
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if x.channels % g == 0]))
        out = groups * draw(st.integers(1, max(1, max_channels // groups)))
        return b.conv(x, out, (kh, kw), stride=draw(small.filter(lambda s: s <= 2)),
                      padding=(draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))),
                      dilation=draw(st.sampled_from([1, 1, 2])), groups=groups,
                      bias=draw(st.booleans()))
    if kind == "dwconv":
        return b.conv(x, x.channels, 3, stride=draw(st.integers(1, 2)), padding=1,
                      groups=x.channels, bias=False)
    if kind == "bn":
        return b.bn(x)
    if kind == "layernorm":
        # over one channel its output is its bias alone, a constant: a BatchNorm after it
        # would normalize zero variance, which amplifies float32 rounding by 1/sqrt(eps)
        # (a gradient exactly zero came out 6e-5 of the largest one)
        if x.channels == 1:
            return None
        return b.node(ops.LayerNorm2d(eps=draw(st.sampled_from([1e-6, 1e-5]))), [x])
    if kind == "act":
        return b.act(x, draw(st.sampled_from(ACTIVATIONS)))
    if kind in ("maxpool", "avgpool"):
        k = draw(st.integers(1, 3))
        pool_fn = b.maxpool if kind == "maxpool" else b.avgpool
        extra = {} if kind == "maxpool" else {"count_include_pad": draw(st.booleans())}
        return pool_fn(x, k, stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, k // 2)),
                       ceil_mode=draw(st.booleans()), **extra)
    if kind == "add":
        same = [t for t in pool if t.type == x.type and t.id != x.id]
        if not same:
            return None
        others = draw(st.lists(st.sampled_from(same), min_size=1, max_size=2, unique=True))
        weights = draw(st.none() | st.just([0.5] * (len(others) + 1)))
        return b.add([x, *others], weights=weights)
    if kind == "concat":
        same = [t for t in pool if t.type.spatial == x.type.spatial and t.id != x.id]
        others = draw(st.lists(st.sampled_from(same), max_size=2, unique=True)) if same else []
        return b.concat([x, *others])
    if kind == "mul":  # a squeeze-excitation gate
        gate = b.act(b.conv(b.gap(x), x.channels, 1), "sigmoid")
        return b.mul(x, gate)
    if kind == "upsample":
        if draw(st.booleans()):
            return b.upsample(x, scale=2.0, mode=draw(st.sampled_from(["nearest", "bilinear"])))
        size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
        return b.upsample(x, size=size, mode="bilinear")
    if kind == "adaptive":
        return b.adaptive_avgpool(x, (draw(st.integers(1, 6)), draw(st.integers(1, 6))))
    if kind == "pad":
        return b.channel_pad(x, after=draw(small), before=draw(st.integers(0, 2)))
    if kind == "fused":  # what fuse_epilogues makes: act(conv(x) + residual)
        same = [t for t in pool if t.type == x.type and t.id != x.id]
        residual = bool(same) and draw(st.booleans())
        k = draw(st.sampled_from([1, 3]))
        op = ops.FusedConv2d(out_channels=x.channels, kernel=k, padding=k // 2,
                             bias=draw(st.booleans()), residual=residual,
                             act=draw(st.none() | st.sampled_from(ACTIVATIONS)))
        return b.node(op, [x, draw(st.sampled_from(same))] if residual else [x])
    if kind == "shuffle":
        groups = draw(st.sampled_from([g for g in (1, 2, 3, 4) if x.channels % g == 0]))
        return b.node(ops.ChannelShuffle(groups=groups), [x])
    if kind == "slice":
        start = draw(st.integers(0, x.channels - 1))
        stop = draw(st.integers(start + 1, x.channels))
        return b.node(ops.ChannelSlice(start=start, stop=stop), [x])
    if kind == "identity":
        return b.identity(x)
    return b.dropout(x, 0.25)


# output channels a step-sized conv draws from: any count up to 40, and the counts the
# kernels have paths for (whole vectors of 8 and 16, Winograd from 64)
_STEP_CHANNELS = st.integers(1, 40) | st.sampled_from([7, 14, 16, 28, 32, 64, 96])


@st.composite
def step_sized_nets(draw: st.DrawFn, max_blocks: int = 4) -> tuple[Graph, int]:
    """A classifier as a search builds one, and a batch for it, at the sizes a training
    step meets: 1 or 3 input channels on 4x4 to 32x32 maps, then up to `max_blocks`
    blocks (a conv of 1x1 to 5x5, strided or dilated; a depthwise conv; a grouped 3x3
    conv of 2-4 groups; a residual pair of 3x3 convs; a two-branch concat; a pooling), up
    to 96 channels, and 2-128 samples.
    Each conv is followed by a BatchNorm and a ReLU or ReLU6 (the residual pair's second
    by its BatchNorm, the add and a ReLU), and has no bias: a bias before a BatchNorm,
    or a BatchNorm before a linear op and another BatchNorm, has a gradient that is zero
    in exact arithmetic, rounding noise in float32 on either side. The numba backend's
    training kernels switch paths at these sizes (tiles from 16 channels, Winograd from
    64, BatchNorm's walk by sample from 64k values, the batch in the lanes, the weight
    gradient's chunks of samples), which `graphs()`' small ones never reach."""
    b = GraphBuilder("step")
    side = draw(st.sampled_from([4, 7, 8, 12, 14, 16, 28, 32]))
    x = b.input(draw(st.sampled_from([1, 3])), side, side)

    def conv_bn_act(t: Tensor, out: int, kernel: int, stride: int = 1, padding: int = 0,
                    dilation: int = 1, groups: int = 1) -> Tensor:
        y = b.bn(b.conv(t, out, kernel, stride=stride, padding=padding, dilation=dilation,
                        groups=groups, bias=False))
        return b.act(y, draw(st.sampled_from(["relu", "relu", "relu6"])))

    for _ in range(draw(st.integers(1, max_blocks))):
        side = x.type.height
        # a block never leaves a map under 2 x 2: a BatchNorm over 2 values a channel (1 x
        # 1 at batch 2) has x_hat = +-1 whatever x is, and a gradient of rounding noise
        stride = draw(st.integers(1, 2)) if side >= 4 else 1
        kind = draw(st.sampled_from(["conv", "conv", "depthwise", "grouped", "residual",
                                     "concat", "pool"]))
        groups = draw(st.sampled_from([2, 3, 4]))
        if kind == "concat" and x.channels == 1 or \
                kind == "grouped" and (x.channels % groups or x.channels == groups):
            kind = "conv"
        if kind == "conv":
            # not 1x1 on one channel: each output would be +-x once normalized, whatever
            # its weight, whose gradient is then zero in exact arithmetic
            k = draw(st.sampled_from([3, 5] if x.channels == 1 else [1, 3, 3, 5]))
            d = draw(st.sampled_from([1, 1, 2])) if k > 1 else 1
            pad = draw(st.integers(0, k // 2)) * d
            if (side + 2 * pad - d * (k - 1) - 1) // stride + 1 < 2:
                continue
            x = conv_bn_act(x, draw(_STEP_CHANNELS), k, stride, pad, d)
        elif kind == "depthwise":
            x = conv_bn_act(x, x.channels, 3, stride, 1, groups=x.channels)
        elif kind == "grouped":  # ResNeXt's: several channels a group
            x = conv_bn_act(x, groups * draw(st.integers(2, 24)), 3, stride, 1, groups=groups)
        elif kind == "residual":
            inner = conv_bn_act(x, x.channels, 3, padding=1)
            x = b.relu(b.add([b.bn(b.conv(inner, x.channels, 3, padding=1, bias=False)), x]))
        elif kind == "concat":
            x = b.concat([conv_bn_act(x, draw(_STEP_CHANNELS), 1),
                          conv_bn_act(x, draw(_STEP_CHANNELS), 3, padding=1)])
        elif side >= 4 and draw(st.booleans()):
            x = b.maxpool(x, 3, stride=2, padding=1)
        elif side >= 4:
            x = b.avgpool(x, 2)
    b.output(b.linear(b.flatten(b.gap(x)), draw(st.integers(2, 10))))
    return b.build(), draw(st.sampled_from([2, 5, 17, 33, 64, 128]))
