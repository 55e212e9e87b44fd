"""An example search space to copy and change: stages of blocks of 1 to 3 parallel 3x3 convs,
summed, of which the last may be a residual stage instead (the built-in `residual` space's).

    nasgraph search search_spaces/example.py:space --budget 200k

The study is named after the file: runs/example-digits/. docs/search.md explains each step;
`nasgraph spaces` lists the built-in spaces, whose code is in nasgraph/search/spaces/.
"""

from nasgraph import GraphBuilder
from nasgraph.motifs import conv_unit
from nasgraph.search.skeleton import head, stages, stem
from nasgraph.search.spaces import residual


def space(trial, ctx):
    """Stem, stages of parallel 3x3 convs (the last perhaps residual), GAP, linear."""
    b = GraphBuilder("example")
    x = stem(trial, ctx, b)  # `stem.width`, and `stem.stride` on inputs of 16 px and more
    count = stages(trial, ctx)  # `stages`, as many as the resolution allows
    for s in range(1, count + 1):
        if s == count and trial.suggest_categorical(f"stage{s}.residual", [False, True]):
            return head(b, residual.stage(trial, ctx, b, x, f"stage{s}.residual", s,
                                          downsample=s > 1, preact=False), ctx)
        width = ctx.width(trial.suggest_int(f"stage{s}.width", 16, 128, step=16))
        with b.scope(f"stage{s}"):
            if s > 1:
                x = b.maxpool(x, 2)
            for k in range(trial.suggest_int(f"stage{s}.depth", 1, 3)):
                paths = trial.suggest_int(f"stage{s}.block{k}.paths", 1, 3)
                with b.scope(f"block{k}"):
                    branches = []
                    for p in range(paths):
                        with b.scope(f"path{p}"):
                            branches.append(conv_unit(b, x, width, 3))
                    x = b.add(branches) if paths > 1 else branches[0]
    return head(b, x, ctx)
