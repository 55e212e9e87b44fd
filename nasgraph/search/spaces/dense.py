"""Densely connected networks (Huang et al. 2017): every layer reads the concatenation of
all earlier layers of its block.

Width: `stem.width`, `stage{i}.growth` (channels each layer adds). Depth: `stages`,
`stage{i}.layers`. Multiplicity: the dense connectivity itself (layer k reads k inputs) and
`stage{i}.bottleneck` (a 1x1 to 4 x growth before each 3x3, DenseNet-B). Between stages a
transition (BN-ReLU-1x1 conv, 2x2 average pool) keeps `compression` of the channels
(DenseNet-C). Resolution: `stem.stride` where the input allows a choice, and the stages
that follow from it (`nasgraph.search.skeleton`).
"""

from __future__ import annotations

from nasgraph.motifs import DenseBlock, Transition, dense_block, transition
from nasgraph.search.skeleton import staged
from nasgraph.search.space import register_space


def stage(trial, ctx, b, x, name, level, downsample):
    """A transition (when `downsample`) and a dense block: parameters `{name}.*`."""
    layers = ctx.depth(trial.suggest_int(f"{name}.layers", 2, 6))
    growth = ctx.width(trial.suggest_int(f"{name}.growth", 4, 16 * 2 ** (level - 1), step=4))
    bottleneck = trial.suggest_categorical(f"{name}.bottleneck", [False, True])
    with b.scope(name.replace(".", "/")):
        if downsample:
            compression = trial.suggest_categorical(f"{name}.compression", [0.5, 0.75, 1.0])
            with b.scope("transition"):
                x = transition(b, x, Transition(compression=compression))
        return dense_block(b, x, DenseBlock(num_layers=layers, growth_rate=growth,
                                            bn_size=4 if bottleneck else None))


@register_space
def dense(trial, ctx):
    """A DenseNet: stem conv, 1 to 4 dense blocks with transitions, BN-ReLU, GAP, linear."""
    return staged("dense", trial, ctx, stage, preact=True)
