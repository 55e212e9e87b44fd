"""Receptive field, depth, multiplicity and memory on graphs whose answers are known."""

from __future__ import annotations

from nasgraph.analysis import multiplicity, peak_memory_bytes, summarize
from nasgraph.ir import GraphBuilder
from nasgraph.motifs import ResidualBlock, residual_stage


def chain_of_convs(n: int, kernel: int = 3):
    b = GraphBuilder()
    x = b.input(1, 32, 32)
    for _ in range(n):
        x = b.conv(x, 4, kernel, padding=kernel // 2)
    b.output(x)
    return b.build()


def test_receptive_field_of_stacked_3x3_convs():
    # VGG's argument: two 3x3 convs see 5x5, three see 7x7
    assert summarize(chain_of_convs(1)).receptive_field == 3
    assert summarize(chain_of_convs(2)).receptive_field == 5
    assert summarize(chain_of_convs(3)).receptive_field == 7


def test_receptive_field_of_a_stride_2_pool_chain():
    b = GraphBuilder()
    x = b.input(1, 64, 64)
    for _ in range(3):
        x = b.maxpool(x, 2)
    b.output(x)
    rows = {r.id: r for r in summarize(b.build()).nodes}
    # each 2x2/2 pool adds (2 - 1) * jump and doubles the jump: 2, 4, 8
    assert [rows[i].receptive_field for i in ("maxpool", "maxpool_1", "maxpool_2")] == [
        [2, 2], [4, 4], [8, 8]]
    assert rows["maxpool_2"].stride == [8.0, 8.0]


def test_receptive_field_after_stride_and_factorized_kernels():
    b = GraphBuilder()
    x = b.input(1, 32, 32)
    x = b.conv(x, 4, 3, stride=2, padding=1)  # rf 3, jump 2
    x = b.conv(x, 4, (1, 7), padding=(0, 3))  # rf (3, 3 + 6 * 2)
    x = b.conv(x, 4, 3, dilation=2, padding=2)  # effective kernel 5: + 4 * 2
    b.output(x)
    assert summarize(b.build()).nodes[-2].receptive_field == [3 + 8, 15 + 8]


def test_receptive_field_takes_the_largest_branch_and_ends_at_global_pooling():
    b = GraphBuilder()
    x = b.input(1, 16, 16)
    y = b.concat([b.conv(x, 2, 1), b.conv(x, 2, 5, padding=2)])
    b.output(b.linear(b.flatten(b.gap(y)), 3))
    s = summarize(b.build())
    assert {r.id: r.receptive_field for r in s.nodes}["concat"] == [5, 5]
    assert s.nodes[-1].receptive_field is None
    assert s.receptive_field == 5


def test_a_squeeze_excitation_gate_does_not_make_the_spatial_path_global():
    b = GraphBuilder()
    x = b.conv(b.input(4, 16, 16), 4, 3, padding=1)
    gate = b.act(b.conv(b.gap(x), 4, 1), "sigmoid")
    y = b.conv(b.mul(x, gate), 4, 3, padding=1)
    b.output(y)
    s = summarize(b.build())
    fields = {r.id: r.receptive_field for r in s.nodes}
    assert fields["gap"] is None and fields["mul"] == [3, 3] and fields[y.id] == [5, 5]
    assert s.receptive_field == 5


def test_multiplicity_of_a_chain_is_one():
    assert multiplicity(chain_of_convs(5)) == 1


def test_multiplicity_of_a_residual_stack_doubles_per_block():
    for n in range(1, 6):
        b = GraphBuilder()
        x = b.input(8, 8, 8)
        b.output(residual_stage(b, x, ResidualBlock(planes=8), n))
        assert multiplicity(b.build()) == 2 ** n


def test_multiplicity_of_an_inception_block_is_its_branch_count():
    b = GraphBuilder()
    x = b.input(16, 8, 8)
    branches = [b.conv(x, 4, 1), b.conv(b.conv(x, 4, 1), 4, 3, padding=1),
                b.conv(b.conv(x, 4, 1), 4, 5, padding=2),
                b.conv(b.maxpool(x, 3, stride=1, padding=1), 4, 1)]
    y = b.concat(branches)
    b.output(b.concat([b.conv(y, 4, 1), b.conv(y, 4, 3, padding=1)]))  # a second block: 4 x 2
    assert multiplicity(b.build()) == 8


def test_depth_counts_conv_and_linear_layers_on_the_longest_path():
    b = GraphBuilder()
    x = b.input(3, 8, 8)
    long = b.relu(b.conv(b.relu(b.conv(x, 3, 3, padding=1)), 3, 3, padding=1))
    y = b.add([long, b.bn(x)])
    b.output(b.linear(b.flatten(y), 2))
    assert summarize(b.build()).depth == 3


def test_peak_memory_counts_live_tensors_and_not_views():
    b = GraphBuilder()
    x = b.input(1, 10, 10)  # 400 bytes
    a = b.conv(x, 2, 3, padding=1)  # 800: x still needed by the add below
    c = b.conv(x, 2, 1)  # 800: x, a, c live = 2000
    y = b.add([a, c])  # x freed? no: x's last use was c; peak here: a + c + y = 2400
    b.output(b.identity(b.flatten(y)))
    g = b.build()
    assert peak_memory_bytes(g) == 2400
    assert summarize(g).peak_memory_bytes == 2400
