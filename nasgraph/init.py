"""Initial weights in numpy: a graph's state dict, drawn as its op specs say (`WeightSpec`).

The same weights on every backend: `lower(graph, seed=s)` loads `init_state(graph, s)`, and
the numba backend compiles it without torch. The rules are torch's and He et al.'s:
convs N(0, 2 / fan_out) (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`), linear
layers U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias (torch's default), BN scale
and running variance one, shifts, biases and running means zero.
"""

from __future__ import annotations

import math

import numpy as np

from nasgraph.ir import Graph, WeightSpec


def _draw(spec: WeightSpec, rng: np.random.Generator) -> np.ndarray:
    # float32 draws, scaled in place: a VGG classifier holds 10^8 weights
    if spec.init == "he_normal_fan_out":
        w = rng.standard_normal(spec.shape, dtype=np.float32)
        w *= np.float32(math.sqrt(2.0 / spec.fan))
        return w
    if spec.init == "uniform_fan_in":
        bound = np.float32(1.0 / math.sqrt(spec.fan))
        w = rng.random(spec.shape, dtype=np.float32)  # [0, 1) -> [-bound, bound)
        w *= 2 * bound
        w -= bound
        return w
    fill = np.ones if spec.init == "ones" else np.zeros
    return fill(spec.shape, dtype=spec.dtype)


def init_state(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """A freshly initialized state dict for `graph`, keyed as `lower(graph).state_dict()`.

    Every entry of `graph.weight_specs()` is drawn, in graph order, from one
    `np.random.default_rng(seed)`: the same seed gives the same weights.

    Args:
        graph: the graph to initialize.
        seed: the random generator's seed.

    Returns:
        key -> numpy array (float32; BN's `num_batches_tracked` an int64 scalar).

    Example:
        >>> import nasgraph
        >>> state = nasgraph.init_state(nasgraph.zoo.get("lenet5"), seed=1)
        >>> state["c1.weight"].shape, float(state["c1.bias"].max())
        ((6, 1, 5, 5), 0.0)
    """
    rng = np.random.default_rng(seed)
    return {key: _draw(spec, rng) for key, (_, spec) in graph.weight_specs().items()}
