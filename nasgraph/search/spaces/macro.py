"""A macro search space: every stage picks its own family (Inception, residual or dense)
and then that family's parameters, named `stage{i}.{family}.*`.

Width, depth and multiplicity are those of the chosen families; `stages` is the depth of
the whole network, and `stem.stride` its resolution where the input allows a choice.
"""

from __future__ import annotations

from nasgraph.ir import GraphBuilder
from nasgraph.search.skeleton import head, stages, stem
from nasgraph.search.space import register_space
from nasgraph.search.spaces import dense, inception, residual

# the order of the choices is part of every stored trial's parameters: append, never reorder
FAMILIES = {"inception": inception.stage, "residual": residual.stage, "dense": dense.stage}


@register_space
def macro(trial, ctx):
    """A network of 1 to 4 stages, each an Inception, residual or dense stage; GAP, linear."""
    b = GraphBuilder("macro")
    x = stem(trial, ctx, b)
    for i in range(1, stages(trial, ctx) + 1):
        family = trial.suggest_categorical(f"stage{i}.family", list(FAMILIES))
        stage = FAMILIES[family]
        x = stage(trial, ctx, b, x, f"stage{i}.{family}", i, downsample=i > 1)
    return head(b, x, ctx, preact=True)
