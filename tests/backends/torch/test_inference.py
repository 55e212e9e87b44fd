"""Inference options keep the function and the state dict keys: BN folding, in-place ops,
channels_last, autocast, torch.compile; on CPU here and, where present, on CUDA (same
equalities)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from benchmarks.torch_traffic import traffic
from nasgraph import zoo
from nasgraph.backends.torch import (
    Autocast,
    FusedConvReLU,
    fold_and_fuse,
    import_torchvision_weights,
    inplace_ops,
    lower,
    prepare,
)
from nasgraph.errors import NasgraphError
from tests.references import reference_model, with_reference
from tests.strategies import graphs


def _randomize_bn_statistics(module: torch.nn.Module) -> None:
    """Non-trivial running statistics, so that folding has something to fold."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def _outputs_agree(want, got, bound: float) -> bool:
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    return all((a - b).abs().max().item() <= bound * max(1.0, a.abs().max().item())
               for a, b in zip(want, got, strict=True))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_folding_and_fusing_keep_random_dag_outputs(g):
    m = lower(g)
    _randomize_bn_statistics(m)
    m.eval()
    x = torch.randn(2, *g.inputs[0].type.shape)
    with torch.no_grad():
        assert _outputs_agree(m(x), fold_and_fuse(m)(x), 1e-4)


def test_folding_removes_the_batchnorms_after_convs():
    g = zoo.get("resnet18", input_shape=(3, 32, 32))
    m = lower(g).eval()
    folded = fold_and_fuse(m)
    assert not any(isinstance(s, torch.nn.BatchNorm2d) for s in folded.modules())
    assert "bn1" not in folded.code and "layer1.0.bn1" not in dict(folded.named_modules())
    assert any(isinstance(s, torch.nn.BatchNorm2d) for s in m.modules())  # a copy


def test_only_a_lowered_module_can_be_folded():
    with pytest.raises(NasgraphError, match=r"needs a module made by lower\(\)"):
        prepare(torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.ReLU())), fold_bn=True)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_inplace_ops_keep_random_dag_outputs(g):
    m = lower(g).eval()
    x = torch.randn(2, *g.inputs[0].type.shape)
    with torch.no_grad():
        want, got = m(x), inplace_ops(m)(x)
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)


def test_inplace_ops_leave_the_input_and_the_training_lowering_alone():
    g = zoo.get("resnet18", input_shape=(3, 32, 32))
    m = lower(g).eval()
    assert "torch.relu_(" not in m.code and ".add_(" not in m.code  # autograd needs them
    fast = inplace_ops(m)
    assert fast.code.count("torch.relu_(") == 17 and fast.code.count(".add_(") == 8
    x = torch.randn(2, 3, 32, 32)
    before = x.clone()
    with torch.no_grad():
        fast(x)
        prepare(m, fold_bn=True)(x)
    assert torch.equal(x, before)


def test_fusing_takes_every_relu_of_a_resnet_and_its_downsample_biases():
    """The IR's passes fuse what a cuDNN kernel can run: every conv -> (add ->) ReLU of a
    ResNet-50 becomes a `FusedConvReLU` (33 + 16, the counts the fused cuDNN calls of the
    CUDA test below assert), and the downsample convs, read by a residual add, lose their
    bias to the fused conv of the main path."""
    m = lower(zoo.get("resnet50", input_shape=(3, 32, 32)))
    _randomize_bn_statistics(m)
    m.eval()
    fused = fold_and_fuse(m)
    assert "relu" not in fused.code and " + " not in fused.code and "add_(" not in fused.code
    kinds = Counter(type(s) for s in fused.modules())
    assert kinds[FusedConvReLU] == 33 + 16 and kinds[torch.nn.Conv2d] == 4
    assert all(s.bias is None for s in fused.modules() if type(s) is torch.nn.Conv2d)
    modules = dict(fused.named_modules())
    assert type(modules["layer1.0.conv3"]) is FusedConvReLU  # the main path, its own name
    assert type(modules["layer1.0.downsample.0"]) is torch.nn.Conv2d
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _outputs_agree(m(x), fused(x), 1e-5)


def test_a_prepared_module_scripts_traces_and_exports():
    fast = prepare(lower(zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))).eval(),
                   fold_bn=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = fast(x)
        assert torch.equal(torch.jit.script(fast)(x), want)
        assert torch.equal(torch.jit.trace(fast, (x,))(x), want)
        assert torch.equal(torch.export.export(fast, (x,)).module()(x), want)


def test_prepared_resnet_in_bf16_moves_half_the_memory_of_torchvision():
    """The eager GPU cost at a large batch: passes over activations. Under bf16 autocast the
    prepared module keeps every activation bf16 and channels_last (no promotion, no layout
    copy), reads and writes at most half the bytes of torchvision's resnet18 as CUDA runs
    them (fused conv + bias + residual + ReLU: no pass for the bias, the add or the ReLU)
    and allocates no more new activations."""
    g = zoo.get("resnet18", input_shape=(3, 64, 64))
    theirs = reference_model("resnet18").eval()
    ours = lower(g)
    ours.load_state_dict(import_torchvision_weights(g, theirs))
    ours = prepare(ours.eval(), fold_bn=True, channels_last=True)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    want = traffic(theirs.to(memory_format=torch.channels_last), x)
    got = traffic(ours, x)
    assert want.not_bf16 == [] and want.not_channels_last == []
    assert got.not_bf16 == [] and got.not_channels_last == []
    assert got.bytes <= want.bytes and got.gpu_bytes <= want.gpu_bytes / 2
    assert got.allocated <= want.allocated


def test_channels_last_and_autocast_keep_state_dict_keys():
    g = zoo.get("resnet18", input_shape=(3, 32, 32))
    plain = lower(g)
    fast = lower(g, channels_last=True, autocast="bf16")
    assert isinstance(fast, Autocast)
    assert {k: v.shape for k, v in fast.state_dict().items()} == \
        {k: v.shape for k, v in plain.state_dict().items()}
    fast.load_state_dict(plain.state_dict())
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in plain.parameters())
    assert fast.get_submodule("conv1").weight.is_contiguous(memory_format=torch.channels_last)
    assert "layer1_0_conv1" in fast.code


def test_autocast_runs_in_bf16_close_to_fp32():
    g = zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))
    m = lower(g).eval()
    fast = prepare(m, fold_bn=True, channels_last=True, autocast="bf16")
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = m(x), fast(x)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want, rtol=0.1, atol=0.1 * want.abs().max().item())


def test_an_unknown_autocast_dtype_is_one_clear_error():
    with pytest.raises(NasgraphError, match="autocast dtype 'int8' is not one of bf16"):
        lower(zoo.get("lenet5"), autocast="int8")


@pytest.mark.slow
def test_torch_compile_matches_eager():
    g = zoo.get("lenet5")
    m = lower(g).eval()
    x = torch.randn(4, 1, 32, 32)
    compiled = torch.compile(prepare(m, fold_bn=True))
    with torch.no_grad():
        assert (compiled(x) - m(x)).abs().max().item() <= 1e-5


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("name", with_reference())
def test_cuda_imported_weights_reproduce_the_reference(name, exact_cuda):
    entry = zoo.entry(name)
    graph = zoo.get(name, input_shape=entry.min_input or entry.input_shape)
    reference = reference_model(name).to(exact_cuda)
    module = lower(graph)
    if entry.reference.startswith("timm"):
        from nasgraph.backends.torch import import_timm_weights as importer
    else:
        importer = import_torchvision_weights
    module.load_state_dict(importer(graph, reference))
    module = module.to(exact_cuda).eval()
    x = torch.randn(2, *graph.inputs[0].type.shape, device=exact_cuda)
    with torch.no_grad():
        want = reference(x)
        want = want["out"] if isinstance(want, dict) else want
        assert (module(x) - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
        folded = prepare(module, fold_bn=True, channels_last=True)
        got = folded(x.to(memory_format=torch.channels_last))
        assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_cuda_autocast_and_compile(dtype, exact_cuda):
    g = zoo.get("resnet18", num_classes=10, input_shape=(3, 64, 64))
    m = lower(g).to(exact_cuda).eval()
    x = torch.randn(4, 3, 64, 64, device=exact_cuda)
    fast = torch.compile(prepare(m, fold_bn=True, channels_last=True, autocast=dtype))
    with torch.no_grad():
        want, got = m(x), fast(x.to(memory_format=torch.channels_last))
    assert got.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert torch.allclose(got.float(), want, rtol=0.1, atol=0.1 * want.abs().max().item())


@pytest.mark.cuda
def test_cuda_fused_convs_run_cudnn_kernels_with_the_same_outputs(exact_cuda, monkeypatch):
    calls: Counter[str] = Counter()

    def counting(name: str):
        real = getattr(torch, name)

        def counted(*args):
            calls[name] += 1
            return real(*args)
        return counted

    for name in ("cudnn_convolution_relu", "cudnn_convolution_add_relu"):
        monkeypatch.setattr(torch, name, counting(name))
    m = lower(zoo.get("resnet50", num_classes=10, input_shape=(3, 64, 64)))
    _randomize_bn_statistics(m)
    m = m.to(exact_cuda).eval()
    fast = prepare(m, fold_bn=True, channels_last=True)
    x = torch.randn(4, 3, 64, 64, device=exact_cuda)
    with torch.no_grad():
        want = m(x)
        assert _outputs_agree(want, fast(x.to(memory_format=torch.channels_last)), 1e-4)
        assert calls == {"cudnn_convolution_relu": 33, "cudnn_convolution_add_relu": 16}
        calls.clear()
        with torch.autocast("cuda", torch.bfloat16):
            half = fast(x.to(memory_format=torch.channels_last))
        assert calls == {"cudnn_convolution_relu": 33, "cudnn_convolution_add_relu": 16}
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), want, rtol=0.1, atol=0.1 * want.abs().max().item())
    calls.clear()
    fast(x)  # autograd on: the plain ops, which have a backward
    assert not calls


@pytest.mark.cuda
def test_cuda_training_step_lowers_the_loss(exact_cuda):
    torch.manual_seed(0)
    m = lower(zoo.get("resnet18", num_classes=4, input_shape=(3, 32, 32))).to(exact_cuda)
    x = torch.randn(8, 3, 32, 32, device=exact_cuda)
    y = torch.randint(0, 4, (8,), device=exact_cuda)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
