"""Zero-cost proxies: scores of an untrained candidate, from one minibatch, that rank
candidates without training them (a screen before the search spends epochs on them).

    >>> import torch
    >>> from nasgraph import zoo
    >>> from nasgraph.search.proxies import score
    >>> g = zoo.get("lenet5")
    >>> x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    >>> sorted(score(g, x, y, names=["synflow", "params"]))
    ['params', 'synflow']

Every proxy is a function `(graph, model, x, y) -> float`: `model` is `lower(graph)` with the
weights to score (left unchanged), `x` a batch N x C x H x W and `y` its labels (used by the
proxies that take a loss). They follow the published definitions and, where those leave a
choice open, the reference code: NASWOT as in Mellor et al.'s `nas-without-training`, the
others as in Abdelfattah et al.'s `zero-cost-nas` (`foresight/pruners/measures`): like the
latter, the gradient proxies sum over the weights of convs and linear layers (not biases
nor BN), and those that take a loss or a Jacobian run BN on the batch's statistics (train
mode). For every proxy, higher predicts a better network.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from torch import nn

from nasgraph import analysis
from nasgraph.backends.torch import lower
from nasgraph.data import Dataset, load_dataset
from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph
from nasgraph.ir.ops import Output
from nasgraph.search.budget import Budget, Costs
from nasgraph.search.space import Context, Space, fit_to_budget, load_space

Proxy = Callable[[Graph, nn.Module, torch.Tensor, torch.Tensor], float]

# activations whose output is positive exactly where their input is: a ReLU's linear region
CODED_ACTIVATIONS = ("relu", "relu6")


def seeded_model(graph: Graph, seed: int = 0) -> nn.Module:
    """`lower(graph)` with the weights of `nasgraph.init_state(graph, seed)`."""
    return lower(graph, seed=seed)


def _weighted_layers(model: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


# ----------------------------------------------------------------------------- NASWOT


def with_codes(graph: Graph) -> tuple[Graph, list[str]]:
    """`graph` with every ReLU (and ReLU6) also a graph output: the new graph and the ids of
    those outputs. Activations are nodes of their own in the IR, so their values are
    outputs like any other; the numba executor, which fuses a ReLU into the conv before
    it, then returns the fused conv's result."""
    acts = [n for n in graph if n.kind == "activation" and n.op.fn in CODED_ACTIVATIONS]
    codes = [(f"naswot_code_{k}", Output(), [n.id]) for k, n in enumerate(acts)]
    return Graph([*graph.nodes, *codes], name=graph.name), [c[0] for c in codes]


def _activations(graph: Graph, model: nn.Module, x: torch.Tensor,
                 backend: str) -> list[np.ndarray]:
    """The ReLUs' outputs on `x`, inference mode, by the numba executor or by torch."""
    if backend not in ("numba", "torch"):
        raise NasgraphError(f"naswot backend {backend!r}: expected numba or torch")
    coded, ids = with_codes(graph)
    if not ids:
        return []
    state = model.state_dict()
    if backend == "numba":
        from nasgraph.backends import numba as nb

        run = nb.compile(coded, state)
        outs = run(x.detach().cpu().numpy().astype(np.float32))
        names = [o.id for o in run.graph.outputs]  # the optimized graph's order
    else:
        module = seeded_model(coded)  # (not lower: that would draw on torch's global seed)
        module.load_state_dict(state)
        with torch.no_grad():
            outs = [o.numpy() for o in module.eval()(x)]
        names = [o.id for o in coded.outputs]
    by_id = dict(zip(names, outs, strict=True))
    return [by_id[i] for i in ids]


def naswot(graph: Graph, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
           backend: str = "numba") -> float:
    """NASWOT (Mellor et al. 2021, "Neural Architecture Search without Training", ICML):
    log|det K| of the Hamming kernel of the ReLUs' binary codes over the batch.

    Sample i's code c_i has a 1 where a ReLU is active; K_ij counts the positions where
    c_i and c_j agree, K = C C^T + (1-C)(1-C)^T, so that a net that tells the inputs of the
    batch apart by their linear regions scores high. One forward pass, no gradient, on the
    numba executor (`backend="numba"`) or on the lowered module (`"torch"`).

    Unlike the reference code, which runs the network in train mode, BN uses its running
    statistics (inference mode, the only one the numba executor has; the identity at
    initialization). A graph without a ReLU scores nan.
    """
    n = len(x)
    kernel = np.zeros((n, n))
    for act in _activations(graph, model, x, backend):
        # with s = 2c - 1 in {-1, 1}: s_i . s_j = agreements - disagreements, so
        # (D + s s^T) / 2 is C C^T + (1-C)(1-C)^T in one product; its sums are integers,
        # exact in float32 (twice as fast) up to 2^24 positions
        positions = act[0].size
        s = np.where(act.reshape(n, -1) > 0, 1.0, -1.0).astype(
            np.float32 if positions <= 2**24 else np.float64)
        kernel += (positions + (s @ s.T).astype(np.float64)) / 2
    if not kernel.any():
        return float("nan")
    return float(np.linalg.slogdet(kernel)[1])


# ----------------------------------------------------------------------------- gradients


def synflow(graph: Graph, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None
            ) -> float:
    """SynFlow (Tanaka et al. 2020, "Pruning neural networks without any data by
    iteratively conserving synaptic flow", NeurIPS), as a proxy in Abdelfattah et al. 2021
    ("Zero-Cost Proxies for Lightweight NAS", ICLR): sum over weights of |theta dR/dtheta|,
    R = sum of the outputs of the network with every parameter replaced by its absolute
    value, on one all-ones input, in float64 (the products overflow float32 in deep nets).

    As zero-cost-nas does (`synflow`, not `synflow_bn`), BN layers are bypassed; and dropout
    is off (eval mode). Only the input's shape is read from `x`.
    """
    net = copy.deepcopy(model).double().eval()
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            parent, _, leaf = name.rpartition(".")
            setattr(net.get_submodule(parent), leaf, nn.Identity())
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net(torch.ones((1, *x.shape[1:]), dtype=torch.float64)).sum().backward()
    layers = [m for m in _weighted_layers(net) if m.weight.grad is not None]
    return float(sum((m.weight.detach() * m.weight.grad).abs().sum() for m in layers))


def _loss_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, dL/dweight) of every conv and linear layer, L the cross entropy of the
    batch, in train mode (BN on the batch's statistics), as zero-cost-nas computes it."""
    net = copy.deepcopy(model).train()
    F.cross_entropy(net(x), y).backward()
    return [(m.weight.detach(), m.weight.grad if m.weight.grad is not None
             else torch.zeros_like(m.weight)) for m in _weighted_layers(net)]


def grad_norm(graph: Graph, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Gradient norm (Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS",
    ICLR): the sum over layers of the Euclidean norm of dL/dW, L the cross entropy."""
    return float(sum(g.norm() for _, g in _loss_gradients(model, x, y)))


def snip(graph: Graph, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """SNIP (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity", ICLR), summed over weights as in Abdelfattah et al. 2021: sum of
    |theta dL/dtheta|, L the cross entropy (zero-cost-nas's |dL/dmask| of a unit mask)."""
    return float(sum((w * g).abs().sum() for w, g in _loss_gradients(model, x, y)))


def jacob_cov(graph: Graph, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None
              ) -> float:
    """Jacobian covariance (Mellor et al., "Neural Architecture Search without Training",
    arXiv v1, 2020): with J_i the gradient of the summed outputs with respect to sample i
    and v the eigenvalues of the correlation matrix of the J_i, -sum(log(v + k) + 1/(v + k)),
    k = 1e-5; high when the samples' Jacobians are uncorrelated.

    Train mode, as in zero-cost-nas; the eigenvalues by `eigvalsh` (the matrix is
    symmetric; the reference's `eig` can return complex roundoff). nan where a Jacobian is
    constant (its correlation is undefined).
    """
    net = copy.deepcopy(model).train()
    x = x.detach().clone().requires_grad_(True)
    out = net(x)
    out.backward(torch.ones_like(out))
    jacobians = x.grad.reshape(len(x), -1).double().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.corrcoef(jacobians)
    if not np.isfinite(corr).all():
        return float("nan")
    v, k = np.linalg.eigvalsh(corr), 1e-5
    return float(-np.sum(np.log(v + k) + 1.0 / (v + k)))


# ----------------------------------------------------------------------------- sizes


def params(graph: Graph, model: nn.Module | None = None, x: torch.Tensor | None = None,
           y: torch.Tensor | None = None) -> int:
    """Trainable parameters (`nasgraph.analysis.params`): the baseline every proxy has to
    beat."""
    return analysis.params(graph)


def macs(graph: Graph, model: nn.Module | None = None, x: torch.Tensor | None = None,
         y: torch.Tensor | None = None) -> int:
    """Multiply-accumulates per sample (`nasgraph.analysis.macs`)."""
    return analysis.macs(graph)


PROXIES: dict[str, Proxy] = {
    "naswot": naswot, "synflow": synflow, "grad_norm": grad_norm, "snip": snip,
    "jacob_cov": jacob_cov, "params": params, "macs": macs,
}


def score(graph: Graph, x: torch.Tensor, y: torch.Tensor, names: list[str] | None = None,
          seed: int = 0) -> dict[str, float]:
    """The proxies `names` (default: all of `PROXIES`) of `graph` on the batch (x, y), all
    on one set of weights: `lower(graph)`'s initialization under torch seed `seed`, so that
    the same call gives the same numbers."""
    names = list(PROXIES) if names is None else names
    unknown = [n for n in names if n not in PROXIES]
    if unknown:
        raise NasgraphError(f"unknown proxy {unknown[0]!r}; hint: one of {', '.join(PROXIES)}")
    if len(graph.outputs) != 1:
        raise NasgraphError(f"graph {graph.name!r} has {len(graph.outputs)} outputs; the "
                            "proxies score classifiers, with one")
    model = seeded_model(graph, seed)
    return {name: PROXIES[name](graph, model, x, y) for name in names}


# ----------------------------------------------------------------------------- screening


def training_batch(data: Dataset, batch: int, seed: int = 0) -> tuple[torch.Tensor,
                                                                    torch.Tensor]:
    """`batch` training images and their labels, drawn at random with `seed` (all of
    them where the split is smaller)."""
    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
    return data.train.x[pick[:batch]], data.train.y[pick[:batch]]


@dataclass(frozen=True)
class Screening:
    """What `sample_and_score` found: one row per candidate within budget (`params`,
    `macs`, `parameters`, the trial's sampled parameters, and one number per proxy), and
    how many of the samples were over budget even when fitted, and so not scored."""

    rows: list[dict[str, Any]]
    infeasible: int


def fitted_candidates(space: Space, ctx: Context, samples: int, seed: int = 0
                      ) -> Iterator[tuple[dict[str, Any], Graph, Costs, bool]]:
    """`samples` random candidates of `space` (Optuna's RandomSampler, `seed`), each fitted
    to `ctx`'s budget as a search fits it: (sampled parameters, graph, costs, feasible)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(samples):
        trial = study.ask()
        graph, costs, _, feasible = fit_to_budget(space, trial, ctx)
        yield trial.params, graph, costs, feasible


def sample_and_score(space: str, dataset: str, budget: Budget, samples: int, seed: int = 0,
                     batch: int = 64, progress: Callable[[int, int], None] | None = None
                     ) -> Screening:
    """Sample `samples` candidates of `space` at random (`fitted_candidates`), and score
    those that fit `budget` on one batch of `batch` training images of `dataset` (drawn
    with `seed`). `progress(done, samples)` is called after each candidate."""
    data = load_dataset(dataset, seed=seed)
    ctx = Context(input_shape=data.input_shape, num_classes=data.num_classes, budget=budget)
    x, y = training_batch(data, batch, seed)
    rows, infeasible = [], 0
    candidates = fitted_candidates(load_space(space), ctx, samples, seed)
    for done, (parameters, graph, _, feasible) in enumerate(candidates, 1):
        if feasible:
            rows.append({"parameters": parameters, **score(graph, x, y, seed=seed)})
        else:
            infeasible += 1
        if progress is not None:
            progress(done, samples)
    return Screening(rows, infeasible)
