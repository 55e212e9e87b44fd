"""The parts every built-in space shares, sized for the input: a stem that may downsample,
stages that halve the resolution down to 4x4 - 8x8, and a classifier head. A space fills the
stages.

A layer at full resolution costs its per-pixel MACs H x W times: on 28x28 MNIST a 3x3 conv
of 8 channels to 8 is 0.45M MACs, half of a 1M budget. So where the input is large enough
the stem may downsample (`stem.stride`), and the stages after it stop at 4x4 to 8x8.

    >>> import optuna
    >>> from nasgraph.search import Context
    >>> from nasgraph.search.skeleton import stages
    >>> stages(optuna.trial.FixedTrial({"stages": 2}), Context(input_shape=(1, 8, 8)))
    2
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nasgraph.ir import Graph, GraphBuilder, Tensor
from nasgraph.motifs import conv_unit
from nasgraph.search.space import Context


def stem(trial: Any, ctx: Context, b: GraphBuilder, preact: bool = False) -> Tensor:
    """The input and the stem, `stem.width` channels at the stride the trial asks
    (`stem_stride`), or more where the fitting asks more (`ctx.stem_stride`): at stride 1
    or 2 one 3x3 conv (without BN-ReLU when `preact`: the first block starts with them), at
    4 a 7x7 conv of stride 2 and a 3x3 max pool of stride 2, as ImageNet's ResNets."""
    x = b.input(*ctx.input_shape)
    width = ctx.width(trial.suggest_int("stem.width", 8, 64, step=8))
    stride = ctx.stem_stride(stem_stride(trial, ctx))
    with b.scope("stem"):
        if stride == 4:
            x = conv_unit(b, x, width, 7, stride=2)
            return b.maxpool(x, 3, stride=2, padding=1)
        return conv_unit(b, x, width, 3, stride=stride, bn=not preact,
                         act=None if preact else "relu")


def stem_stride(trial: Any, ctx: Context) -> int:
    """The stem's stride as the trial asks it: `stem.stride`, one of `ctx.stem_strides`,
    where the input allows more than one (not on 8x8 digits)."""
    strides = ctx.stem_strides
    if len(strides) == 1:
        return strides[0]
    return trial.suggest_categorical("stem.stride", list(strides))


def stages(trial: Any, ctx: Context, most: int = 4) -> int:
    """`stages`, each halving the map the trial's stem leaves: at least as many as bring it
    down to 8x8 or less, at most as many as keep it at least 4x4 (and `most`). On 8x8
    digits 1 or 2; on 28x28 3 or 4 (28 to 7 or 4), 2 or 3 after a stride-2 stem (14 to 7
    or 4); on 32x32 3 or 4, 2 or 3 after a stride-2 stem.

    A network that ends at 14x14 sees a 28x28 image through a few 3x3 convs and spends its
    MACs on positions, not channels; one that goes on to 2x2 adds wide, parameter-heavy
    stages that overfit small images (on 8x8 digits the best 3-stage candidate scored 97.2%
    on test against 98.9% for a plain 2-stage ResNet). The count follows the trial's stem,
    not the fitting's, so that a candidate keeps its stages when it is fitted with a
    coarser stem.
    """
    side = -(-min(ctx.input_shape[1:]) // stem_stride(trial, ctx))
    sides = [side]
    while len(sides) < most and (sides[-1] + 1) // 2 >= 4:  # as a stride-2 3x3 conv rounds
        sides.append((sides[-1] + 1) // 2)
    fewest = next((k for k, s in enumerate(sides, 1) if s <= 8), len(sides))
    return trial.suggest_int("stages", fewest, len(sides))


def staged(name: str, trial: Any, ctx: Context, stage: Callable[..., Tensor],
           preact: bool = False) -> Graph:
    """The network of a space: `stem`, `stages` stages of `stage(trial, ctx, b, x,
    "stage{i}", i, downsample=i > 1)`, and `head`."""
    b = GraphBuilder(name)
    x = stem(trial, ctx, b, preact=preact)
    for i in range(1, stages(trial, ctx) + 1):
        x = stage(trial, ctx, b, x, f"stage{i}", i, downsample=i > 1)
    return head(b, x, ctx, preact=preact)


def head(b: GraphBuilder, x: Tensor, ctx: Context, preact: bool = False) -> Graph:
    """Global average pooling and a linear classifier (after a final BN-ReLU for
    pre-activation networks, whose blocks end on an add)."""
    with b.scope("head"):
        if preact:
            x = b.relu(b.bn(x))
        x = b.linear(b.flatten(b.gap(x)), ctx.num_classes, name="fc")
    b.output(x)
    return b.build()
