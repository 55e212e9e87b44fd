"""Fold an inference-time BatchNorm into the convolution before it.

A pass over (Graph, state dict): BN(conv(x)) = conv'(x) with
w' = w * s and b' = (b - mean) * s + beta per output channel, s = gamma / sqrt(var + eps).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nasgraph.ir import Graph
from nasgraph.passes._rewrite import rebuild, sole_consumer

StateDict = dict[str, np.ndarray]


def as_numpy(state_dict: Mapping[str, object]) -> StateDict:
    """The state dict's tensors as numpy arrays (torch tensors, numpy arrays, lists)."""
    out = {}
    for k, v in state_dict.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        out[k] = np.asarray(v)
    return out


def fold_batchnorm(graph: Graph, state_dict: Mapping[str, object]) -> tuple[Graph, StateDict]:
    """Fold every BatchNorm whose input is a conv used by nothing else into that conv.

    Returns the new graph (the conv keeps its id, gains a bias; the BN node is gone) and the
    new state dict (numpy arrays; the BN's entries are dropped).

        >>> import torch
        >>> from nasgraph.ir import GraphBuilder
        >>> from nasgraph.backends.torch import lower
        >>> b = GraphBuilder(); x = b.input(3, 8, 8)
        >>> g = (b.output(b.bn(b.conv(x, 4, 3, bias=False), name="bn")), b.build())[1]
        >>> g2, sd = fold_batchnorm(g, lower(g).state_dict())
        >>> [n.kind for n in g2], sorted(sd)
        (['input', 'conv2d', 'output'], ['conv.bias', 'conv.weight'])
    """
    state = as_numpy(state_dict)
    rename: dict[str, str] = {}
    replace = {}
    for node in graph:
        if node.kind != "conv2d":
            continue
        bn_id = sole_consumer(graph, node.id)
        if bn_id is None or graph[bn_id].kind != "batchnorm2d":
            continue
        bn = graph[bn_id]
        conv_key, bn_key = node.param_key, bn.param_key
        w = state[f"{conv_key}.weight"].astype(np.float64)
        bias = state[f"{conv_key}.bias"].astype(np.float64) if node.op.bias else 0.0
        scale = state[f"{bn_key}.weight"].astype(np.float64) / np.sqrt(
            state[f"{bn_key}.running_var"].astype(np.float64) + bn.op.eps)
        shift = state[f"{bn_key}.bias"] - state[f"{bn_key}.running_mean"] * scale
        state[f"{conv_key}.weight"] = (w * scale[:, None, None, None]).astype(np.float32)
        state[f"{conv_key}.bias"] = (bias * scale + shift).astype(np.float32)
        for suffix in bn.op.weight_specs([node.type]):
            state.pop(f"{bn_key}.{suffix}", None)
        replace[node.id] = (node.op.model_copy(update={"bias": True}), node.inputs)
        rename[bn_id] = node.id
    return (rebuild(graph, rename, replace) if rename else graph), state
