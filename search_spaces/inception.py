"""Inception networks (Szegedy et al. 2015, 2016): blocks of parallel branches, concatenated.

Width: `stem.width`, `stage{i}.width` (channels of each branch). Depth: `stages`,
`stage{i}.depth` (blocks). Multiplicity: `stage{i}.block{j}.paths`, the branches of each
block (1x1; 3x3; 5x5; pool), and `stage{i}.factorized`: 3x3 as 1x3 then 3x1 and 5x5 as two
3x3 (Inception v2/v3), more depth and paths for fewer MACs.
"""

from __future__ import annotations

from nasgraph.ir import GraphBuilder
from nasgraph.motifs import conv_unit
from nasgraph.search.skeleton import head, max_stages, stem


def inception_block(b, x, width, paths, factorized):
    """Up to four branches: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max pool -> 1x1."""
    reduce = max(4, width // 2)
    branches = [lambda: conv_unit(b, x, width, 1, names=("conv", "bn", "relu"))]

    def conv3x3(t, name):
        if not factorized:
            return conv_unit(b, t, width, 3, names=(name, f"{name}_bn", f"{name}_relu"))
        t = conv_unit(b, t, width, (1, 3), names=(f"{name}a", f"{name}a_bn", f"{name}a_relu"))
        return conv_unit(b, t, width, (3, 1), names=(f"{name}b", f"{name}b_bn",
                                                     f"{name}b_relu"))

    def branch3x3():
        return conv3x3(conv_unit(b, x, reduce, 1, names=("reduce", "reduce_bn",
                                                        "reduce_relu")), "conv3x3")

    def branch5x5():
        t = conv_unit(b, x, reduce, 1, names=("reduce", "reduce_bn", "reduce_relu"))
        if factorized:
            return conv_unit(b, conv3x3(t, "conv3x3_1"), width, 3,
                             names=("conv3x3_2", "conv3x3_2_bn", "conv3x3_2_relu"))
        return conv_unit(b, t, width, 5, names=("conv5x5", "conv5x5_bn", "conv5x5_relu"))

    def branch_pool():
        t = b.maxpool(x, 3, stride=1, padding=1)
        return conv_unit(b, t, width, 1, names=("conv", "bn", "relu"))

    branches += [branch3x3, branch5x5, branch_pool]
    outs = []
    for k, make in enumerate(branches[:paths]):
        with b.scope(f"branch{k}"):
            outs.append(make())
    return b.concat(outs) if len(outs) > 1 else outs[0]


def stage(trial, ctx, b, x, name, level, downsample):
    """One Inception stage: parameters `{name}.*`, a 2x2 max pool first when `downsample`."""
    depth = trial.suggest_int(f"{name}.depth", 1, 3)
    width = ctx.width(trial.suggest_int(f"{name}.width", 8, 32 * 2 ** (level - 1), step=8))
    factorized = trial.suggest_categorical(f"{name}.factorized", [False, True])
    with b.scope(name.replace(".", "/")):
        if downsample:
            x = b.maxpool(x, 2)
        for j in range(depth):
            paths = trial.suggest_int(f"{name}.block{j}.paths", 2, 4)
            with b.scope(f"block{j}"):
                x = inception_block(b, x, width, paths, factorized)
    return x


def space(trial, ctx):
    """A GoogLeNet-like network: stem, 1 to 3-4 stages of Inception blocks, GAP, linear."""
    b = GraphBuilder("inception")
    x = stem(trial, ctx, b)
    for i in range(1, trial.suggest_int("stages", 1, max_stages(ctx)) + 1):
        x = stage(trial, ctx, b, x, f"stage{i}", i, downsample=i > 1)
    return head(b, x, ctx)
