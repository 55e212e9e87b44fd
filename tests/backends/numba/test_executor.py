"""The numba executor agrees with the torch lowering on every op, random DAGs and the zoo."""

from __future__ import annotations

import subprocess
import sys

import numba
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import fx

from nasgraph import init_state, zoo
from nasgraph.backends import numba as nb
from nasgraph.backends.numba import _tiled as tiled_k
from nasgraph.backends.numba._weights import weight_shapes
from nasgraph.backends.torch import lower
from nasgraph.errors import GraphError, NasgraphError
from nasgraph.ir import GraphBuilder
from tests.strategies import graphs, step_sized_nets

CALIBRATION_BATCH = 32


def randomized(graph, seed=0):
    """The torch reference of `graph` in eval mode, with BatchNorm statistics fitted to the
    data, as a trained network's are, so that activations stay O(1) at any depth. Each
    BN's running mean is a random fraction (-1/2 to 1/2) of its input's per-channel mean
    on a calibration batch (`CALIBRATION_BATCH` samples, not the ones the tests run), its
    running variance the mean square of the whole input, perturbed by up to 25%; gamma and
    beta are random. A forward pre-hook calibrates each BN before it normalizes, in
    execution order, so each sees calibrated inputs.

    Random statistics let ResNet-1001's activations grow to 1e33, where agreement says
    nothing about the executor and depends on the CPU's rounding. Per-channel statistics
    would scale each channel to unit variance, the faint ones up, float32 rounding error
    with them, compounding with depth (Inception-v4: 19x the 1e-4 bound); one scale for
    the whole input keeps the rounding as small, relative to the activations, as it was
    before the BN."""
    torch.manual_seed(seed)
    m = lower(graph).eval()

    def calibrate(bn, args):
        # x: N x C x H x W; a channel's mean over N, H, W, the whole layer's mean square
        x, c = args[0], args[0].shape[1]
        bn.running_mean.copy_(x.mean(dim=(0, 2, 3)) * torch.empty(c).uniform_(-0.5, 0.5))
        bn.running_var.copy_(x.square().mean() * torch.empty(c).uniform_(0.8, 1.25))
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)

    hooks = [mod.register_forward_pre_hook(calibrate) for mod in m.modules()
             if isinstance(mod, torch.nn.BatchNorm2d)]
    xs = [torch.randn(CALIBRATION_BATCH, *n.type.shape) for n in graph.inputs]
    with torch.no_grad():
        m(*xs)
    for hook in hooks:
        hook.remove()
    return m


def _tuple(y):
    return y if isinstance(y, tuple) else (y,)


# the largest activation `randomized` may give: agreement within 1e-4 of the output scale
# tests the executor where activations are O(1), as a trained network's; where they reach
# 1e33, whether float32 meets that bound depends on the CPU's vector width
ACTIVATION_LIMIT = 1e3


class _Peak(fx.Interpreter):
    """Runs a GraphModule node by node, keeping the largest magnitude any node computes."""

    peak = 0.0

    def run_node(self, n):
        y = super().run_node(n)
        for t in _tuple(y):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.peak = max(self.peak, float(t.abs().max()))
        return y


def assert_agree(graph, batch=2, seed=0, **kwargs):
    """numba's outputs equal torch's within 1e-4 of the output scale, max(1, max|torch|),
    on weights from `randomized`, whose activations (every node's) stay below
    ACTIVATION_LIMIT. Returns the worst error / bound ratio."""
    m = randomized(graph, seed)
    x = np.random.default_rng(seed).standard_normal(
        (batch, *graph.inputs[0].type.shape)).astype(np.float32)
    got = _tuple(nb.compile(graph, m.state_dict(), **kwargs)(x))
    torch_run = _Peak(m)
    with torch.no_grad():
        want = [w.numpy() for w in _tuple(torch_run.run(torch.from_numpy(x)))]
    assert torch_run.peak < ACTIVATION_LIMIT, f"activations reach {torch_run.peak:.3g}"
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        bound = 1e-4 * max(1.0, float(np.abs(w).max()))
        worst = max(worst, float(np.abs(g - w).max()) / bound)
    assert worst <= 1, f"error {worst:.3g}x the bound"
    return worst


@pytest.mark.parametrize("optimize", [True, False])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=graphs(), batch=st.integers(1, 3))
def test_random_dags_agree_with_torch(g, batch, optimize):
    assert_agree(g, batch=batch, optimize=optimize)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=step_sized_nets(), optimize=st.booleans(), threads=st.sampled_from([1, 2]))
def test_step_sized_random_nets_agree_with_torch(net, optimize, threads):
    """Search-like classifiers at the sizes of a training batch (up to 96 channels, 32 x
    32 maps, 128 samples), where the executor's tiles, chains and Winograd convs take
    over; `graphs()` draws maps and batches too small for most of them."""
    graph, batch = net
    assert_agree(graph, batch=batch, optimize=optimize,
                 threads=min(threads, numba.config.NUMBA_NUM_THREADS))


def _small(name):
    e = zoo.entry(name)
    shape = e.min_input or e.input_shape
    if e.family == "resnet":
        shape = (3, 32, 32)
    return zoo.get(name, num_classes=10, input_shape=shape)


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_models_agree_with_torch(name):
    assert_agree(_small(name))


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_give_the_same_result(threads):
    g = _small("resnet18")
    m = randomized(g)
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    a = nb.compile(g, m.state_dict(), threads=threads)(x)
    b = nb.compile(g, m.state_dict(), threads=1, batch=1)(x)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_depthwise_dilated_and_strided_convs_agree():
    b = GraphBuilder("dw")
    x = b.input(6, 11, 9)
    y = b.conv(x, 12, (3, 5), stride=2, padding=(1, 2), dilation=2, groups=6)
    y = b.conv(b.relu(y), 12, (1, 7), padding=(0, 3), groups=3)
    b.output(b.upsample(y, size=(7, 13), mode="bilinear"))
    assert_agree(b.build(), batch=3)


@pytest.mark.parametrize(("batch", "threads"), [(1, 2), (3, 1), (2, 2)])
def test_depthwise_nhwc_convs_agree(batch, threads):
    # small maps run depthwise in NHWC: input padded NHWC from the conv before (y) or
    # copied from NCHW (r), output padded NHWC for the next conv or NCHW; 44 channels
    # (32 + 8, then the last 8 again for 4 more) and 70 (a block of 64, then 6 one at a
    # time): every path of the channel loop; a fused residual, a 5x5 stride-2 dilated
    # kernel
    b = GraphBuilder("dw_nhwc")
    x = b.input(44, 13, 11)
    y = b.relu(b.conv(x, 44, 3, padding=1, name="y"))
    z = b.conv(b.act(b.conv(y, 44, 3, padding=1, groups=44, name="d"), "relu6"), 44, 3,
               padding=1, name="z")
    u = b.relu(b.conv(z, 44, 3, padding=1))
    v = b.add([b.conv(u, 44, 3, padding=1, groups=44, name="v"), z])
    b.output(b.conv(v, 44, 5, stride=2, padding=4, dilation=2, groups=44), name="strided")
    r = b.conv(x, 70, 1)
    b.output(b.act(b.conv(r, 70, 3, padding=(1, 0), groups=70), "silu"), name="wide")
    g = b.build()
    ex = nb.compile(g, lower(g).state_dict())
    assert list(ex.strategies(1).values()).count("depthwise_nhwc") == 4
    assert set(ex.nhwc) == {"y", "d", "z", "conv", "v"}  # "v": the add, fused
    assert_agree(g, batch=batch, threads=threads)


def test_wrong_input_shape_or_an_empty_batch_names_the_graph():
    g = _small("lenet5")
    run = nb.compile(g, lower(g).state_dict())
    with pytest.raises(NasgraphError, match="lenet5"):
        run(np.zeros((1, 3, 5, 5), np.float32))
    shape = (0, *g.inputs[0].type.shape)
    with pytest.raises(NasgraphError, match=r"'lenet5' got a batch of no samples"):
        run(np.zeros(shape, np.float32))


def _weighted():
    b = GraphBuilder("weighted")
    y = b.bn(b.conv(b.input(3, 8, 8), 6, 3, padding=1, bias=False, name="conv"), name="bn")
    b.output(b.linear(b.flatten(b.gap(b.relu(y))), 4, name="fc"))
    return b.build()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda sd: sd.pop("conv.weight"), "weight 'conv.weight' of node 'conv' (conv2d: conv "
     "3x3, 6) is missing from the state dict (expected 6x3x3x3)"),
    (lambda sd: sd.update({"conv.weight": torch.zeros(6, 3, 5, 5)}), "weight 'conv.weight' "
     "of node 'conv' (conv2d: conv 3x3, 6) has shape 6x3x5x5, expected 6x3x3x3"),
    (lambda sd: sd.update({"bn.running_var": torch.ones(5)}), "weight 'bn.running_var' of "
     "node 'bn' (batchnorm2d: bn) has shape 5, expected 6"),
    (lambda sd: sd.update({"fc.weight": sd["fc.weight"].T}), "weight 'fc.weight' of node "
     "'fc' (linear: linear 4) has shape 6x4, expected 4x6"),
    (lambda sd: sd.update({"conv.weight": torch.ones(6, 3, 3, 3, dtype=torch.int64)}),
     "weight 'conv.weight' of node 'conv' (conv2d: conv 3x3, 6) has dtype int64 (shape "
     "6x3x3x3), expected a floating-point dtype"),
    (lambda sd: sd.update({"conv.bias": torch.zeros(6)}), "state dict key 'conv.bias' is no "
     "weight of node 'conv' (conv2d: conv 3x3, 6), which has conv.weight"),
    (lambda sd: sd.update({"head.weight": torch.zeros(4, 6)}), "state dict key "
     "'head.weight' names no node of graph 'weighted'"),
])
def test_state_dict_is_checked_against_the_graph(edit, message):
    g = _weighted()
    state = dict(lower(g).state_dict())
    edit(state)
    with pytest.raises(GraphError) as e:
        nb.compile(g, state)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_state_dicts_of_other_float_dtypes_are_cast():
    # float64 and bfloat16 (no numpy dtype) weights run as float32; BN's
    # num_batches_tracked may be left out; numpy arrays do as well as tensors
    g = _weighted()
    m = randomized(g)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    state = {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    want = nb.compile(g, state)(x)
    assert np.array_equal(nb.compile(g, {k: v.double() for k, v in state.items()})(x), want)
    assert np.array_equal(nb.compile(g, {k: v.numpy() for k, v in state.items()})(x), want)
    rounded = {k: v.to(torch.bfloat16) for k, v in state.items()}
    assert np.array_equal(nb.compile(g, rounded)(x),
                          nb.compile(g, {k: v.float() for k, v in rounded.items()})(x))


def assert_weight_shapes_are_the_lowerings(graph):
    # derived from the op specs, without torch: the keys and shapes of the lowering's
    # modules (BN's num_batches_tracked aside: a counter, no weight)
    want = {k: tuple(v.shape) for k, v in lower(graph).state_dict().items()
            if not k.endswith(".num_batches_tracked")}
    assert {k: shape for k, (_, shape) in weight_shapes(graph).items()} == want


@pytest.mark.parametrize("name", zoo.names())
def test_weight_shapes_of_the_zoo_are_the_torch_lowerings(name):
    assert_weight_shapes_are_the_lowerings(_small(name))


@settings(max_examples=30, deadline=None)
@given(g=graphs())
def test_weight_shapes_of_random_dags_are_the_torch_lowerings(g):
    assert_weight_shapes_are_the_lowerings(g)


def test_cli_runs_the_numba_backend():
    from tests.cli.test_commands import nasgraph_cli

    r = nasgraph_cli("run", "lenet5", "--backend", "numba", "--batch", "3", "--threads", "1",
                     "--bench", "--iters", "2")
    assert r.returncode == 0, r.stderr
    assert "numba on cpu, batch 3 -> 3x10" in r.stdout and "images/s" in r.stdout


def test_profile_times_every_kernel_node():
    from tests.cli.test_commands import nasgraph_cli

    g = _small("resnet18")
    ex = nb.compile(g, lower(g).state_dict())
    times = ex.profile(np.zeros((2, *g.inputs[0].type.shape), np.float32), repeats=2)
    kernels = [n.id for n in ex.graph if not n.op.is_alias and n.kind != "input"]
    assert [t.node for t in times] == kernels  # in execution order, views left out
    assert [t.kind for t in times] == [ex.graph[i].kind for i in kernels]
    assert {t.strategy for t in times if "conv" in t.kind} == {"winograd", "tiled", "gemm"}
    r = nasgraph_cli("run", "lenet5", "--backend", "numba", "--profile", "--iters", "2")
    assert r.returncode == 0, r.stderr
    assert "c1" in r.stdout and "tiled" in r.stdout and "share" in r.stdout
    r = nasgraph_cli("run", "lenet5", "--profile")
    assert r.returncode == 2 and "--backend numba" in r.stderr


def test_tiled_conv_edges_agree():
    # odd output channels (a partial channel block), pixel counts not a multiple of the
    # tile, stride, dilation along H, and the fused residual + relu
    b = GraphBuilder("tiled")
    x = b.input(9, 7, 5)
    y = b.relu(b.conv(x, 21, 3, padding=1, bias=False))
    z = b.conv(y, 21, 3, padding=(2, 1), dilation=(2, 1))
    y = b.relu(b.add([z, y]))
    y = b.conv(y, 17, (3, 2), stride=2, padding=(1, 0))
    b.output(y)
    g = b.build()
    ex = nb.compile(g, lower(g).state_dict())
    assert set(ex.strategies(1).values()) == {"tiled"}
    assert_agree(g, batch=3)


def test_conv_strategies():
    g = _small("resnet18")
    ex = nb.compile(g, lower(g).state_dict())
    kinds = ex.strategies(1)
    assert kinds["conv1"] == "tiled"  # the 3-channel stem too
    assert kinds["layer1/0/conv1"] == "winograd"  # 3x3 stride 1, 64 channels at 8x8
    assert kinds["layer2/0/conv1"] == "tiled"  # stride 2
    assert kinds["layer2/0/conv2"] == "tiled"  # 128 channels at 4x4: one 4x4 tile
    assert kinds["layer2/0/downsample/0"] == "tiled"  # 1x1 stride 2: no gather for gemm
    direct = nb.compile(g, lower(g).state_dict(), winograd=False)
    assert direct.strategies(1)["layer1/0/conv1"] == "tiled"
    b = GraphBuilder("pointwise")
    b.output(b.conv(b.input(8, 6, 6), 16, 1))
    ex = nb.compile(b.build(), lower(b.build()).state_dict())
    assert ex.strategies(1)["conv"] == "gemm"  # 1x1 stride 1: the planes as they are
    b = GraphBuilder("projection")  # many inputs, few pixels: sgemm does these badly
    b.output(b.conv(b.input(256, 7, 7), 32, 1))
    ex = nb.compile(b.build(), lower(b.build()).state_dict())
    assert ex.strategies(1)["conv"] == "tiled"


def test_nhwc_follows_from_the_conv_before():
    # a 1x1 or depthwise conv reading a conv that runs in NHWC runs in NHWC too; one
    # reading the input keeps its own choice (gemm; NCHW depthwise on a 32x32 output)
    b = GraphBuilder("follow")
    x = b.input(16, 32, 32)
    y = b.relu(b.conv(x, 16, 3, stride=1, padding=1, name="stem"))
    y = b.relu(b.conv(y, 16, 3, padding=1, groups=16, name="dw_after"))
    y = b.conv(y, 24, 1, name="pw_after")
    b.output(b.add([y, b.conv(b.relu(b.conv(x, 16, 3, padding=1, groups=16, name="dw_own")),
                               24, 1, name="pw_own")]))
    g = b.build()
    m = randomized(g)
    ex = nb.compile(g, m.state_dict())
    assert ex.strategies(1) == {"stem": "winograd", "dw_after": "depthwise_nhwc",
                                "pw_after": "tiled", "dw_own": "depthwise", "pw_own": "gemm"}
    assert {"stem", "dw_after"} <= set(ex.nhwc)
    assert_agree(g, batch=2)


def test_winograd_transforms_compute_the_correlation():
    # F(4x4, 3x3) in float64 with the matrices the kernels write out: A^T [(G g G^T) *
    # (B^T d B)] A is the 4x4 correlation of the 6x6 window d with the 3x3 kernel g
    from nasgraph.backends.numba._winograd import AT, BT, G

    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((6, 6)), rng.standard_normal((3, 3))
    want = [[(d[i:i + 3, j:j + 3] * g).sum() for j in range(4)] for i in range(4)]
    got = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_winograd_weights_are_the_kernel_transform():
    # pack_weights: U = G g G^T in `_tiles`' layout (36 x channel blocks x Cin x V), the
    # output channels zero-padded; with flip, of the kernel rotated and its channel axes
    # swapped (a stride-1 conv's input gradient)
    from nasgraph.backends.numba._winograd import G, V, pack_weights

    w = np.random.default_rng(0).standard_normal((20, 7, 3, 3)).astype(np.float32)
    u = np.einsum("ai,ocij,bj->abco", G, w.astype(np.float64), G).reshape(36, 7, 20)
    want = np.zeros((36, 7, 2 * V))
    want[..., :20] = u
    want = want.reshape(36, 7, 2, V).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(pack_weights(w), want, rtol=1e-6, atol=1e-7)
    rotated = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    assert np.array_equal(pack_weights(rotated, flip=True), pack_weights(w))


@pytest.mark.parametrize("fn", [None, "relu", "relu6", "silu"])
@pytest.mark.parametrize(("batch", "threads"), [(1, 2), (3, 1)])
def test_winograd_convs_agree_with_torch(fn, batch, threads):
    # sizes not a multiple of the 4x4 tile; residuals stored padded NHWC (y) and NCHW (r,
    # made by a 1x1 gemm conv); outputs written padded NHWC for the next conv, NCHW (for
    # a gemm conv and graph outputs) and into a concat; an unpadded conv reading the
    # buffer its padded sibling reads (x)
    def act(t):
        return t if fn is None else b.act(t, fn)

    b = GraphBuilder("winograd")
    x = b.input(16, 21, 17)
    y = b.relu(b.conv(x, 20, 3, padding=1))
    h = b.relu(b.conv(y, 20, 3, padding=1))
    y = act(b.add([b.conv(h, 20, 3, padding=1, bias=False), y]))  # NHWC + NHWC -> NHWC
    h = b.relu(b.conv(y, 20, 3, padding=1))
    y = act(b.add([b.conv(h, 20, 3, padding=1), y]))  # -> NCHW, for tanh and concat
    r = b.conv(b.act(y, "tanh"), 20, 1)  # gemm: it reads no NHWC conv
    y = act(b.add([b.conv(y, 20, 3, padding=1), r]))  # NCHW residual
    b.output(b.concat([b.conv(y, 17, 3, padding=1), y, r]))
    b.output(b.conv(x, 16, 3, padding=0), name="valid")
    g = b.build()
    ex = nb.compile(g, lower(g).state_dict())
    kinds = list(ex.strategies(1).values())
    assert kinds.count("winograd") == 8 and kinds.count("gemm") == 1
    assert ex.nhwc == {n: 1 for n in ("input", "conv", "conv_1", "conv_2", "conv_3")}
    assert_agree(g, batch=batch, threads=threads)


@pytest.mark.parametrize(("batch", "threads"), [(1, 1), (1, 2), (2, 2)])
def test_winograd_few_tiles_split_output_channels(batch, threads):
    # 8x8 outputs are four tiles a sample: with two threads the jobs split the output
    # channel blocks (72 channels: five blocks, the last partial)
    b = GraphBuilder("few_tiles")
    y = b.relu(b.conv(b.input(64, 8, 8), 72, 3, padding=1))
    y = b.relu(b.add([b.conv(y, 72, 3, padding=1), y]))
    b.output(b.conv(y, 72, 3, padding=1))
    g = b.build()
    ex = nb.compile(g, lower(g).state_dict())
    assert set(ex.strategies(1).values()) == {"winograd"}
    assert_agree(g, batch=batch, threads=threads)


def test_winograd_is_chosen_by_batch_size():
    # one 4x4 tile a sample: 32 -> 32 runs tiled at batch 1 and Winograd from batch 8 on
    # (32 x 8 = WINOGRAD_MIN_WORK tiles x channels a call); 16 -> 16 stays tiled
    b = GraphBuilder("by_batch")
    y = b.relu(b.conv(b.input(16, 4, 4), 16, 3, padding=1, name="narrow"))
    y = b.relu(b.conv(y, 32, 3, padding=1, name="wide"))
    y = b.relu(b.add([b.conv(y, 32, 3, padding=1, name="wider"), y]))
    b.output(b.gap(y))
    g = b.build()
    m = randomized(g, 0)
    ex = nb.compile(g, m.state_dict(), threads=2)
    assert ex.strategies(1) == {"narrow": "tiled", "wide": "tiled", "wider": "tiled"}
    assert ex.strategies(7) == ex.strategies(1)
    assert ex.strategies(8) == {"narrow": "tiled", "wide": "tiled", "wider": "winograd"}
    x = np.random.default_rng(0).standard_normal((9, 16, 4, 4)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    scale = max(1.0, float(np.abs(want).max()))
    for batch in (1, 9, 1):  # one executor, both packings, each bound in turn
        assert float(np.abs(ex(x[:batch]) - want[:batch]).max()) <= 1e-4 * scale
    assert [t.strategy for t in ex.profile(x, 1) if t.strategy] == ["tiled", "tiled", "winograd"]


@pytest.mark.parametrize("batch", [1, 3])
def test_chained_convs_agree_with_one_region_per_conv(batch):
    # at two threads the convs on padded NHWC (tiled stem, Winograd, strided tiled, 1x1
    # shortcut, NCHW output) run as one chain: one parallel region, the same jobs
    b = GraphBuilder("chain")
    y = b.relu(b.conv(b.input(3, 16, 16), 16, 3, padding=1))
    y = b.relu(b.add([b.conv(b.relu(b.conv(y, 16, 3, padding=1)), 16, 3, padding=1), y]))
    z = b.conv(b.relu(b.conv(y, 32, 3, stride=2, padding=1)), 32, 3, padding=1)
    y = b.relu(b.add([z, b.conv(y, 32, 1, stride=2)]))
    b.output(b.linear(b.flatten(b.gap(b.relu(b.conv(y, 24, 3, padding=1)))), 5))
    g = b.build()
    m = randomized(g)
    x = np.random.default_rng(0).standard_normal((batch, 3, 16, 16)).astype(np.float32)
    ex = nb.compile(g, m.state_dict(), threads=2)
    got = ex(x)
    chained = [n for n in ex._bound[(batch, True)].step_nodes if "+" in n]
    assert len(chained) == 1 and chained[0].count("+") == 6, chained
    unchained = ex._prepare(x, chains=False)[0]
    for step in unchained.steps:
        step(2)
    np.testing.assert_array_equal(got, unchained.outputs[0])  # the same arithmetic
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    # where numba runs fewer threads than the chain was asked for (here one, with both
    # shares), the threads take each other's jobs: no wait for a share nobody runs
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    bound = ex._bound[(batch, True)]
    try:
        bound.load(x)
        bound.outputs[0][...] = 0
        for step in bound.steps:
            step(2)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(bound.outputs[0], got)


def test_tiled_convs_hand_each_other_padded_nhwc():
    # ResNet blocks: a block's output is read by the next block's conv1 (as its input,
    # pad 1) and conv2 (as its residual), all tiled: stored padded NHWC. A stage's input
    # is also read by the 1x1 stride-2 shortcut (tiled, pad 0), which starts one row and
    # column into the buffer. The tensor the pooling head reads stays NCHW
    g = _small("resnet18")
    ex = nb.compile(g, lower(g).state_dict())
    assert ex.nhwc["layer1/0/conv1"] == ex.nhwc["layer1/0/conv2"] == 1
    assert ex.nhwc["layer1/1/conv2"] == 1  # read by layer2/0/conv1 and downsample/0
    assert "layer4/1/conv2" not in ex.nhwc  # read by the pooling head
    assert ex.plan.peak_bytes > ex.graph.nodes[0].type.nbytes
    b = GraphBuilder("pads")
    y = b.relu(b.conv(b.input(8, 9, 9), 16, 3, padding=1))
    b.output(b.concat([b.conv(y, 8, 3, padding=1), b.conv(y, 8, 5, padding=2)]))
    g = b.build()
    ex = nb.compile(g, lower(g).state_dict())
    # two paddings wanted: padded by the larger, the pad-1 reader starts one row and
    # column in; the concat parts are written NCHW
    assert ex.nhwc == {"input": 1, "conv": 2}
    assert_agree(g, batch=2)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, pad", [((2, 1, 5, 7), (1, 2)), ((2, 3, 9, 9), (1, 1)),
                                        ((2, 7, 5, 9), (1, 0)), ((2, 24, 9, 9), (0, 1)),
                                        ((2, 16, 32, 32), (1, 1)), ((1, 20, 32, 64), (2, 0)),
                                        ((2, 7, 14, 13), (1, 1)), ((2, 4, 9, 11), (0, 1)),
                                        ((2, 12, 7, 7), (1, 1)), ((2, 9, 5, 19), (1, 2))])
def test_padded_nhwc_copy_is_numpys_transpose_and_pad(shape, pad, threads):
    # each of the copy's ways: one channel; blocks of 8 columns (fewer than 16 channels
    # whose zeros past a pixel would not fit in the right padding); a pixel's channels as
    # one run; blocks of 16 (16+ channels on planes of 4 KB multiples, whose reads a
    # plane apart share an L1 set); 8 and 16 pixels transposed in registers (4-8 and 9-15
    # channels), rows of whole blocks and partial ones
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    n, c, h, w = shape
    xp = np.full((n, h + 2 * pad[0], w + 2 * pad[1], c), np.nan, np.float32)
    (tiled_k.to_padded_nhwc_1 if threads == 1 else tiled_k.to_padded_nhwc)(x, xp, *pad)
    want = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (pad[0],) * 2, (pad[1],) * 2, (0, 0)))
    np.testing.assert_array_equal(xp, want)


@pytest.mark.parametrize("fn", ["relu", "sigmoid"])
def test_nhwc_chains_with_partial_channel_blocks_agree(fn):
    # 21 channels: a full block of 16 and a partial one. Residual blocks of two convs
    # (one dilated along H) keep their tensors padded NHWC, read as input (stride 1 and
    # 2) and as residual, written NHWC and NCHW, with a fused activation the epilogue
    # inlines and one it calls
    b = GraphBuilder("nhwc_edges")
    y = b.act(b.conv(b.input(5, 11, 9), 21, 3, padding=1), fn)
    for dilation in (2, 1):
        z = b.act(b.conv(y, 21, 3, padding=1), fn)
        z = b.conv(z, 21, 3, padding=(dilation, 1), dilation=(dilation, 1))
        y = b.act(b.add([z, y]), fn)
    b.output(b.conv(y, 13, 3, stride=2, padding=1))
    g = b.build()
    ex = nb.compile(g, lower(g).state_dict())
    assert {n.kind for n in ex.graph} >= {"fused_conv2d"}
    assert len(ex.nhwc) == 5 and set(ex.nhwc.values()) == {1}, ex.nhwc  # input included
    assert_agree(g, batch=2)


def test_nhwc_storage_counts_in_the_memory_plan():
    b = GraphBuilder("chain")
    x = b.input(4, 10, 10)
    y = b.relu(b.conv(x, 16, 3, padding=1))
    b.output(b.conv(y, 16, 3, padding=1))
    g = b.build()
    ex = nb.compile(g, lower(g).state_dict())
    # a call copies the input in padded NHWC, for the first conv, whose output (relu
    # fused in) feeds the second
    assert ex.nhwc == {"input": 1, "conv": 1}
    # the peak: while the second conv runs, its padded 16 x 12 x 12 input and its
    # 16 x 10 x 10 output (NCHW, a graph output)
    assert ex.plan.peak_bytes == 4 * (16 * 144 + 16 * 100)
    assert_agree(g, batch=3)


def test_generated_tiled_kernel_is_up_to_date():
    from nasgraph.backends.numba import _tiled_gen

    assert _tiled_gen.TARGET.read_text() == _tiled_gen.render()


def test_compile_leaves_blas_single_threaded():
    # numba's pool is the only one: a BLAS pool inside its regions collapses throughput
    from threadpoolctl import threadpool_info

    nb.compile(_small("lenet5"), lower(_small("lenet5")).state_dict())
    assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")


def test_no_cached_kernel_has_an_unhashable_default():
    # numba types an omitted argument by its default, and one that cannot be hashed (an
    # array, a tuple holding one) by its id(): a key that differs in every process, so
    # numba's on-disk cache never holds that call, and each process compiles it again
    import importlib
    import inspect
    import pkgutil

    from numba.core.dispatcher import Dispatcher

    def unhashable(value):
        try:
            hash(value)
        except TypeError:
            return True
        return False

    kernels = 0
    for info in pkgutil.iter_modules(nb.__path__):
        module = importlib.import_module(f"{nb.__name__}.{info.name}")
        for name, fn in vars(module).items():
            if isinstance(fn, Dispatcher) and fn.py_func.__module__ == module.__name__:
                kernels += 1
                for p in inspect.signature(fn.py_func).parameters.values():
                    assert not unhashable(p.default), f"{info.name}.{name}({p.name}=...)"
    assert kernels > 100  # the walk found the kernels


@pytest.mark.parametrize(("c", "mult", "hw", "kernel", "stride", "pad", "dil"), [
    (3, 1, (9, 13), (3, 3), (1, 1), (1, 1), (1, 1)),
    (4, 2, (11, 7), (3, 5), (2, 1), (0, 2), (1, 1)),
    (5, 1, (10, 10), (3, 3), (2, 2), (1, 1), (1, 1)),
    (2, 3, (13, 12), (5, 3), (3, 2), (2, 4), (2, 3)),
    (6, 1, (7, 7), (1, 7), (1, 1), (0, 3), (1, 1)),
    (3, 1, (8, 6), (3, 3), (1, 3), (3, 0), (2, 1)),
])
@pytest.mark.parametrize("threads", [1, 2])
def test_depthwise_kernel_agrees_with_torch(c, mult, hw, kernel, stride, pad, dil, threads):
    # the kernel directly, against torch's conv2d: channel multipliers, strides past the
    # kernel, padding wider than the kernel, dilation, a fused residual and relu6
    from nasgraph.backends.numba import _conv

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, c, *hw)).astype(np.float32)
    w = rng.standard_normal((c * mult, 1, *kernel)).astype(np.float32)
    bias = rng.standard_normal(c * mult).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                      torch.from_numpy(bias), stride, pad, dil, c).numpy()
    res = rng.standard_normal(want.shape).astype(np.float32)
    out = np.full((2, c * mult + 3, *want.shape[2:]), np.nan, np.float32)
    _conv.conv2d_depthwise(x, w[:, 0].copy(), bias, res, out, 2, *stride, *pad, *dil, 2, 1, 1,
                           threads)
    np.testing.assert_allclose(out[:, 2:-1], np.clip(want + res, 0, 6), atol=1e-5)
    assert np.isnan(out[:, :2]).all() and np.isnan(out[:, -1]).all()


@pytest.mark.parametrize(("groups", "stride"), [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize(("batch", "threads"), [(3, 2), (5, 1)])
def test_gemm_convs_agree_with_torch(groups, stride, batch, threads):
    # 1x1 convs multiply the NCHW planes without im2col at stride 1; with threads to
    # spare, small outputs of several samples share one GEMM (im2col side by side)
    b = GraphBuilder("gemm")
    x = b.input(6, 5, 7)
    y = b.conv(x, 8, 1, stride=stride, groups=groups)
    z = b.conv(x, 8, (3, 1), stride=stride, padding=(1, 0), groups=2, bias=False)
    b.output(b.relu(b.add([y, z])))
    assert_agree(b.build(), batch=batch, threads=threads)


@pytest.mark.parametrize(("cin", "kernel", "stride", "pad"), [(1, 3, 1, 1), (3, 7, 2, 3)])
def test_few_channel_stems_run_tiled_and_agree(cin, kernel, stride, pad):
    b = GraphBuilder("stem")
    b.output(b.relu(b.conv(b.input(cin, 13, 11), 20, kernel, stride=stride, padding=pad)))
    g = b.build()
    ex = nb.compile(g, lower(g).state_dict())
    assert list(ex.strategies(1).values()) == ["tiled"]
    assert_agree(g, batch=3)


@pytest.mark.parametrize("fn", ["relu", "relu6", "sigmoid", "tanh", "silu", "hardswish", "gelu"])
def test_fused_activations_agree_in_every_conv_kernel(fn):
    # each conv kernel applies the fused activation in its own epilogue: tiled (with and
    # without residual), depthwise in NHWC (after the tiled conv) and NCHW (a channel
    # multiplier of 2), gemm (1x1, reading the input)
    b = GraphBuilder("acts")
    x = b.input(8, 7, 9)
    y = b.act(b.conv(x, 8, 3, padding=1), fn)
    y = b.act(b.add([b.conv(y, 8, 3, padding=1), x]), fn)
    b.output(b.act(b.conv(y, 8, 3, padding=1, groups=8), fn))
    b.output(b.act(b.conv(x, 5, 1), fn), name="pointwise")
    b.output(b.act(b.conv(x, 16, 3, padding=1, groups=8), fn), name="multiplier")
    g = b.build()
    ex = nb.compile(g, lower(g).state_dict())
    assert sorted(ex.strategies(1).values()) == \
        ["depthwise", "depthwise_nhwc", "gemm", "tiled", "tiled"]
    assert all(n.kind == "fused_conv2d" for n in ex.graph if "conv" in n.kind)
    assert_agree(g, batch=2)


def test_small_calls_run_on_one_thread():
    # the digits-sized net's largest conv does 16*16*9*8*8 = 147k multiply-adds a sample:
    # at batch 1 a second thread costs more than it saves, at batch 64 it pays
    b = GraphBuilder("small")
    y = b.relu(b.conv(b.input(16, 8, 8), 16, 3, padding=1))
    b.output(b.linear(b.flatten(b.gap(y)), 10))
    g = b.build()
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    ex = nb.compile(g, lower(g).state_dict(), threads=threads)
    assert ex.threads_for(1) == 1
    assert ex.threads_for(64) == threads
    before = numba.get_num_threads()
    free = nb.compile(g, lower(g).state_dict())  # threads=None: numba's count, left as found
    free(np.zeros((1, 16, 8, 8), np.float32))
    assert numba.get_num_threads() == before
    assert_agree(g, batch=1)


def test_the_same_seed_gives_the_same_outputs_on_both_backends():
    # init_state is the weights of both: no state dict is passed between them
    g = zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    got = nb.compile(g, init_state(g, 3))(x)
    with torch.no_grad():
        want = lower(g, seed=3).eval()(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.array_equal(nb.compile(g)(x), nb.compile(g, init_state(g, 0))(x))


NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError from here on
import numpy as np
import nasgraph
from nasgraph.backends import numba as nb
g = nasgraph.zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))
y = nb.compile(g)(np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32))
assert y.shape == (2, 10) and np.isfinite(y).all() and y.std() > 0, y
print("ran without torch")
"""


def test_numba_runs_where_torch_cannot_be_imported():
    r = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ran without torch"
