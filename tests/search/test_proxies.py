"""Zero-cost proxies against hand computations, torch autograd and numpy; NASWOT on both
backends; the `nasgraph proxies` command."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from nasgraph import GraphBuilder
from nasgraph.ir import Graph
from nasgraph.search import Budget, Context, fit_to_budget, load_space, space_names
from nasgraph.search.proxies import (
    PROXIES,
    grad_norm,
    jacob_cov,
    naswot,
    score,
    seeded_model,
    snip,
    synflow,
)


def _with_weights(graph: Graph, **weights: torch.Tensor) -> torch.nn.Module:
    """`graph` lowered, with the named state dict entries ('/' or '.' in keys as '__')."""
    model = seeded_model(graph)
    state = model.state_dict()
    state.update({k.replace("__", "."): v for k, v in weights.items()})
    model.load_state_dict(state)
    return model


def _randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight, bias and BN statistic drawn from a continuous distribution (no value
    exactly 0: a ReLU's code of a tie may differ between two backends' roundings)."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: (torch.rand(v.shape, generator=gen) + 0.5 if k.endswith("running_var")
                 else torch.randn(v.shape, generator=gen) * 0.5) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model


def _candidate(shape: tuple[int, int, int], macs: int, seed: int = 0,
               space: str = "residual") -> Graph:
    """The first random candidate of `space` that fits `macs` at `shape`."""
    build = load_space(space)
    ctx = Context(input_shape=shape, num_classes=10, budget=Budget(macs=macs))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(20):
        graph, _, _, feasible = fit_to_budget(build, study.ask(), ctx)
        if feasible:
            return graph
    raise AssertionError("no feasible candidate in 20")


# ----------------------------------------------------------------------------- NASWOT


def _two_relus() -> Graph:
    """relu(x) and relu(-x) (a 1x1 conv of weight -I), added: codes x > 0 and x < 0."""
    b = GraphBuilder("two_relus")
    x = b.input(2, 1, 1)
    pos = b.relu(x, name="pos")
    neg = b.relu(b.conv(x, 2, 1, bias=False, name="flip"), name="neg")
    b.output(b.add([pos, neg]))
    return b.build()


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_naswot_by_hand(backend):
    graph = _two_relus()
    model = _with_weights(graph, flip__weight=-torch.eye(2).reshape(2, 2, 1, 1))
    x = torch.tensor([[1.0, -1.0], [2.0, 3.0], [-1.0, -2.0]]).reshape(3, 2, 1, 1)
    # codes of relu(x): 10, 11, 00; of relu(-x): 01, 00, 11. K_ij counts the positions where
    # the codes of samples i and j agree, over both ReLUs (the second's codes are the
    # first's complements: they agree in the same places)
    k = 2 * np.array([[2, 1, 1], [1, 2, 0], [1, 0, 2]])
    assert round(np.linalg.det(k)) == 32
    assert naswot(graph, model, x, backend=backend) == pytest.approx(math.log(32), rel=1e-12)


def test_naswot_is_the_same_on_numba_and_torch():
    graph = _candidate((1, 8, 8), 100_000)
    model = _randomized(seeded_model(graph))
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    on_numba = naswot(graph, model, x, backend="numba")
    assert math.isfinite(on_numba)
    assert on_numba == pytest.approx(naswot(graph, model, x, backend="torch"), rel=1e-6)


def test_naswot_without_relus_is_nan():
    b = GraphBuilder()
    b.output(b.linear(b.flatten(b.input(3, 2, 2)), 2))
    g = b.build()
    assert math.isnan(naswot(g, seeded_model(g), torch.randn(4, 3, 2, 2)))


# ----------------------------------------------------------------------------- synflow


def test_synflow_of_a_homogeneous_chain_is_depth_times_its_output():
    """For a chain of L bias-free layers, each positively homogeneous in its weights, the sum
    of theta dR/dtheta over one layer is R (Euler), so synflow = L R; BN is bypassed."""
    b = GraphBuilder("chain")
    x = b.input(4, 1, 1)
    x = b.relu(b.bn(b.conv(x, 6, 1, bias=False, name="c1"), name="bn"))
    x = b.conv(x, 5, 1, bias=False, name="c2")
    b.output(b.linear(b.flatten(x), 3, bias=False, name="fc"))
    graph = b.build()
    gen = torch.Generator().manual_seed(0)
    w1, w2, w3 = (torch.randn(shape, generator=gen) for shape in [(6, 4), (5, 6), (3, 5)])
    model = _with_weights(graph, c1__weight=w1.reshape(6, 4, 1, 1),
                          c2__weight=w2.reshape(5, 6, 1, 1), fc__weight=w3,
                          bn__weight=torch.full((6,), 3.0), bn__bias=torch.full((6,), -2.0),
                          bn__running_mean=torch.ones(6), bn__running_var=torch.full((6,), 4.0))
    a1, a2, a3 = (w.abs().double().numpy() for w in (w1, w2, w3))
    r = (a3 @ a2 @ a1 @ np.ones(4)).sum()
    assert synflow(graph, model, torch.zeros(2, 4, 1, 1)) == pytest.approx(3 * r, rel=1e-12)
    assert model.state_dict()["c1.weight"].min() < 0  # the model itself is left as it was


# ----------------------------------------------------------------------------- gradients


def _small_classifier() -> Graph:
    b = GraphBuilder("small")
    x = b.input(3, 6, 6)
    x = b.relu(b.bn(b.conv(x, 4, 3, padding=1, name="conv"), name="bn"))
    b.output(b.linear(b.flatten(b.gap(x)), 5, name="fc"))
    return b.build()


def test_snip_and_grad_norm_match_autograd_by_hand():
    graph = _small_classifier()
    model = _randomized(seeded_model(graph))
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 3, 6, 6, generator=gen), torch.randint(0, 5, (16,), generator=gen)
    p = {k: v.clone().requires_grad_(True) for k, v in model.state_dict().items()
         if k.endswith(("weight", "bias"))}
    # the same network written out in torch's functional API, BN on the batch's statistics
    h = F.conv2d(x, p["conv.weight"], p["conv.bias"], padding=1)
    h = F.batch_norm(h, None, None, p["bn.weight"], p["bn.bias"], training=True)
    out = F.linear(F.relu(h).mean((2, 3)), p["fc.weight"], p["fc.bias"])
    gc, gf = torch.autograd.grad(F.cross_entropy(out, y), [p["conv.weight"], p["fc.weight"]])
    expected_norm = gc.norm() + gf.norm()
    wc, wf = p["conv.weight"].detach(), p["fc.weight"].detach()
    expected_snip = (wc * gc).abs().sum() + (wf * gf).abs().sum()
    assert grad_norm(graph, model, x, y) == pytest.approx(float(expected_norm), rel=1e-5)
    assert snip(graph, model, x, y) == pytest.approx(float(expected_snip), rel=1e-5)


def test_jacob_cov_matches_numpy_on_a_one_hidden_layer_net():
    b = GraphBuilder("mlp")
    x = b.input(4, 1, 1)
    h = b.relu(b.linear(b.flatten(x), 6, name="fc1"))
    b.output(b.linear(h, 3, name="fc2"))
    graph = b.build()
    model = _randomized(seeded_model(graph))
    x = torch.randn(10, 4, 1, 1, generator=torch.Generator().manual_seed(3))
    state = {k: v.double().numpy() for k, v in model.state_dict().items()}
    w1, b1, w2 = state["fc1.weight"], state["fc1.bias"], state["fc2.weight"]
    xs = x.reshape(10, 4).double().numpy()
    # d(sum of outputs)/dx_i = W1^T (active_i * W2^T 1)
    jac = ((xs @ w1.T + b1 > 0) * w2.sum(0)) @ w1
    v, k = np.linalg.eigvalsh(np.corrcoef(jac)), 1e-5
    expected = -np.sum(np.log(v + k) + 1 / (v + k))
    assert jacob_cov(graph, model, x) == pytest.approx(expected, rel=1e-6)


def test_params_and_macs_agree_with_torch():
    graph = _small_classifier()
    model = seeded_model(graph)
    assert PROXIES["params"](graph, model, None, None) == sum(
        p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 6, 6))
    assert 2 * PROXIES["macs"](graph, model, None, None) == counter.get_total_flops()


# ----------------------------------------------------------------------------- all of them


def test_score_is_reproducible_and_runs_on_a_1m_mac_candidate():
    graph = _candidate((1, 28, 28), 1_000_000)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    first = score(graph, x, y)
    assert set(first) == set(PROXIES)
    assert all(math.isfinite(v) for v in first.values()), first
    assert score(graph, x, y) == first
    assert score(graph, x, y, names=["synflow"], seed=1)["synflow"] != first["synflow"]


@pytest.mark.parametrize("name", space_names())
def test_every_space_is_scored(name):
    graph = _candidate((1, 8, 8), 100_000, space=name)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    scores = score(graph, x, y)
    assert all(math.isfinite(v) for v in scores.values()), scores
    on_torch = naswot(graph, seeded_model(graph), x, backend="torch")
    assert scores["naswot"] == pytest.approx(on_torch, rel=1e-5)


def test_score_refuses_an_unknown_proxy():
    with pytest.raises(ValueError, match="unknown proxy 'nwot'"):
        score(_small_classifier(), torch.zeros(2, 3, 6, 6), torch.zeros(2), names=["nwot"])


# ----------------------------------------------------------------------------- the CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nasgraph.cli", "proxies", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_json_has_a_row_per_candidate():
    r = _cli("residual", "--dataset", "digits", "--budget", "100k", "--samples", "3",
             "--batch", "16", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert 1 <= len(rows) <= 3
    space, ctx = load_space("residual"), Context(input_shape=(1, 8, 8), num_classes=10,
                                                   budget=Budget(macs=100_000))
    for row in rows:
        assert set(row) == {"params", "macs", "parameters", "naswot", "synflow", "grad_norm",
                            "snip", "jacob_cov"}
        # the sampled parameters are enough to build the candidate again
        _, costs, _, _ = fit_to_budget(space, optuna.trial.FixedTrial(row["parameters"]),
                                           ctx)
        assert (costs.params, costs.macs) == (row["params"], row["macs"])


@pytest.mark.parametrize(("args", "message"), [
    (["residual", "--samples", "0"], "--samples"),
    (["nosuch", "--samples", "1"], "unknown search space 'nosuch'"),
])
def test_cli_bad_input_is_one_line(args, message):
    r = _cli(*args)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert message in r.stderr
