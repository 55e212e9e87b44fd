"""Inception networks (Szegedy et al. 2015, 2016): blocks of parallel branches, concatenated.

Built from `nasgraph.motifs.inception`. Width: `stem.width`, `stage{i}.width` (channels of
each branch). Depth: `stages`,
`stage{i}.depth` (blocks). Multiplicity: `stage{i}.block{j}.paths`, the branches of each
block (1x1; 3x3; 5x5; pool), and `stage{i}.factorized`: 3x3 as 1x3 then 3x1 and 5x5 as two
3x3 (Inception v2/v3), more depth and paths for fewer MACs. Resolution: `stem.stride`
where the input allows a choice, and the stages that follow from it (`nasgraph.search.skeleton`).
"""

from __future__ import annotations

from nasgraph.motifs import FactorizedInception, InceptionV1, inception_block
from nasgraph.search.skeleton import staged
from nasgraph.search.space import register_space


def module(width, paths, factorized):
    """The block's config: 1x1 | 3x3 | 5x5 | pool -> 1x1, the first `paths` branches.
    Factorized (Inception v3): 3x3 as 1x3 then 3x1, 5x5 as two such pairs."""
    reduce = max(4, width // 2)
    keep = [k < paths for k in range(4)]
    if factorized:
        return FactorizedInception(
            ch1x1=width, mid=(reduce, width, width), asymmetric=True, pool="max",
            deep=(reduce, width, width, width, width) if keep[2] else (),
            pool_proj=width if keep[3] else 0)
    return InceptionV1(ch1x1=width, ch3x3red=reduce, ch3x3=width, ch5x5red=reduce,
                       ch5x5=width if keep[2] else 0, pool_proj=width if keep[3] else 0)


def stage(trial, ctx, b, x, name, level, downsample):
    """One Inception stage: parameters `{name}.*`, a 2x2 max pool first when `downsample`."""
    depth = ctx.depth(trial.suggest_int(f"{name}.depth", 1, 3))
    width = ctx.width(trial.suggest_int(f"{name}.width", 8, 32 * 2 ** (level - 1), step=8))
    factorized = trial.suggest_categorical(f"{name}.factorized", [False, True])
    with b.scope(name.replace(".", "/")):
        if downsample:
            x = b.maxpool(x, 2)
        for j in range(depth):
            paths = trial.suggest_int(f"{name}.block{j}.paths", 2, 4)
            with b.scope(f"block{j}"):
                x = inception_block(b, x, module(width, paths, factorized), eps=1e-5)
    return x


@register_space
def inception(trial, ctx):
    """A GoogLeNet-like network: stem, 1 to 4 stages of Inception blocks, GAP, linear."""
    return staged("inception", trial, ctx, stage)
