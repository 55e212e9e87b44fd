"""The trainer: batch augmentation against a per-image reference, reproducibility, accuracy
against a plain loop, the channels_last path against NCHW, and learning on synthetic data."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from nasgraph.data import Split, load_dataset
from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import ResidualBlock, residual_block
from nasgraph.motifs.conv import conv_unit
from nasgraph.train import (
    LARGE_SPLIT,
    Recipe,
    accuracy,
    augment,
    channels_last,
    prefers_channels_last,
    shift_and_flip,
    train,
)


def reference_shift_and_flip(image: torch.Tensor, shift: int, dy: int, dx: int,
                             flip: bool) -> torch.Tensor:
    """One C x H x W image, the obvious way: pad, cut the window, mirror."""
    _, h, w = image.shape
    window = nn.functional.pad(image, (shift,) * 4)[:, dy: dy + h, dx: dx + w]
    return window.flip(2) if flip else window


@pytest.mark.parametrize("shift", [0, 1, 3])
def test_shift_and_flip_equals_the_per_image_reference(shift):
    gen = torch.Generator().manual_seed(shift)
    x = torch.randn(64, 3, 9, 11, generator=gen)
    offsets = torch.randint(0, 2 * shift + 1, (2, 64), generator=gen)
    flips = torch.rand(64, generator=gen) < 0.5
    out = shift_and_flip(x, shift, offsets, flips)
    for i in range(64):
        expected = reference_shift_and_flip(x[i], shift, int(offsets[0, i]),
                                            int(offsets[1, i]), bool(flips[i]))
        assert torch.equal(out[i], expected)


def test_augment_moves_every_image_by_its_own_draw_and_keeps_it_with_its_label():
    shift, n = 2, 200
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, 8, 8, generator=gen)
    out = augment(x, shift, flip=True, generator=gen)
    assert out.shape == x.shape and out.dtype == x.dtype
    moves = set()
    for i in range(n):  # image i becomes one of the (2s + 1)^2 x 2 variants of image i
        variants = {(dy, dx, f) for dy in range(2 * shift + 1) for dx in range(2 * shift + 1)
                    for f in (False, True)
                    if torch.equal(out[i], reference_shift_and_flip(x[i], shift, dy, dx, f))}
        assert variants, f"image {i} is no shift or flip of input {i}"
        moves |= variants
    assert len(moves) > 30  # per-image draws, not one shift for the batch
    assert not torch.equal(out, x)


def test_augment_without_shift_or_flip_is_the_identity():
    x = torch.randn(4, 1, 5, 5)
    assert augment(x, 0, False, torch.Generator()) is x


def tiny_resnet(input_shape: tuple[int, int, int], width: int = 6) -> Graph:
    """A ResNet whose strided shortcut is a 1x1 conv from `width` channels: under 16, a shape
    that oneDNN's NHWC weight gradient cannot take (nasgraph.train.ONEDNN_NHWC_BLOCK)."""
    b = GraphBuilder("tiny_resnet")
    x = b.input(*input_shape)
    with b.scope("stem"):
        x = conv_unit(b, x, width, 3)
    with b.scope("block"):
        x = residual_block(b, x, ResidualBlock(planes=2 * width, stride=2))
    b.output(b.linear(b.flatten(b.gap(x)), 10))
    return b.build()


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic")


@pytest.mark.parametrize("width", [6, 8])  # NCHW, channels_last
def test_the_same_seed_trains_the_same_weights(synthetic, width):
    g = tiny_resnet(synthetic.input_shape, width)
    assert prefers_channels_last(g) == (width == 8)
    recipe = Recipe(batch_size=64, shift=2)
    runs = [train(g, synthetic, recipe, epochs=2, device="cpu", seed=s) for s in (3, 3, 4)]
    same, other = runs[0].model.state_dict(), runs[2].model.state_dict()
    assert runs[0].history == runs[1].history
    for key, value in runs[1].model.state_dict().items():
        assert torch.equal(value, same[key]), key
    assert not all(torch.equal(value, other[key]) for key, value in same.items())


def test_accuracy_equals_a_plain_argmax_loop(synthetic):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    model(synthetic.train.x[:64])  # train mode: BN running statistics that are not 0 and 1
    split = Split(synthetic.val.x[:101], synthetic.val.y[:101])
    model.eval()
    with torch.no_grad():
        correct = sum(int(model(split.x[i: i + 1]).argmax()) == int(split.y[i])
                      for i in range(len(split)))
    assert accuracy(model, split) == correct / len(split)
    assert accuracy(model.train(), split, batch_size=7) == correct / len(split)


# synthetic images are class templates of pixel noise: shifting them hides the class
@pytest.mark.parametrize("width", [6, 8])
def test_training_on_synthetic_data_beats_chance_by_far(synthetic, width):
    result = train(tiny_resnet(synthetic.input_shape, width), synthetic, Recipe(shift=0),
                   epochs=4, device="cpu")
    assert result.epochs == 4 and len(result.history) == 4
    assert result.val_accuracy == result.history[-1] > 0.5  # chance: 0.1
    assert result.val_accuracy == accuracy(result.model, synthetic.val)
    assert all(p.is_contiguous() for p in result.model.parameters())  # NCHW again


def test_sgd_trains_too(synthetic):
    result = train(tiny_resnet(synthetic.input_shape), synthetic,
                   Recipe(optimizer="sgd", lr=0.05, shift=0), epochs=4, device="cpu")
    assert result.val_accuracy > 0.25


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_replanning_at_the_end_of_the_warm_up_trains_as_if_planned_so(synthetic, backend):
    # the warm-up is the first epoch whether 3 or 5 are planned, and the shuffles follow the
    # seed: 3 epochs replanned to 5 after the first are the 5-epoch run, and 3 cut to 2 the
    # 2-epoch run
    g = tiny_resnet(synthetic.input_shape, 6)
    recipe = Recipe(batch_size=64, shift=0, warmup_epochs=1.0)
    calls = []

    def to(total):
        def replan(done: int, seconds: float) -> int | None:
            calls.append((done, seconds))
            return total if done == 1 else None
        return replan

    for total in (5, 2):
        calls.clear()
        replanned = train(g, synthetic, recipe, epochs=3, device="cpu", seed=1,
                          backend=backend, replan=to(total))
        planned = train(g, synthetic, recipe, epochs=total, device="cpu", seed=1,
                        backend=backend)
        assert replanned.epochs == total and len(replanned.history) == total
        assert [done for done, _ in calls] == list(range(1, total + 1))
        assert all(seconds > 0 for _, seconds in calls)
        ours, theirs = replanned.model.state_dict(), planned.model.state_dict()
        for key, value in theirs.items():
            torch.testing.assert_close(ours[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_validating_after_the_last_epoch_only_trains_the_same(synthetic, backend):
    # a final retraining validates once, after the epoch its replanning makes the last
    g = tiny_resnet(synthetic.input_shape, 6)
    recipe = Recipe(batch_size=64, shift=0)
    seen = []
    once = train(g, synthetic, recipe, epochs=3, device="cpu", seed=2, backend=backend,
                 replan=lambda done, seconds: 2 if done == 1 else None,
                 on_epoch=lambda epoch, acc: seen.append(acc), validate_each_epoch=False)
    each = train(g, synthetic, recipe, epochs=2, device="cpu", seed=2, backend=backend)
    assert math.isnan(once.history[0]) and math.isnan(seen[0])
    assert once.history[1] == seen[1] == once.val_accuracy == each.history[1]
    for key, value in each.model.state_dict().items():
        assert torch.equal(once.model.state_dict()[key], value), key


def test_on_epoch_sees_every_epoch_and_may_stop_training(synthetic):
    seen = []

    def stop_after_two(epoch: int, acc: float) -> None:
        seen.append((epoch, acc))
        if epoch == 1:
            raise KeyboardInterrupt

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                          nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    with pytest.raises(KeyboardInterrupt):
        train(model, synthetic, epochs=5, device="cpu", on_epoch=stop_after_two)
    assert [epoch for epoch, _ in seen] == [0, 1]
    assert all(0 <= acc <= 1 for _, acc in seen)


def test_channels_last_computes_the_gradients_of_nchw():
    torch.manual_seed(0)
    from nasgraph.backends.torch import lower

    model = lower(tiny_resnet((1, 12, 12))).train()
    narrow = model.get_submodule("block.downsample.0")
    assert narrow.in_channels == 6 and narrow.stride == (2, 2)
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))
    grads = []
    for nhwc in (False, True):
        model.zero_grad()
        with channels_last(model, enabled=nhwc):
            loss = nn.functional.cross_entropy(
                model(x.contiguous(memory_format=torch.channels_last)), y)
            loss.backward()
            if nhwc:
                conv1 = model.get_submodule("block.conv1")
                assert conv1.weight.is_contiguous(memory_format=torch.channels_last)
                assert narrow.weight.stride() == (6, 1, 1, 1)  # NCHW, not NHWC (6, 1, 6, 6)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, rtol=1e-4, atol=1e-5, msg=key)
    with pytest.raises(KeyboardInterrupt), channels_last(model):
        raise KeyboardInterrupt  # the format is restored however the block ends
    assert all(p.is_contiguous() for p in model.parameters())
    assert not narrow._forward_pre_hooks


def test_channels_last_is_for_networks_not_mostly_narrow():
    # 6 channels over 12 x 12: 864 of the 2,160 values the convs write (40%)
    assert not prefers_channels_last(tiny_resnet((1, 12, 12)))
    b = GraphBuilder("narrow_stem")
    with b.scope("stem"):
        x = conv_unit(b, b.input(1, 12, 12), 4, 3)  # 576 values of 4 channels ...
    with b.scope("body"):
        x = conv_unit(b, x, 16, 3)  # ... and 2,304 of 16: 20% narrow
    b.output(b.linear(b.flatten(b.gap(x)), 10))
    assert prefers_channels_last(b.build())
    b = GraphBuilder("gated")
    x = conv_unit(b, b.input(3, 16, 16), 8, 3)
    gate = b.relu(b.conv(b.gap(x), 2, 1, name="squeeze"))
    b.output(b.mul(x, b.act(b.conv(gate, 8, 1, name="excite"), "sigmoid")))
    assert prefers_channels_last(b.build())  # a 2-channel conv over one pixel is no layer


def test_large_training_splits_train_at_batch_128_with_a_larger_learning_rate():
    assert Recipe().batch_for(LARGE_SPLIT - 1) == 32 and Recipe().lr_at(32) == 1e-2
    assert Recipe().batch_for(LARGE_SPLIT) == 128 and Recipe().lr_at(128) == 2e-2
    assert Recipe(batch_size=64).batch_for(LARGE_SPLIT) == 64
    assert Recipe(lr=3e-3).lr_at(128) == 3e-3


@pytest.mark.parametrize("processes", [1, 2, 64])
def test_processes_side_by_side_share_the_cores_for_both_trainers(processes):
    # in a fresh process: thread counts are per process, and this one's stay as they are
    script = ("import os, numba, torch\n"
              "from nasgraph.train import share_cores\n"
              f"n = share_cores({processes})\n"
              "print(n, torch.get_num_threads(), numba.get_num_threads(), os.cpu_count(), "
              "numba.config.NUMBA_NUM_THREADS)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    n, torch_threads, numba_threads, cores, numba_max = map(int, run.stdout.split())
    assert n == torch_threads == numba_threads == max(1, min(cores // processes, numba_max))
