"""A macro search space: every stage picks its own family (Inception, residual or dense)
and then that family's parameters, named `stage{i}.{family}.*`.

Width, depth and multiplicity are those of the chosen families; `stages` is the depth of
the whole network.
"""

from __future__ import annotations

from nasgraph.ir import GraphBuilder
from nasgraph.search import load_space
from nasgraph.search.skeleton import head, max_stages, stem

FAMILIES = ("inception", "residual", "dense")


def space(trial, ctx):
    """Stem, 1 to 3-4 stages of mixed families, BN-ReLU, GAP, linear."""
    b = GraphBuilder("macro")
    x = stem(trial, ctx, b)
    for i in range(1, trial.suggest_int("stages", 1, max_stages(ctx)) + 1):
        family = trial.suggest_categorical(f"stage{i}.family", list(FAMILIES))
        stage = load_space(f"{family}:stage")
        x = stage(trial, ctx, b, x, f"stage{i}.{family}", i, downsample=i > 1)
    return head(b, x, ctx, preact=True)
