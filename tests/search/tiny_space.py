"""A search space small enough that a trial trains in about a second: for tests of the
search machinery rather than of the spaces."""

from nasgraph import GraphBuilder
from nasgraph.motifs import conv_unit


def space(trial, ctx):
    b = GraphBuilder("tiny")
    x = b.input(*ctx.input_shape)
    x = conv_unit(b, x, ctx.width(trial.suggest_int("width", 4, 16, step=4)),
                  trial.suggest_categorical("kernel", [1, 3]))
    if trial.suggest_categorical("pool", [True, False]):
        x = b.maxpool(x, 2)
    b.output(b.linear(b.flatten(b.gap(x)), ctx.num_classes))
    return b.build()
