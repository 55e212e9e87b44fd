"""Residual networks (He et al. 2015, 2016; Xie et al. 2017).

Width: `stem.width`, `stage{i}.width` (the stage's output channels). Depth: `stages`,
`stage{i}.depth` (blocks). Multiplicity: the shortcut of every block and, for bottleneck
blocks, `stage{i}.cardinality` (ResNeXt's grouped 3x3). Block type: `block` (basic or
bottleneck) and `preact` (pre-activation, identity mappings). Resolution: `stem.stride`
where the input allows a choice, and the stages that follow from it (`nasgraph.search.skeleton`).
"""

from __future__ import annotations

from functools import partial

from nasgraph.motifs import ResidualBlock, residual_stage
from nasgraph.search.skeleton import staged
from nasgraph.search.space import register_space


def stage(trial, ctx, b, x, name, level, downsample, kind=None, preact=None):
    """One residual stage: parameters `{name}.*`, nodes in scope `name` with dots as '/';
    the first block strides when `downsample`; widths grow with `level` (1, 2, ...)."""
    kind = kind or trial.suggest_categorical(f"{name}.block", ["basic", "bottleneck"])
    if preact is None:
        preact = trial.suggest_categorical(f"{name}.preact", [False, True])
    depth = ctx.depth(trial.suggest_int(f"{name}.depth", 1, 3))
    width = trial.suggest_int(f"{name}.width", 8, 64 * 2 ** (level - 1), step=8)
    if kind == "bottleneck":
        groups = trial.suggest_categorical(f"{name}.cardinality", [1, 2, 4])
        out = ctx.width(width, divisor=8)
        cfg = ResidualBlock(kind=kind, planes=out // 4, groups=groups, preact=preact,
                            stride=2 if downsample else 1)
    else:
        cfg = ResidualBlock(kind=kind, planes=ctx.width(width), preact=preact,
                            stride=2 if downsample else 1)
    with b.scope(name.replace(".", "/")):
        return residual_stage(b, x, cfg, depth)


@register_space
def residual(trial, ctx):
    """A ResNet: stem, 1 to 4 stages of basic or bottleneck blocks, GAP, linear."""
    kind = trial.suggest_categorical("block", ["basic", "bottleneck"])
    preact = trial.suggest_categorical("preact", [False, True])
    return staged("residual", trial, ctx, partial(stage, kind=kind, preact=preact),
                  preact=preact)
