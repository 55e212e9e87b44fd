"""from_torch against the modules it imports: torchvision's classifiers and small modules
using every supported ATen op compute the same outputs on both backends, with the same
parameters and multiply-accumulates, and whatever the IR lacks is refused in one line."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import nasgraph
from nasgraph.errors import GraphError
from nasgraph.importers import from_torch
from nasgraph.ir import ops
from tests.importers import (
    assert_close,
    example_input,
    lowered,
    model_params,
    randomize_batch_norms,
    torchvision_model,
)


@functools.cache
def imported(name: str) -> tuple[nn.Module, nasgraph.Graph, dict[str, np.ndarray]]:
    """(module, graph, state) of a torchvision model, imported once per test session."""
    model = torchvision_model(name)
    graph, state = from_torch(model, example_input(name))
    return model, graph, state


def _reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.parametrize("name", model_params())
def test_lowered_graph_computes_the_module(name):
    model, graph, state = imported(name)
    x = example_input(name)
    with torch.no_grad():
        out = lowered(graph, state)(x).numpy()
    assert_close(out, _reference(model, x))


@pytest.mark.parametrize("name", model_params())
def test_numba_computes_the_module(name):
    from nasgraph.backends.numba import compile

    model, graph, state = imported(name)
    x = example_input(name)
    assert_close(compile(graph, state)(x.numpy()), _reference(model, x))


@pytest.mark.parametrize("name", model_params())
def test_params_and_macs_equal_the_modules(name):
    model, graph, _ = imported(name)
    x = example_input(name, batch=1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    summary = nasgraph.summarize(graph)
    # ConvNeXt's layer scales are folded into the convs before them: not parameters here
    folded = sum(p.numel() for n, p in model.named_parameters() if n.endswith("layer_scale"))
    assert summary.params == sum(p.numel() for p in model.parameters()) - folded
    assert summary.macs == counter.get_total_flops() // 2


def test_node_ids_and_state_are_the_modules_own():
    model, graph, state = imported("resnet18")
    reference = model.state_dict()
    assert set(state) == set(reference)
    for key, value in state.items():
        np.testing.assert_array_equal(value, reference[key].numpy())
    assert state["bn1.num_batches_tracked"].dtype == np.int64
    assert {"layer1", "layer1/0", "layer2/0/downsample"} <= set(graph.scopes())
    assert isinstance(graph["layer2/0/conv1"].op, ops.Conv2d)
    assert isinstance(graph["layer2/0/downsample/0"].op, ops.Conv2d)
    # a module called three times gets three numbered nodes; the block's add is in its scope
    assert {"layer1/0/relu", "layer1/0/relu_1", "layer1/0/add"} <= {n.id for n in graph}


class Gated(nn.Module):
    """Every supported elementwise and resizing op, and two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.same = nn.Conv2d(3, 8, 3, padding="same", dilation=2, bias=False)
        self.bn = nn.BatchNorm2d(8, affine=False)
        self.gate = nn.Conv2d(8, 8, 1)
        self.wide = nn.Conv2d(8, 4, (1, 3), stride=(1, 2), padding=(0, 1))
        self.fc = nn.Linear(6 * 2 * 2 + 8 + 3, 5, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = F.relu6(self.bn(self.same(x)))  # N x 8 x 12 x 12
        y = y * F.hardsigmoid(self.gate(F.adaptive_avg_pool2d(y, 1)))
        y = torch.clamp(y, 0, 6) - y / 3 + 0.5 * F.gelu(y)
        up = F.interpolate(y, scale_factor=2) + F.interpolate(
            y, size=(24, 24), mode="bilinear", align_corners=True)
        z = F.avg_pool2d(torch.tanh(up), 3, 2, 1, ceil_mode=True, count_include_pad=False)
        z = F.max_pool2d(F.silu(z), 2, ceil_mode=True)  # N x 8 x 6 x 6
        z = F.pad(torch.sigmoid(self.wide(z)), (0, 0, 0, 0, 1, 1))  # N x 6 x 6 x 3
        z = F.adaptive_avg_pool2d(z, (2, 2)) * 1.0
        v = torch.cat([z.reshape(z.shape[0], -1), y.mean([2, 3]), x.mean((-1, -2))], 1)
        return self.fc(F.dropout(v, 0.3, self.training)), up.mean([2, 3], keepdim=True)


def test_elementwise_resizing_and_reshaping_ops_agree_on_both_backends():
    from nasgraph.backends.numba import compile

    model = Gated().eval()
    randomize_batch_norms(model)
    x = torch.randn(2, 3, 12, 12)
    graph, state = from_torch(model, x)
    with torch.no_grad():
        refs = [r.numpy() for r in model(x)]
        outs = [o.numpy() for o in lowered(graph, state)(x)]
    kinds = {n.kind for n in graph}
    assert {"upsample", "channel_pad", "adaptive_avgpool2d", "mul", "add"} <= kinds
    for out, numba_out, ref in zip(outs, compile(graph, state)(x.numpy()), refs, strict=True):
        assert_close(out, ref)
        assert_close(numba_out, ref)
    # BatchNorm2d(affine=False) becomes an IR BN with scale 1 and shift 0: 16 parameters
    assert nasgraph.summarize(graph).params == sum(p.numel() for p in model.parameters()) + 16


class Shifted(nn.Module):
    """Numbers added to conv outputs: folded into the convs' biases."""

    def __init__(self, reuse: bool = False) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
        self.reuse = reuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        z = self.conv2(x) - 0.25
        return torch.relu(1.5 + y) * (y if self.reuse else z)


def test_a_number_added_to_a_conv_is_folded_into_its_bias():
    model = Shifted()
    x = torch.randn(2, 3, 8, 8)
    graph, state = from_torch(model, x)
    assert [n.kind for n in graph].count("add") == 0
    np.testing.assert_allclose(state["conv1.bias"], model.conv1.bias.detach() + 1.5)
    with torch.no_grad():
        assert_close(lowered(graph, state)(x).numpy(), model(x).numpy())


def test_a_number_added_to_a_conv_used_elsewhere_is_refused():
    with pytest.raises(GraphError, match="only right after a conv or linear layer"):
        from_torch(Shifted(reuse=True), torch.randn(2, 3, 8, 8))


def test_a_channel_slice_imports_and_a_spatial_one_is_refused_naming_it():
    class Sliced(nn.Module):
        def __init__(self, spatial: bool) -> None:
            super().__init__()
            self.spatial = spatial

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 1:] if self.spatial else x[:, 1:3]

    x = torch.randn(2, 4, 4, 4)
    graph, state = from_torch(Sliced(False), x)
    assert [n.op for n in graph if n.kind == "channel_slice"] == [
        ops.ChannelSlice(start=1, stop=3)]
    assert_close(lowered(graph, state)(x).numpy(), x[:, 1:3].numpy())
    with pytest.raises(GraphError, match=r"cannot import aten\.slice\.Tensor in the top"):
        from_torch(Sliced(True), x)


# --------------------------------------------------------------------------- refusals


class ChannelNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.blocks = nn.Sequential(nn.LayerNorm([4, 6, 6]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv(x))


class Sorted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(self.conv(x), dim=1).values


@pytest.mark.parametrize(("module", "op", "where"), [
    (ChannelNorm(), "aten.layer_norm", "module 'blocks.0' (LayerNorm)"),
    (Sorted(), "aten.sort", "the top module"),
])
def test_an_op_the_ir_lacks_is_refused_in_one_line(module, op, where):
    with pytest.raises(GraphError) as error:
        from_torch(module, torch.randn(2, 3, 8, 8))
    message = str(error.value)
    assert "\n" not in message
    assert op in message and where in message
    assert "supported ATen ops: " in message and "conv2d" in message


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.relu() if y.sum() > 0 else y.sigmoid()  # depends on the values


def test_data_dependent_control_flow_is_refused_in_one_line():
    with pytest.raises(GraphError, match="torch.export cannot capture Branchy") as error:
        from_torch(Branchy(), torch.randn(2, 3, 8, 8))
    assert "\n" not in str(error.value)


def test_training_mode_batch_norm_is_imported_as_eval():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    randomize_batch_norms(model)
    x = torch.randn(2, 3, 8, 8)
    graph, state = from_torch(model, x)  # from_torch puts the module in eval mode
    with torch.no_grad():
        assert_close(lowered(graph, state)(x).numpy(), model(x).numpy())


# Torchvision classifiers the IR cannot express, and the op that stops each (the message
# names it and the module). The other classifiers at 64 x 64 or less import: see the list
# in tests/importers/__init__.py.
UNSUPPORTED = {
    # attention over shifted windows: the window partition pads a channels-last view
    "swin_t": ("aten.pad", "module 'features.1.0.attn' (ShiftedWindowAttention)"),
    # patches as a sequence: N x 768 x 7 x 7 viewed as N x 768 x 49
    "vit_b_32": ("aten.view", "the top module"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", UNSUPPORTED)
def test_torchvision_models_the_ir_lacks_ops_for_are_refused(name):
    op, where = UNSUPPORTED[name]
    with pytest.raises(GraphError) as error:
        from_torch(torchvision_model(name), torch.randn(1, 3, 224, 224))
    assert op in str(error.value) and where in str(error.value)
