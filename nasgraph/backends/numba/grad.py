"""Training on the numba backend: a loss and its gradient for every trainable weight.

`value_and_grad(graph, state_dict, x, y)` runs `graph` forward in training mode
(BatchNorm on batch statistics, dropout masks drawn from a seed), takes the
cross-entropy of its logits against the labels `y`, and walks the graph backward,
op by op, as `_backward_ops.BACKWARD` says each kind does. It needs no torch: the
weights may come from `nasgraph.init_state`. `loss_and_grads` returns the rest of the
pass too: the logits and BatchNorm's updated running statistics.

The walk is the executor's: one topological order. Forward keeps what each node's
backward needs; backward visits the nodes in reverse, summing the gradients a node's
consumers send it, and skips the nodes no trainable weight lies behind.
"""

from __future__ import annotations

import ctypes
import functools
import math
import platform
from collections.abc import Mapping, MutableMapping
from typing import NamedTuple

import numba
import numpy as np
from numba import njit

from nasgraph.backends.numba._activations import ACT_CODES
from nasgraph.backends.numba._backward_elementwise import fusable
from nasgraph.backends.numba._backward_ops import (
    BACKWARD,
    add_act_forward,
    batchnorm_act_forward,
    batchnorm_backward_padded,
    batchnorm_backward_planes,
    dropout_mask,
)
from nasgraph.backends.numba._batchnorm_nhwc import output_fits, padded_fits
from nasgraph.backends.numba._conv_layouts import padded_dy, padded_x, planes_dy, planes_x
from nasgraph.backends.numba._conv_paths import lanes_conv
from nasgraph.backends.numba._planes import PlanesFor
from nasgraph.backends.numba._rule import Run, Spread, Terms, Weights, shape4
from nasgraph.backends.numba._weights import checked_state
from nasgraph.backends.numba.executor import _limit_blas_threads
from nasgraph.errors import GraphError, NasgraphError
from nasgraph.ir import Graph, Node, WeightSpec

__all__ = ["BACKWARD", "Gradients", "cross_entropy", "dropout_mask", "loss_and_grads",
           "value_and_grad"]


class Gradients(NamedTuple):
    """One training pass (`loss_and_grads`).

    loss: the mean cross-entropy over the batch.
    grads: state-dict key -> gradient of the loss, for every trainable weight
        (`WeightSpec.trainable`), float32, of the weight's shape.
    buffers: BatchNorm's running statistics after this pass, key -> new float32 array
        (`running_mean`, `running_var`, and `num_batches_tracked` + 1 where the state
        dict has it); empty in eval mode.
    logits: the graph's output, N x classes.
    """

    loss: float
    grads: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    logits: np.ndarray


def cross_entropy(logits: np.ndarray, y: np.ndarray, label_smoothing: float = 0.0
                  ) -> tuple[float, np.ndarray]:
    """torch's `F.cross_entropy(logits, y, label_smoothing=eps)` (mean over the batch) and
    its gradient with respect to `logits` (N x K, float32).

    The target is (1 - eps) on the label plus eps / K on every class, so the loss is
    mean_n[(1 - eps) * -log p[n, y_n] + eps * mean_k(-log p[n, k])] and its gradient
    (softmax - target) / N. Computed in float64: N x K is small.
    """
    grad = np.empty(logits.shape, np.float32)
    return _cross_entropy(np.ascontiguousarray(logits), y, label_smoothing, grad), grad


@njit(cache=True)
def _cross_entropy(logits, y, label_smoothing, grad):
    # `cross_entropy`, row by row in float64; writes the gradient into grad, returns the
    # loss. One call: as a dozen numpy operations it took 30 us a step at batch 32.
    n, k = logits.shape
    total = 0.0
    for i in range(n):
        top = -np.inf
        for j in range(k):
            top = max(top, np.float64(logits[i, j]))
        norm = 0.0
        for j in range(k):
            norm += math.exp(logits[i, j] - top)
        log_norm = math.log(norm)
        for j in range(k):
            log_p = logits[i, j] - top - log_norm
            target = label_smoothing / k + (1.0 - label_smoothing if j == y[i] else 0.0)
            total -= target * log_p
            grad[i, j] = (math.exp(log_p) - target) / n
    return total / n


@functools.cache
def _one_blas_thread() -> None:
    # `_limit_blas_threads` once per process: it scans the loaded libraries, 1 ms a call,
    # a fifth of a training step of a small net at batch 32
    _limit_blas_threads()


# glibc's mallopt parameters, and what the training pass sets them to
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD = 512 << 20  # the heap keeps up to 512 MiB of freed memory at its top


@functools.cache
def _reuse_freed_memory() -> bool:
    """Once per process, where the C library is glibc: keep freed blocks up to
    MMAP_THRESHOLD in the heap for the next step's arrays. glibc maps a large block
    fresh from the OS and unmaps it when freed, above a threshold that starts at 128 KiB
    and rises only as such blocks are freed, so a pass's new arrays (every activation and
    gradient) faulted their pages in anew, step after step: 2,500 page faults a step for
    the digits candidate at batch 128, 34,000 for resnet20, which took a quarter to two
    fifths of a step (docs/numba.md, "Memory"). Returns whether the settings took."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


class _Plan(NamedTuple):
    """What a training pass needs to know about a graph, worked out once per graph
    (`_plan`): its weights by node, the trainable ones, and the nodes a gradient flows
    through."""

    specs: dict[str, tuple[Node, WeightSpec]]
    shapes: dict[str, tuple[int, ...]]  # the weights the state dict must hold
    by_node: dict[str, list[tuple[str, str]]]  # node id -> (suffix, state-dict key)
    trainable: dict[str, list[str]]  # node id -> suffixes of its trainable weights
    needed: frozenset[str]  # `_requires_grad`
    counters: list[str]  # int64 entries (`num_batches_tracked`)
    fused: dict[str, int]  # BatchNorm or add id -> the code of the activation it applies
    absorbed: frozenset[str]  # those activations: their producer's output is theirs
    kinds: frozenset[str]  # the graph's op kinds (`_check_rules`)
    input: Node
    output: Node
    grad_keys: dict[str, list[tuple[str, str]]]  # node id -> trainable (suffix, key)
    # BatchNorm id -> the conv whose output it alone reads (`_padded_dy`)
    conv_before: dict[str, str]
    # BatchNorm id -> the conv that alone reads its output, through the activation it
    # applies (`_written_for`)
    conv_after: dict[str, str]
    # BatchNorms whose output a two-input add alone reads, which computes it in its own
    # pass (`_rule.Normalized`)
    into_add: frozenset[str]


def _check_rules(graph: Graph, kinds: frozenset[str]) -> None:
    """A one-line GraphError for the first node without a backward rule; on every call,
    not in the cached plan: `BACKWARD` is open to additions."""
    if kinds <= BACKWARD.keys():
        return
    for node in graph:
        if node.kind not in BACKWARD:
            raise GraphError(f"node {node.id!r} ({node.kind}) has no backward in the numba "
                             "backend; hint: add a Rule to _backward_ops.BACKWARD")


@functools.lru_cache(maxsize=64)
def _plan(graph: Graph) -> _Plan:
    """The graph's `_Plan`, once it can train here; raises a one-line GraphError if not:
    not one input and one output, or an output that is not one logit per class."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise GraphError(f"graph {graph.name!r} has {len(graph.inputs)} inputs and "
                         f"{len(graph.outputs)} outputs; training needs one of each")
    (out,) = graph.outputs
    if out.type.height * out.type.width != 1:
        raise GraphError(f"output {out.id!r} is {out.type}; cross-entropy needs one logit per "
                         "class (a flat vector); hint: end with global pooling or a Linear")
    specs = graph.weight_specs()
    by_node: dict[str, list[tuple[str, str]]] = {}
    trainable: dict[str, list[str]] = {}
    for key, (node, spec) in specs.items():
        suffix = key.rpartition(".")[2]
        by_node.setdefault(node.id, []).append((suffix, key))
        if spec.trainable:
            trainable.setdefault(node.id, []).append(suffix)
    fused = _fused_activations(graph)
    grad_keys = {node_id: [(suffix, f"{graph[node_id].param_key}.{suffix}")
                           for suffix in suffixes] for node_id, suffixes in trainable.items()}
    conv_before = {node.id: node.inputs[0] for node in graph if node.kind == "batchnorm2d"
                   and graph[node.inputs[0]].kind == "conv2d"
                   and len(graph.successors(node.inputs[0])) == 1}
    conv_after = {}
    for node_id in fused:
        readers = graph.successors(graph.successors(node_id)[0].id)
        if graph[node_id].kind == "batchnorm2d" and len(readers) == 1 \
                and readers[0].kind == "conv2d":
            conv_after[node_id] = readers[0].id
    into_add = frozenset(node.id for node in graph if node.kind == "batchnorm2d"
                         and node.id != out.id and _only_reader_is_pair_add(graph, node.id))
    return _Plan(specs, {k: spec.shape for k, (_, spec) in specs.items() if not spec.optional},
                 by_node, trainable, frozenset(_requires_grad(graph, trainable)),
                 [k for k, (_, spec) in specs.items() if spec.dtype == "int64"], fused,
                 frozenset(graph.successors(i)[0].id for i in fused),
                 frozenset(node.kind for node in graph), graph.inputs[0], out, grad_keys,
                 conv_before, conv_after, into_add)


def _only_reader_is_pair_add(graph: Graph, node_id: str) -> bool:
    readers = graph.successors(node_id)
    return len(readers) == 1 and readers[0].kind == "add" and len(readers[0].inputs) == 2


def _fused_activations(graph: Graph) -> dict[str, int]:
    """BatchNorm or add node -> the code of the activation that alone reads its output,
    where the node's forward can apply it in its own output pass (ReLU, ReLU6:
    `fusable`): one pass over the tensor fewer (docs/numba.md, "BatchNorm and adds apply
    their ReLU")."""
    fused = {}
    for node in graph:
        succ = graph.successors(node.id) if node.kind in ("batchnorm2d", "add") else []
        if len(succ) == 1 and succ[0].kind == "activation" and fusable(
                code := ACT_CODES[succ[0].op.fn]):
            fused[node.id] = code
    return fused


def _check(plan: _Plan, graph: Graph, x: np.ndarray, y: np.ndarray, label_smoothing: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """x as N x C x H x W float32 and y as int64 labels, once the shapes and the labels
    fit the graph; raises a one-line NasgraphError if not."""
    inp, out = plan.input, plan.output
    x = np.asarray(x)
    if x.ndim != 1 + len(inp.type.shape) or x.shape[1:] != inp.type.shape:
        raise NasgraphError(f"graph {graph.name!r} takes N x {inp.type} input, got shape "
                            f"{x.shape}")
    if x.shape[0] == 0:
        raise NasgraphError(f"graph {graph.name!r} got a batch of no samples (input shape "
                            f"{x.shape}); a loss needs at least one")
    y = np.asarray(y)
    classes = out.type.channels
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu" or (
            y.size and (y.min() < 0 or y.max() >= classes)):
        raise NasgraphError(f"labels must be {x.shape[0]} integers in 0..{classes - 1}, got "
                            f"shape {y.shape} dtype {y.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise NasgraphError(f"label_smoothing={label_smoothing} is outside 0..1")
    x4 = np.ascontiguousarray(x, np.float32).reshape(x.shape[0], *shape4(inp))
    return x4, y.astype(np.int64)


def _state(plan: _Plan, graph: Graph, state_dict: Mapping[str, object]
           ) -> Mapping[str, np.ndarray]:
    """The state dict as float32 numpy arrays: as it is where every weight already is one
    of its shape (what the training loop passes, step after step), else `checked_state`
    (which converts, or names what does not fit)."""
    for key, shape in plan.shapes.items():
        value = state_dict.get(key)
        if not (isinstance(value, np.ndarray) and value.dtype == np.float32
                and value.shape == shape and value.flags.c_contiguous):
            return checked_state(graph, state_dict)
    if len(state_dict) != len(plan.shapes) and any(k not in plan.specs for k in state_dict):
        return checked_state(graph, state_dict)  # names the key no weight has
    return state_dict


def _requires_grad(graph: Graph, trainable: Mapping[str, list[str]]) -> set[str]:
    """The nodes whose output depends on some trainable weight: only they pass a gradient
    back (the graph input's and its parameter-free successors' is never wanted)."""
    needed: set[str] = set()
    for node in graph:
        if trainable.get(node.id) or any(i in needed for i in node.inputs):
            needed.add(node.id)
    return needed


def loss_and_grads(graph: Graph, state_dict: Mapping[str, object], x: np.ndarray,
                   y: np.ndarray, *, label_smoothing: float = 0.0, training: bool = True,
                   seed: int = 0) -> Gradients:
    """The cross-entropy of `graph` on a batch, its gradient for every trainable weight,
    the logits and the updated BatchNorm statistics (`Gradients`).

    Args:
        graph: one input, one output of K logits (flat or K x 1 x 1).
        state_dict: the weights, keyed as `lower(graph).state_dict()` (numpy arrays or
            torch tensors; `nasgraph.init_state(graph)` gives one); not modified.
        x: N x C x H x W inputs (the graph input's shape); cast to float32.
        y: N integer labels in 0..K-1.
        label_smoothing: as torch's `F.cross_entropy`.
        training: BatchNorm on batch statistics (updating its running ones) and dropout
            on, as torch's `module.train()`; False: running statistics, dropout off
            (`module.eval()`), gradients of that function.
        seed: draws the dropout masks (`dropout_mask`).

    The first call in a process limits BLAS to one thread and, under glibc, keeps freed
    blocks of up to 32 MiB in the heap for reuse (`_reuse_freed_memory`): process-wide
    settings, made for the loops that call this step after step.

    Example:
        >>> import numpy as np, nasgraph
        >>> from nasgraph.backends.numba.grad import loss_and_grads
        >>> g = nasgraph.zoo.get("lenet5")
        >>> x = np.zeros((4, 1, 32, 32), np.float32)
        >>> out = loss_and_grads(g, nasgraph.init_state(g), x, np.arange(4))
        >>> out.grads["c1.weight"].shape, out.logits.shape
        ((6, 1, 5, 5), (4, 10))
    """
    plan = _plan(graph)
    _check_rules(graph, plan.kinds)
    x4, labels = _check(plan, graph, x, y, label_smoothing)
    state = _state(plan, graph, state_dict)
    _one_blas_thread()
    _reuse_freed_memory()
    per_node: dict[str, Weights] = {
        node_id: {suffix: state[key] for suffix, key in entries if key in state}
        for node_id, entries in plan.by_node.items()}
    run = Run(inputs={plan.input.id: x4}, training=training,
              threads=numba.get_num_threads(), seed=seed)

    saved: dict[str, object] = {}
    values: dict[str, np.ndarray] = {}
    for node in graph:
        xs = [values[i] for i in node.inputs]
        if node.id in plan.absorbed:  # its BatchNorm or add applied it
            values[node.id], saved[node.id] = xs[0], None
        elif node.id in plan.into_add:  # the add after it writes its output
            values[node.id], saved[node.id] = batchnorm_act_forward(
                node, xs, per_node.get(node.id, {}), run, deferred=True)
        elif node.id in plan.fused and node.kind == "batchnorm2d":
            pad, planes = _written_for(graph, node, xs[0], plan, training)
            values[node.id], saved[node.id] = batchnorm_act_forward(
                node, xs, per_node.get(node.id, {}), run, plan.fused[node.id], pad,
                deferred=_deferred_for(graph, node, xs[0], plan), planes=planes)
        elif node.id in plan.fused:
            values[node.id], saved[node.id] = add_act_forward(
                node, xs, per_node.get(node.id, {}), run, plan.fused[node.id])
        else:
            values[node.id], saved[node.id] = BACKWARD[node.kind].forward(
                node, xs, per_node.get(node.id, {}), run)
    logits = values[plan.output.id].reshape(x4.shape[0], -1)
    values.clear()  # what the backward needs is in `saved`
    loss, g_logits = cross_entropy(logits, labels, label_smoothing)

    grads = _backward(graph, run, saved, per_node, plan,
                      {plan.output.id: g_logits.reshape(*g_logits.shape, 1, 1)})
    for key, (_, spec) in plan.specs.items():  # weights no gradient reached
        if spec.trainable and key not in grads:
            grads[key] = np.zeros(spec.shape, np.float32)
    buffers = dict(run.buffers)
    for key in plan.counters:
        if training and key in state_dict:
            buffers[key] = np.asarray(state_dict[key]) + 1
    return Gradients(loss, grads, buffers, logits.copy())


def _backward(graph: Graph, run: Run, saved: dict[str, object],
              per_node: Mapping[str, Weights], plan: _Plan, seeds: dict[str, np.ndarray]
              ) -> dict[str, np.ndarray]:
    """Walks `graph` in reverse from the output gradients `seeds` (node id -> dL/d output):
    each node's backward gets the sum of what its consumers sent it (unsummed, in `Terms`,
    where it sums them in its own first pass: `_takes_terms`; a strided 1x1 conv's as
    its values alone, `Spread`, which only those take), where a gradient flows
    (`plan.needed`). Returns the trainable weights' gradients, by state-dict key."""
    grad_keys, needed = plan.grad_keys, plan.needed
    incoming = dict(seeds)
    grads: dict[str, np.ndarray] = {}
    for node in reversed(graph.nodes):
        node_id = node.id
        gy = incoming.pop(node_id, None)
        ctx = saved.pop(node_id)
        if gy is None or node_id not in needed:
            continue
        if node_id in plan.absorbed:  # its producer's backward takes gy through it
            incoming[node.inputs[0]] = gy
            continue
        if isinstance(gy, Terms) and not _takes_terms(node, plan):
            gy = gy.total()
        elif isinstance(gy, Spread) and not _takes_terms(node, plan):
            gy = gy.dense()
        needs = [i in needed for i in node.inputs]
        result = _padded_dy(graph, node, gy, ctx, per_node, run, saved, plan, needs)
        g_inputs, g_weights = result or BACKWARD[node.kind].backward(
            node, gy, ctx, per_node.get(node_id, {}), run, needs)
        for suffix, key in grad_keys.get(node_id, ()):
            grads[key] = g_weights[suffix]
        for input_id, g, need in zip(node.inputs, g_inputs, needs, strict=True):
            if need:  # summed where it is read (`Terms`), never `+=` into another's
                prev = incoming.get(input_id)
                incoming[input_id] = g if prev is None else Terms(
                    (*prev, g) if isinstance(prev, Terms) else (prev, g))
    return grads


def _takes_terms(node: Node, plan: _Plan) -> bool:
    """Whether `node`'s backward takes its gradient in `Terms`: those whose first pass
    is an activation's derivative (`_rule.activation_grad`), an activation's own or the
    one an add applies (`_fused_activations`)."""
    return node.kind == "activation" or (node.kind == "add" and node.id in plan.fused)


def _written_for(graph: Graph, node: Node, x: np.ndarray, plan: _Plan, training: bool
                 ) -> tuple[tuple[int, int] | None, PlanesFor | None]:
    """How a BatchNorm writes its output for the conv that alone reads it, sparing the
    conv its copy: zero-padded in NHWC, the padding (`_conv_layouts.padded_x`), where its
    shape fits (`output_fits`) and the conv reads that; else, in training, as the conv's
    phase planes (`_conv_layouts.planes_x`), from the pass that computes the statistics,
    but for whole blocks of 16 channels (`padded_fits`), which never take the planes;
    None and None where neither, or the node is not such a BatchNorm."""
    conv_id = plan.conv_after.get(node.id)
    if conv_id is None:
        return None, None
    pad = padded_x(graph[conv_id], x.shape) if output_fits(x.shape) else None
    if pad is not None or padded_fits(x.shape):
        return pad, None
    return None, planes_x(graph[conv_id], x.shape) if training else None


def _deferred_for(graph: Graph, node: Node, x: np.ndarray, plan: _Plan) -> bool:
    """Whether a BatchNorm leaves its output (and its activation's) unwritten
    (`Normalized`) for the depthwise conv that alone reads it, which normalizes its input
    as it lays it out with the batch in the lanes (`_conv_paths.lanes_conv`): one
    write and one read of the tensor fewer, forward, and none kept for the backward."""
    conv_id = plan.conv_after.get(node.id)
    return conv_id is not None and lanes_conv(graph[conv_id].op, x.shape)


def _padded_dy(graph: Graph, node: Node, gy: np.ndarray, ctx: object,
               per_node: Mapping[str, Weights], run: Run, saved: dict[str, object],
               plan: _Plan, needs: list[bool]) -> tuple | None:
    """A BatchNorm's backward that writes dx in the layout the conv before it reads dy
    in, sparing the conv its copy: zero-padded NHWC (`_conv_layouts.padded_dy`) where its
    shape fits (`padded_fits`), else phase planes (`_conv_layouts.planes_dy`); None where
    the node is not such a BatchNorm, or the conv reads dy otherwise."""
    conv_id = plan.conv_before.get(node.id)
    if conv_id is None or not needs[0]:
        return None
    conv, wts = graph[conv_id], per_node.get(node.id, {})
    need_dx = conv.inputs[0] in plan.needed
    if padded_fits(ctx[0].shape):
        pad = padded_dy(conv, saved[conv_id], need_dx)
        return None if pad is None else batchnorm_backward_padded(node, gy, ctx, wts, run,
                                                                  pad)
    spec = planes_dy(conv, saved[conv_id], need_dx)
    return None if spec is None else batchnorm_backward_planes(node, gy, ctx, wts, run, spec)


def value_and_grad(graph: Graph, state_dict: MutableMapping[str, object], x: np.ndarray,
                   y: np.ndarray, *, label_smoothing: float = 0.0, training: bool = True,
                   seed: int = 0, update_buffers: bool = False
                   ) -> tuple[float, dict[str, np.ndarray]]:
    """The mean cross-entropy of `graph` on (x, y), and its gradient for each trainable
    weight (state-dict key -> float32 array), as torch autograd gives them for
    `lower(graph).train()` with these weights.

    Arguments as `loss_and_grads`, which also returns the logits and the updated
    BatchNorm statistics. `update_buffers=True` writes those into `state_dict` (each
    running statistic's entry replaced by a new array, `num_batches_tracked` counted up),
    as a torch training step updates the module's buffers.

    Example:
        >>> import numpy as np, nasgraph
        >>> from nasgraph.backends.numba.grad import value_and_grad
        >>> g = nasgraph.zoo.get("lenet5")
        >>> state = nasgraph.init_state(g)
        >>> x, y = np.ones((2, 1, 32, 32), np.float32), np.array([3, 7])
        >>> loss, grads = value_and_grad(g, state, x, y, label_smoothing=0.1)
        >>> loss > 0, sorted(grads)[:2]
        (True, ['c1.bias', 'c1.weight'])
    """
    result = loss_and_grads(graph, state_dict, x, y, label_smoothing=label_smoothing,
                            training=training, seed=seed)
    if update_buffers:
        state_dict.update(result.buffers)
    return result.loss, result.grads
