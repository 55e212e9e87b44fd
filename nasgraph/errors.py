"""The errors nasgraph raises for bad input.

Every one is a ValueError, so callers that only know "bad value" still catch them, and the
CLI turns each into one line on stderr with exit code 2.
"""


class NasgraphError(ValueError):
    """Base class of every user-facing nasgraph error."""


class GraphError(NasgraphError):
    """A graph is malformed: unknown op, cycle, dangling input, bad JSON, ..."""


class ShapeError(GraphError):
    """An op cannot accept the tensor types it is given."""


class BudgetError(NasgraphError):
    """A candidate architecture exceeds its compute, parameter or memory budget."""


class SpaceError(NasgraphError):
    """A search space cannot be found, loaded or evaluated."""


class RenderError(NasgraphError):
    """A picture cannot be drawn: a bad option, an unknown format, no graphviz `dot`."""


class DataError(NasgraphError):
    """A dataset cannot be found or read."""
