"""MobileNet v2 and MnasNet networks (Sandler et al. 2018; Tan et al. 2019): stages of
inverted residuals, each widening its input, filtering it depthwise and projecting it back
to a narrow output; every stage picks its own blocks, as in MnasNet's factorized
hierarchical space.

Width: `stem.width`, `stage{i}.width` (output channels) and `stage{i}.expansion` (1, 3, 4
or 6: the depthwise layer's width over the block's input). Depth: `stages`,
`stage{i}.depth` (blocks). Kernel: `stage{i}.kernel` (3 or 5, depthwise). Multiplicity: the
residual of every block that keeps its input's shape (all but, mostly, a stage's first)
and `stage{i}.se` (squeeze-excitation, a gate from a quarter of the block's input
channels). Resolution: `stem.stride` where the input allows a choice, and the stages that
follow from it (`nasgraph.search.skeleton`).
"""

from __future__ import annotations

from nasgraph.motifs import InvertedResidual, inverted_residual_stage
from nasgraph.search.skeleton import staged
from nasgraph.search.space import register_space


def stage(trial, ctx, b, x, name, level, downsample):
    """One stage of inverted residuals: parameters `{name}.*`, nodes in scope `name` with
    dots as '/'; the first block strides when `downsample` and changes the width."""
    width = ctx.width(trial.suggest_int(f"{name}.width", 8, 24 * 2 ** (level - 1), step=8))
    depth = ctx.depth(trial.suggest_int(f"{name}.depth", 1, 4))
    cfg = InvertedResidual(
        out_channels=width, stride=2 if downsample else 1,
        kernel=trial.suggest_categorical(f"{name}.kernel", [3, 5]),
        expand_ratio=trial.suggest_categorical(f"{name}.expansion", [1, 3, 4, 6]),
        se_ratio=0.25 if trial.suggest_categorical(f"{name}.se", [False, True]) else 0.0)
    with b.scope(name.replace(".", "/")):
        return inverted_residual_stage(b, x, cfg, depth)


@register_space
def mobile(trial, ctx):
    """A MobileNetV2/MnasNet: stem, 1 to 4 stages of inverted residuals, GAP, linear."""
    return staged("mobile", trial, ctx, stage)
