"""Training on the numba backend against torch: the optimizers step for step against
torch.optim (as `nasgraph.train.make_optimizer` builds it), whole training steps against
torch autograd + torch.optim, the learning rates of a run against the torch trainer's,
the augmentation against the torch trainer's, and `train(..., backend="numba")` on the
digits against `backend="torch"`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nasgraph import init_state
from nasgraph.backends.numba import loop
from nasgraph.backends.numba.grad import loss_and_grads
from nasgraph.backends.numba.optim import FlatParams, make_optimizer
from nasgraph.backends.torch import lower
from nasgraph.data import Split, load_dataset
from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph, GraphBuilder
from nasgraph.recipe import warmup_cosine
from nasgraph.train import Recipe, accuracy, shift_and_flip, train
from nasgraph.train import make_optimizer as torch_optimizer

LRS = [0.01, 0.03, 0.05, 0.02, 0.004]  # a different rate each step, as a schedule sets


def small_cnn(width: int = 8, classes: int = 10, shape: tuple[int, int, int] = (1, 8, 8)
              ) -> Graph:
    """conv (with bias) -> relu -> strided conv -> BN -> relu -> GAP -> linear: decayed
    kernels, undecayed biases and BN parameters, running statistics. (No bias before BN:
    its gradient, zero in exact arithmetic, is rounding noise that AdamW would turn into
    steps of +-lr either way.)"""
    b = GraphBuilder("small_cnn")
    x = b.input(*shape)
    x = b.relu(b.conv(x, width, 3, padding=1, bias=True, name="c1"))
    x = b.relu(b.bn(b.conv(x, 2 * width, 3, stride=2, padding=1, bias=False,
                                 name="c2"), name="bn2"))
    b.output(b.linear(b.flatten(b.gap(x)), classes, name="fc"))
    return b.build()


def assert_close(actual: np.ndarray, reference: np.ndarray, what: str, rtol: float) -> None:
    """Within `rtol` of the reference's scale (float32 rounding, not one CPU's)."""
    scale = max(float(np.abs(reference).max(initial=0.0)), 1e-6)
    np.testing.assert_allclose(actual, reference, rtol=rtol, atol=rtol * scale, err_msg=what)


def torch_module(graph: Graph, state: dict[str, np.ndarray]) -> torch.nn.Module:
    m = lower(graph)
    m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return m


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_steps_equal_torch_optim(kind):
    """The same gradients into both optimizers, five steps at changing rates: the weights
    agree, decayed kernels and undecayed biases and BN parameters alike."""
    graph = small_cnn()
    recipe = Recipe(optimizer=kind, weight_decay=0.05, momentum=0.8)
    state = init_state(graph, 0)
    m = torch_module(graph, state)
    ref = torch_optimizer(list(m.parameters()), recipe, LRS[0], torch.device("cpu"))
    trainable = [k for k, _ in m.named_parameters()]
    params = FlatParams(state, trainable)
    opt = make_optimizer(kind, params, recipe.weight_decay, recipe.momentum)
    rng = np.random.default_rng(1)
    for lr in LRS:
        grads = {k: rng.standard_normal(state[k].shape).astype(np.float32) for k in trainable}
        for k, p in m.named_parameters():
            p.grad = torch.from_numpy(grads[k].copy())
        for group in ref.param_groups:
            group["lr"] = lr
        ref.step()
        params.set_grads(grads)
        opt.step(lr)
    for k, p in m.named_parameters():
        assert_close(state[k], p.detach().numpy(), f"{kind} {k}", 1e-5)
    assert params.decayed == sum(p.numel() for p in m.parameters() if p.ndim > 1)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("decayed", [False, True])
def test_a_group_of_no_weights_is_left_alone(kind, decayed):
    # all weights decayed (kernels only) or none (biases only): the empty group's slice,
    # (0, 0) or (n, n), must not stand for the whole vector. With a zero gradient a step
    # moves the weights by their decay alone, where it applies
    shape = (3, 2) if decayed else (3,)
    state = {"w": np.full(shape, 2.0, np.float32)}
    params = FlatParams(state, ["w"])
    opt = make_optimizer(kind, params, weight_decay=0.5, momentum=0.9)
    params.grad[:] = 0.0
    opt.step(lr=0.1)
    f32 = np.float32
    if kind == "sgd":  # d = wd * p = 1, the first buffer d: p -= (d + 0.9 * d) * lr
        moved = f32(2.0) - (f32(1.0) + f32(0.9) * f32(1.0)) * f32(0.1)
    else:  # p *= 1 - lr * wd; the Adam term is 0 / (0 + eps)
        moved = f32(2.0) * f32(1.0 - 0.1 * 0.5)
    assert np.all(state["w"] == (moved if decayed else f32(2.0)))


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_training_steps_equal_torch_autograd_and_optim(kind):
    """Three whole steps (forward, backward, BN statistics, optimizer) on both backends
    from the same weights and batches: weights and running statistics agree."""
    graph = small_cnn()
    recipe = Recipe(optimizer=kind, weight_decay=0.05, label_smoothing=0.1)
    state = init_state(graph, 3)
    m = torch_module(graph, state).train()
    ref = torch_optimizer(list(m.parameters()), recipe, LRS[0], torch.device("cpu"))
    trainable = [k for k, _ in m.named_parameters()]
    params = FlatParams(state, trainable)
    opt = make_optimizer(kind, params, recipe.weight_decay, recipe.momentum)
    rng = np.random.default_rng(2)
    for lr in LRS[:3]:
        x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, 16)
        loss = F.cross_entropy(m(torch.from_numpy(x)), torch.from_numpy(y),
                               label_smoothing=recipe.label_smoothing)
        ref.zero_grad()
        loss.backward()
        for group in ref.param_groups:
            group["lr"] = lr
        ref.step()
        out = loss_and_grads(graph, state, x, y, label_smoothing=recipe.label_smoothing)
        assert out.loss == pytest.approx(loss.item(), rel=1e-4)
        state.update(out.buffers)
        params.set_grads(out.grads)
        opt.step(lr)
    for k, v in m.state_dict().items():
        assert_close(np.asarray(state[k]), v.numpy(), f"{kind} {k}", 1e-4)


def test_a_run_steps_at_the_learning_rates_of_the_torch_trainer(monkeypatch):
    """The learning rate of every optimizer step of a 2-epoch run, batches of 32 from 65
    images (the last batch of one skipped, as BN needs two), equals the torch trainer's."""
    import nasgraph.train as torch_train

    ds = load_dataset("digits")
    split = Split(ds.train.x[:65], ds.train.y[:65])
    recipe = Recipe(batch_size=32, warmup_epochs=1.0)
    torch_lrs: list[float] = []
    numba_lrs: list[float] = []

    def logging_torch(*args, **kwargs):
        opt = torch_optimizer(*args, **kwargs)
        step = opt.step
        opt.step = lambda: (torch_lrs.append(opt.param_groups[0]["lr"]), step())[1]
        return opt

    def logging_numba(*args, **kwargs):
        opt = make_optimizer(*args, **kwargs)
        step = opt.step
        opt.step = lambda lr: (numba_lrs.append(lr), step(lr))[1]
        return opt

    monkeypatch.setattr(torch_train, "make_optimizer", logging_torch)
    monkeypatch.setattr(loop, "make_optimizer", logging_numba)
    train(small_cnn(), ds, recipe, epochs=2, device="cpu", train_split=split)
    train(small_cnn(), ds, recipe, epochs=2, train_split=split, backend="numba")
    assert len(torch_lrs) == 4  # 2 epochs x 2 batches of 32
    assert numba_lrs == torch_lrs
    schedule = warmup_cosine(2, 3, 1.0)  # ceil(65 / 32) = 3 steps an epoch, warm-up 1 epoch
    assert numba_lrs == pytest.approx([1e-2 * f for f in (1 / 3, 2 / 3, 1.0, schedule(3))])


@pytest.mark.parametrize("shift", [0, 2])
def test_augmentation_equals_the_torch_trainers(shift):
    rng = np.random.default_rng(shift)
    x = rng.standard_normal((40, 3, 7, 9)).astype(np.float32)
    offsets = rng.integers(0, 2 * shift + 1, (2, 40))
    flips = rng.random(40) < 0.5
    ours = loop.shift_and_flip(x, shift, offsets, flips)
    ref = shift_and_flip(torch.from_numpy(x), shift, torch.from_numpy(offsets),
                         torch.from_numpy(flips))
    np.testing.assert_array_equal(ours, ref.numpy())
    drawn = loop.augment(x, shift, True, np.random.default_rng(0))
    assert drawn.shape == x.shape and not np.array_equal(drawn, x)


def test_fit_reports_every_epoch_and_may_be_stopped():
    ds = load_dataset("digits")
    data = loop.Arrays(ds.train.x[:64].numpy(), ds.train.y[:64].numpy())
    seen: list[int] = []

    def stop(epoch: int, acc: float) -> None:
        seen.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.fit(small_cnn(), data, data, Recipe(), epochs=4, on_epoch=stop)
    assert seen == [0, 1]


def test_train_refuses_a_module_or_an_unknown_backend_on_one_line():
    ds = load_dataset("digits")
    with pytest.raises(NasgraphError, match="trains a Graph"):
        train(lower(small_cnn()), ds, epochs=1, backend="numba")
    with pytest.raises(NasgraphError, match="torch or numba"):
        train(small_cnn(), ds, epochs=1, backend="jax")


NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError from here on
import numpy as np
import nasgraph
from nasgraph.backends.numba.loop import Arrays, fit
from nasgraph.recipe import Recipe
g = nasgraph.zoo.get("lenet5", num_classes=2)
x = np.random.default_rng(0).standard_normal((8, 1, 32, 32)).astype(np.float32)
data = Arrays(x, np.arange(8) % 2)
result = fit(g, data, data, Recipe(batch_size=4, optimizer="sgd"), epochs=1)
assert len(result.history) == 1 and np.isfinite(result.state["c1.weight"]).all()
print("trained without torch")
"""


def test_fit_trains_where_torch_cannot_be_imported():
    r = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "trained without torch"


@pytest.mark.slow
def test_numba_training_learns_the_digits_as_torch_does():
    """3 epochs of the default recipe (AdamW, batch 32, 39 steps an epoch) on the 1,222
    training digits. With this net torch scored 95.4, 94.9 and 95.8% on the 216
    validation digits at seeds 0-2, and numba 95.4, 94.4 and 94.4% (chance: 10%): above
    85% is learning, not luck, and the numba run (the same initial weights, other shuffles)
    lands within 5 points of torch's. Its weights load into `lower(graph)`, which then
    scores as the numba executor did."""
    ds = load_dataset("digits")
    graph = small_cnn(24)
    numba_run = train(graph, ds, Recipe(), epochs=3, seed=0, backend="numba")
    torch_run = train(graph, ds, Recipe(), epochs=3, seed=0, device="cpu")
    assert numba_run.val_accuracy > 0.85
    assert abs(numba_run.val_accuracy - torch_run.val_accuracy) < 0.05
    assert len(numba_run.history) == 3
    model = lower(graph)
    model.load_state_dict(numba_run.model.state_dict())
    # the executor folds BN and rounds otherwise: a borderline image may flip
    assert accuracy(model, ds.val) == pytest.approx(numba_run.val_accuracy, abs=2 / len(ds.val))
