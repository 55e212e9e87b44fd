"""Every registered op has an entry in every table keyed by op kind: the torch lowering (which
the exporter prints), the numba executor and its backward, the drawing's styles and the
random graphs the tests draw. Views of their input (`Op.is_alias`) need no entry: `walk`
passes them on.

A failure names the op and the table. An op left out of a table on purpose is listed in
`EXCEPTIONS`, with the reason; an exception that is no longer needed fails too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import Phase, find, settings
from hypothesis.errors import NoSuchExample

from nasgraph.backends.numba.executor import BOUND_HERE
from nasgraph.backends.numba.grad import BACKWARD
from nasgraph.backends.numba.nodes import BINDERS, CONV_KINDS, PACKERS
from nasgraph.backends.torch import EMITTERS, MODULES
from nasgraph.drawing import FAMILY_STYLES
from nasgraph.ir import OPS, Op
from tests.strategies import graphs


def _has_weights(cls: type[Op]) -> bool:
    return cls.weight_specs is not Op.weight_specs


# table -> whether it covers op kind `kind` (spec class `cls`)
TABLES: dict[str, Callable[[str, type[Op]], bool]] = {
    "torch EMITTERS": lambda kind, cls: kind in EMITTERS or cls.is_alias,
    "torch MODULES": lambda kind, cls: not _has_weights(cls) or kind in MODULES,
    "numba BINDERS": lambda kind, cls: kind in BINDERS or kind in BOUND_HERE or cls.is_alias,
    "numba BACKWARD": lambda kind, cls: kind in BACKWARD,
    "numba PACKERS": lambda kind, cls: (not _has_weights(cls) or kind in PACKERS
                                        or kind in CONV_KINDS),
    "drawing FAMILY_STYLES": lambda kind, cls: cls.family in FAMILY_STYLES,
}

# (kind, table) -> why the kind is handled outside that table
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("input", "torch EMITTERS"): "trace() makes every input a placeholder",
}


def test_exceptions_name_registered_ops_and_tables():
    assert {kind for kind, _ in EXCEPTIONS} <= set(OPS)
    assert {table for _, table in EXCEPTIONS} <= set(TABLES)


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("kind", OPS)
def test_every_op_is_in_every_table(kind, table):
    covered = TABLES[table](kind, OPS[kind])
    if (kind, table) in EXCEPTIONS:
        assert not covered, f"op {kind!r} is in {table} now: remove its exception"
    else:
        assert covered, f"op {kind!r} is missing from {table}"


@pytest.mark.parametrize("kind", OPS)
def test_every_op_is_drawn_by_the_random_graphs(kind):
    try:
        find(graphs(), lambda g: kind in {n.kind for n in g},
             settings=settings(max_examples=500, database=None, phases=[Phase.generate]))
    except NoSuchExample:
        pytest.fail(f"op {kind!r} is missing from tests.strategies.graphs")
