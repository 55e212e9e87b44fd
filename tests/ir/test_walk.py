"""`walk` visits nodes in topological order, passes views on, and names a missing entry."""

from __future__ import annotations

import pytest

from nasgraph.errors import GraphError
from nasgraph.ir import GraphBuilder, walk
from nasgraph.ir.walk import outputs


def _graph():
    b = GraphBuilder()
    x = b.input(3, 8, 8)
    y = b.conv(x, 4, 3, padding=1, name="a")
    z = b.conv(b.dropout(x, name="drop"), 4, 3, padding=1, name="b")
    b.output(b.linear(b.flatten(b.add([y, z], name="sum")), 2, name="fc"))
    return b.build()


def test_views_take_their_input_and_the_order_is_topological():
    seen = []

    def record(node, xs):
        seen.append(node.id)
        return f"{node.id}({','.join(xs)})"

    table = dict.fromkeys(["input", "conv2d", "add", "linear"], record)
    values = walk(_graph(), table)
    assert values["drop"] == "input()"  # dropout and flatten: views, no entry needed
    assert outputs(_graph(), values) == ["fc(sum(a(input()),b(input())))"]
    assert seen == ["input", "a", "b", "sum", "fc"]


def test_an_entry_overrides_a_view():
    table = dict.fromkeys(["input", "conv2d", "add", "linear"], lambda n, xs: n.kind)
    table["flatten"] = lambda n, xs: "flat"
    assert walk(_graph(), table)["fc"] == "linear"
    assert walk(_graph(), table)["flatten"] == "flat"


def test_a_missing_entry_names_the_node_op_and_table():
    with pytest.raises(GraphError, match=r"node 'a' \(conv2d\): no entry for op 'conv2d' in "
                                         r"the test table"):
        walk(_graph(), {"input": lambda n, xs: 0}, name="the test table")
