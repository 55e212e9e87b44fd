"""Per op kind, how it runs in training and how its gradient flows back: `BACKWARD`.

A `Rule` is two functions. `forward(node, xs, weights, run)` returns the node's output
and what its backward needs (saved); `backward(node, gy, saved, weights, run, needs)`
returns the gradients of its inputs (None where `needs` says no gradient is wanted) and
of its trainable weights (suffix -> array). `weights` holds the node's state-dict entries
by suffix (`weight`, `bias`, `running_mean`, ...). Every tensor is a C-contiguous float32
N x C x H x W array; flat ones are N x F x 1 x 1. No rule writes into an array it did
not allocate: an input's gradient may be another node's.
"""

from __future__ import annotations

import zlib

import numpy as np

from nasgraph.backends.numba import _backward_conv as conv_b
from nasgraph.backends.numba import _backward_elementwise as elem_b
from nasgraph.backends.numba import _backward_resample as resample_b
from nasgraph.backends.numba import _batchnorm as bn_b
from nasgraph.backends.numba import _batchnorm_nhwc as nhwc_b
from nasgraph.backends.numba import _elementwise as elem_k
from nasgraph.backends.numba import _planes as planes_k
from nasgraph.backends.numba import _resample as resample_k
from nasgraph.backends.numba._activations import ACT_CODES
from nasgraph.backends.numba._conv_rules import (
    conv_backward,
    conv_forward,
    fused_conv_backward,
    fused_conv_forward,
)
from nasgraph.backends.numba._rule import (
    F32,
    NO_GRAD,
    Grads,
    Normalized,
    Rule,
    Run,
    Summed,
    Weights,
    activate,
    activation_grad,
    empty,
    shape4,
)
from nasgraph.errors import GraphError
from nasgraph.ir import Node

# ------------------------------------------------------------------ normalization


def batchnorm_act_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run,
                          act: int = 0, pad: tuple[int, int] | None = None,
                          deferred: bool = False, planes: planes_k.PlanesFor | None = None
                          ) -> tuple[np.ndarray | conv_b.PaddedNHWC | Normalized
                                     | planes_k.PhasePlanes, tuple]:
    """BatchNorm's forward, and where `act` is a code `elem_b.fusable` takes (ReLU,
    ReLU6) the activation that alone reads its output, in the same pass: one read and
    one write of the tensor fewer (`grad._plan` pairs them). The backward takes the
    gradient through the activation in its own passes, the derivative recomputed from x
    (`bn_b.batchnorm_backward`): the output is not kept. With `pad`, the output is
    written zero-padded by it in NHWC (`conv_b.PaddedNHWC`), for the conv that alone
    reads it (`grad._written_for`); with `planes`, as that conv's phase planes
    (`planes_k.PhasePlanes`); `deferred`, it is not written (`Normalized`), for the add
    that alone reads it (`grad._Plan.into_add`)."""
    # saved: x, the mean and 1 / sqrt(var + eps) it normalized with (float64, per
    # channel), the float32 scale and shift of out = act(x * scale + shift), and the
    # activation's code
    op, x = node.op, xs[0]
    # the NCHW output, written by this pass
    here = pad is None and planes is None and not deferred
    out = np.empty_like(x) if here else NO_GRAD
    if not run.training:
        mean = wts["running_mean"].astype(np.float64)
        invstd = 1.0 / np.sqrt(wts["running_var"].astype(np.float64) + op.eps)
        scale = (wts["weight"] * invstd).astype(F32)
        shift = (wts["bias"] - mean * wts["weight"] * invstd).astype(F32)
        if planes is not None:
            raise GraphError(f"node {node.id!r} (batchnorm2d): phase planes are written in "
                             "training only")
        if here:
            elem_k.scale_shift(x, scale, shift, out, 0, act)
    else:
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if count < 2:
            raise GraphError(f"node {node.id!r} (batchnorm2d): training needs more than one "
                             f"value per channel, got input {x.shape}; hint: a larger batch")
        mean, var = np.empty(x.shape[1]), np.empty(x.shape[1])
        scale, shift = np.empty(x.shape[1], F32), np.empty(x.shape[1], F32)
        written = None if planes is None else planes_k.empty_planes(x.shape, planes)
        bn_b.batchnorm_train(x, wts["weight"], wts["bias"], op.eps, out, mean, var, scale,
                               shift, act, run.threads, here,
                               None if written is None else _into(written))
        if written is not None:
            out = written
        key = node.param_key
        running_mean, running_var, invstd = bn_b.running_statistics(
            mean, var, wts["running_mean"], wts["running_var"], op.momentum, count, op.eps)
        run.buffers[f"{key}.running_mean"] = running_mean
        run.buffers[f"{key}.running_var"] = running_var
    saved = (x, mean, invstd, scale, shift, act)
    if deferred:
        return Normalized(x, scale, shift, act, mean.astype(F32)), saved
    if pad is not None:
        return _padded_output(x, scale, shift, act, pad, run), saved
    return out, saved


def _into(planes: planes_k.PhasePlanes) -> tuple:
    # a stride-1 conv's phase planes as the BatchNorm kernels write them
    return planes.xq, planes.wq, *planes.pad


def _padded_output(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, act: int,
                   pad: tuple[int, int], run: Run) -> conv_b.PaddedNHWC:
    n, c, h, w = x.shape
    xp = np.empty((n, h + 2 * pad[0], w + 2 * pad[1], c), F32)
    nhwc_b.batchnorm_out_padded_nhwc(x, scale, shift, act, xp, run.threads)
    return conv_b.PaddedNHWC(xp, pad)


def _summed(gy: np.ndarray | Summed) -> tuple[np.ndarray, np.ndarray | None]:
    # a BatchNorm's output gradient, and the sums its backward takes over it where the
    # conv after it took them (`Summed`)
    return (gy.g, gy.sums) if isinstance(gy, Summed) else (gy, None)


def _batchnorm_backward(node: Node, gy: np.ndarray | Summed, saved: tuple, wts: Weights,
                        run: Run, needs: list[bool]) -> Grads:
    x, mean, invstd, scale, shift, act = saved  # gy: act's output's, where act
    gy, sums = _summed(gy)
    gx = np.empty_like(x) if needs[0] else NO_GRAD
    ggamma, gbeta = np.empty(x.shape[1], F32), np.empty(x.shape[1], F32)
    bn_b.batchnorm_backward(x, gy, wts["weight"], mean, invstd, gx, ggamma, gbeta,
                              run.training, needs[0], run.threads, scale, shift, act,
                              sums=sums)
    return [gx if needs[0] else None], {"weight": ggamma, "bias": gbeta}


def batchnorm_backward_padded(node: Node, gy: np.ndarray, saved: tuple, wts: Weights,
                              run: Run, pad: tuple[int, int]) -> Grads:
    """BatchNorm's backward with dx written zero-padded by `pad` in NHWC
    (`conv_b.PaddedNHWC`), for the conv that produced its input to read as it is
    (`_conv_layouts.padded_dy`), where its shape fits (`nhwc_b.padded_fits`)."""
    x, mean, invstd, scale, shift, act = saved
    gy, sums = _summed(gy)
    n, c, h, w = x.shape
    gp = np.empty((n, h + 2 * pad[0], w + 2 * pad[1], c), F32)
    ggamma, gbeta = np.empty(c, F32), np.empty(c, F32)
    bn_b.batchnorm_backward(x, gy, wts["weight"], mean, invstd, NO_GRAD, ggamma, gbeta,
                              run.training, False, run.threads, scale, shift, act,
                              sums=sums)
    nhwc_b.batchnorm_dx_padded_nhwc(x, gy, wts["weight"], mean, invstd, ggamma, gbeta,
                                    run.training, scale, shift, act, gp, run.threads)
    return [conv_b.PaddedNHWC(gp, pad)], {"weight": ggamma, "bias": gbeta}


def batchnorm_backward_planes(node: Node, gy: np.ndarray, saved: tuple, wts: Weights,
                              run: Run, spec: planes_k.PlanesFor) -> Grads:
    """BatchNorm's backward with dx written as phase planes (`spec`), for the conv that
    produced its input to read as they are (`_conv_layouts.planes_dy`)."""
    x, mean, invstd, scale, shift, act = saved
    gy, sums = _summed(gy)
    gq = planes_k.empty_planes(x.shape, spec)
    ggamma, gbeta = np.empty(x.shape[1], F32), np.empty(x.shape[1], F32)
    bn_b.batchnorm_backward(x, gy, wts["weight"], mean, invstd, NO_GRAD, ggamma, gbeta,
                              run.training, True, run.threads, scale, shift, act, _into(gq),
                              sums)
    return [gq], {"weight": ggamma, "bias": gbeta}


def _layernorm_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                       ) -> tuple[np.ndarray, tuple]:
    # statistics over the channels of each pixel (axis 1), in float64; saved: the
    # normalized x and 1 / sqrt(var + eps), N x 1 x H x W
    x = xs[0].astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    invstd = 1.0 / np.sqrt(x.var(axis=1, keepdims=True) + node.op.eps)
    xhat = (x - mean) * invstd
    w, b = wts["weight"][None, :, None, None], wts["bias"][None, :, None, None]
    return (xhat * w + b).astype(F32), (xhat, invstd)


def _layernorm_backward(node: Node, gy: np.ndarray, saved: tuple, wts: Weights, run: Run,
                        needs: list[bool]) -> Grads:
    # dx = invstd * (g - mean_c(g) - xhat * mean_c(g * xhat)), g = dy * weight
    xhat, invstd = saved
    g64 = gy.astype(np.float64)
    grads = {"weight": (g64 * xhat).sum(axis=(0, 2, 3)).astype(F32),
             "bias": g64.sum(axis=(0, 2, 3)).astype(F32)}
    if not needs[0]:
        return [None], grads
    g = g64 * wts["weight"][None, :, None, None]
    gx = invstd * (g - g.mean(axis=1, keepdims=True)
                   - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return [gx.astype(F32)], grads


# ------------------------------------------------------------------ activations


def _activation_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                        ) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty_like(xs[0])
    activate(xs[0], out, ACT_CODES[node.op.fn])
    return out, xs[0]


def _activation_backward(node: Node, gy: np.ndarray, x: np.ndarray, wts: Weights, run: Run,
                         needs: list[bool]) -> Grads:
    return [activation_grad(x, gy, ACT_CODES[node.op.fn]) if needs[0] else None], {}


# ------------------------------------------------------------------ pooling and resizing


def _maxpool_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                     ) -> tuple[np.ndarray, tuple]:
    op, x = node.op, xs[0]
    out = empty(x, node)
    argmax = np.empty(out.shape, np.int32)
    resample_k.maxpool2d(x, out, 0, argmax, *op.kernel, *op.strides, *op.padding,
                         run.threads)
    return out, (argmax, x.shape)


def _maxpool_backward(node: Node, gy: np.ndarray, saved: tuple, wts: Weights, run: Run,
                      needs: list[bool]) -> Grads:
    argmax, shape = saved
    gx = np.empty(shape, F32)
    resample_b.maxpool2d_backward(gy, argmax, gx)
    return [gx], {}


def _avgpool_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                     ) -> tuple[np.ndarray, tuple]:
    op, x = node.op, xs[0]
    out = empty(x, node)
    resample_k.avgpool2d(x, out, 0, *op.kernel, *op.strides, *op.padding,
                         int(op.count_include_pad))
    return out, x.shape


def _avgpool_backward(node: Node, gy: np.ndarray, shape: tuple, wts: Weights, run: Run,
                      needs: list[bool]) -> Grads:
    op = node.op
    gx = np.zeros(shape, F32)
    resample_b.avgpool2d_backward(gy, gx, *op.kernel, *op.strides, *op.padding,
                                  int(op.count_include_pad))
    return [gx], {}


def _adaptive_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                      ) -> tuple[np.ndarray, tuple]:
    x, out = xs[0], empty(xs[0], node)
    if out.shape[2:] == (1, 1):  # a global pool: one mean a plane
        hw = x.shape[2] * x.shape[3]
        if run.threads == 1:
            resample_b.global_avgpool_planes(x.reshape(-1), out.reshape(-1), hw, 0,
                                             out.size)
        else:
            resample_b.global_avgpool_parallel(x.reshape(-1), out.reshape(-1), hw,
                                               run.threads)
    else:
        resample_k.adaptive_avgpool(x, out, 0)
    return out, x.shape


def _adaptive_backward(node: Node, gy: np.ndarray, shape: tuple, wts: Weights, run: Run,
                       needs: list[bool]) -> Grads:
    if gy.shape[2:] == (1, 1):  # a global pool: each plane its mean's gradient / (H x W)
        gx = np.empty(shape, F32)
        hw = shape[2] * shape[3]
        if run.threads == 1:
            resample_b.global_avgpool_backward_planes(gy.reshape(-1), gx.reshape(-1), hw,
                                                      0, gy.size)
        else:
            resample_b.global_avgpool_backward_parallel(gy.reshape(-1), gx.reshape(-1), hw,
                                                        run.threads)
        return [gx], {}
    gx = np.zeros(shape, F32)
    resample_b.adaptive_avgpool_backward(gy, gx)
    return [gx], {}


def upsample_scales(node: Node, h: int, w: int) -> tuple[float, float]:
    """Upsample's source steps per output pixel (h, w) as torch computes them in float32
    (the executor's `nodes._upsample` does the same)."""
    op, (ho, wo) = node.op, (node.type.height, node.type.width)
    if op.align_corners:  # (in - 1) / (out - 1), 0 for a single output
        return tuple(float(F32(i - 1) / F32(o - 1)) if o > 1 else 0.0
                     for i, o in ((h, ho), (w, wo)))
    if op.scale is not None:
        return (float(F32(1.0 / op.scale)),) * 2
    return tuple(float(F32(i) / F32(o)) for i, o in ((h, ho), (w, wo)))


def _upsample_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                      ) -> tuple[np.ndarray, tuple]:
    op, x = node.op, xs[0]
    out = empty(x, node)
    resample_k.upsample(x, out, 0, int(op.mode == "bilinear"), int(op.align_corners),
                        *upsample_scales(node, *x.shape[2:]))
    return out, x.shape


def _upsample_backward(node: Node, gy: np.ndarray, shape: tuple, wts: Weights, run: Run,
                       needs: list[bool]) -> Grads:
    op = node.op
    gx = np.zeros(shape, F32)
    resample_b.upsample_backward(gy, gx, int(op.mode == "bilinear"), int(op.align_corners),
                                 *upsample_scales(node, *shape[2:]))
    return [gx], {}


# ------------------------------------------------------------------ merging


def _concat_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                    ) -> tuple[np.ndarray, list[int]]:
    return np.concatenate(xs, axis=1), [x.shape[1] for x in xs]


def _concat_backward(node: Node, gy: np.ndarray, sizes: list[int], wts: Weights, run: Run,
                     needs: list[bool]) -> Grads:
    bounds = np.cumsum([0, *sizes])
    return [np.ascontiguousarray(gy[:, a:b]) if need else None
            for a, b, need in zip(bounds[:-1], bounds[1:], needs, strict=True)], {}


def _add_weights(node: Node) -> list[float]:
    return list(node.op.weights or [1.0] * len(node.inputs))


def add_act_forward(node: Node, xs: list[np.ndarray | Normalized], wts: Weights, run: Run,
                    act: int = 0) -> tuple[np.ndarray, tuple | None]:
    """The weighted sum of the inputs, and where `act` is a code `elem_b.fusable` takes,
    the activation that alone reads it, as BatchNorm's forward applies one
    (`batchnorm_act_forward`): a residual block's add and ReLU in one pass over two inputs
    (`elem_b.add_pair`), where they took three. Of two, one or both may be a BatchNorm's
    output not yet written (`Normalized`), computed in that same pass
    (`elem_b.add_normalized`). saved: the output and the code where an activation was
    applied (its derivative's source), else None."""
    weights = _add_weights(node)
    out = np.empty(xs[0].shape, F32)
    if len(xs) == 2 and isinstance(xs[1], Normalized) and not isinstance(xs[0], Normalized):
        xs, weights = xs[::-1], weights[::-1]  # a sum's terms commute, bit for bit
    if isinstance(xs[0], Normalized):
        (a, sa, ta), b = xs[0][:3], xs[1]  # an add's inputs come with no activation
        both = isinstance(b, Normalized)
        sb, tb = (b.scale, b.shift) if both else (sa, ta)
        elem_b.add_normalized(a, sa, ta, float(weights[0]), b.x if both else b, sb, tb,
                              float(weights[1]), both, out, act)
    elif len(xs) == 2:
        elem_b.add_pair(xs[0], float(weights[0]), xs[1], float(weights[1]), out, act)
    else:
        for k, (x, w) in enumerate(zip(xs, weights, strict=True)):
            elem_k.add_scaled(x, float(w), out, 0, int(k > 0))
        if act:
            activate(out, out, act)
    return out, ((out, act) if act else None)


def _add_backward(node: Node, gy: np.ndarray, saved: tuple | None, wts: Weights, run: Run,
                  needs: list[bool]) -> Grads:
    if saved is not None:  # gy is the activation's: through it first (`add_act_forward`)
        y, act = saved
        gy = activation_grad(y, gy, act)
    return [None if not need else gy if w == 1.0 else gy * F32(w)
            for w, need in zip(_add_weights(node), needs, strict=True)], {}


def _mul_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
    a, b = xs if xs[0].size >= xs[1].size else xs[::-1]
    out = np.empty_like(a)
    elem_k.mul(a, b, out, 0)
    return out, xs


def _mul_backward(node: Node, gy: np.ndarray, xs: list[np.ndarray], wts: Weights, run: Run,
                  needs: list[bool]) -> Grads:
    grads: list[np.ndarray | None] = []
    for k, (x, need) in enumerate(zip(xs, needs, strict=True)):
        other = xs[1 - k]
        if not need:
            grads.append(None)
        elif x.shape == gy.shape:
            grads.append(gy * other)  # the other factor broadcasts when it is C x 1 x 1
        else:  # x is the C x 1 x 1 factor: sum over H x W
            gx = np.empty_like(x)
            elem_b.broadcast_product_backward(other, gy, gx)
            grads.append(gx)
    return grads, {}


def _channel_pad_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                         ) -> tuple[np.ndarray, None]:
    x, before = xs[0], node.op.before
    out = np.zeros((x.shape[0], *shape4(node)), F32)
    out[:, before:before + x.shape[1]] = x
    return out, None


def _channel_pad_backward(node: Node, gy: np.ndarray, saved: None, wts: Weights, run: Run,
                          needs: list[bool]) -> Grads:
    before, c = node.op.before, gy.shape[1] - node.op.before - node.op.after
    return [np.ascontiguousarray(gy[:, before:before + c])], {}


def _shuffled(a: np.ndarray, rows: int) -> np.ndarray:
    # N x C x H x W seen as N x rows x C/rows x H x W, transposed: channel r * C/rows + j
    # goes to j * rows + r
    n, c, h, w = a.shape
    return np.ascontiguousarray(
        a.reshape(n, rows, c // rows, h, w).transpose(0, 2, 1, 3, 4)).reshape(n, c, h, w)


def _channel_shuffle_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                             ) -> tuple[np.ndarray, None]:
    return _shuffled(xs[0], node.op.groups), None


def _channel_shuffle_backward(node: Node, gy: np.ndarray, saved: None, wts: Weights, run: Run,
                              needs: list[bool]) -> Grads:
    # the inverse permutation: the transpose of the C/groups x groups view
    return [_shuffled(gy, gy.shape[1] // node.op.groups)], {}


def _channel_slice_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                           ) -> tuple[np.ndarray, tuple[int, ...]]:
    return np.ascontiguousarray(xs[0][:, node.op.start:node.op.stop]), xs[0].shape


def _channel_slice_backward(node: Node, gy: np.ndarray, shape: tuple[int, ...], wts: Weights,
                            run: Run, needs: list[bool]) -> Grads:
    gx = np.zeros(shape, F32)  # the channels outside the slice get no gradient
    gx[:, node.op.start:node.op.stop] = gy
    return [gx], {}


# ------------------------------------------------------------------ classifier and views


def _linear_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                    ) -> tuple[np.ndarray, np.ndarray]:
    # N x F x 1 x 1 -> N x O x 1 x 1 (sgemm); saved: x as N x F
    x = xs[0].reshape(xs[0].shape[0], -1)
    out = x @ wts["weight"].T
    if node.op.bias:
        out += wts["bias"]
    return out.reshape(x.shape[0], -1, 1, 1), x


def _linear_backward(node: Node, gy: np.ndarray, x: np.ndarray, wts: Weights, run: Run,
                     needs: list[bool]) -> Grads:
    g = gy.reshape(gy.shape[0], -1)  # N x O
    grads = {"weight": g.T @ x}
    if node.op.bias:
        grads["bias"] = g.sum(axis=0, dtype=np.float64).astype(F32)
    gx = (g @ wts["weight"]).reshape(*x.shape, 1, 1) if needs[0] else None
    return [gx], grads


def _flatten_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                     ) -> tuple[np.ndarray, tuple]:
    return xs[0].reshape(xs[0].shape[0], -1, 1, 1), xs[0].shape


def _flatten_backward(node: Node, gy: np.ndarray, shape: tuple, wts: Weights, run: Run,
                      needs: list[bool]) -> Grads:
    return [gy.reshape(shape)], {}


def dropout_mask(seed: int, node_id: str, shape: tuple[int, ...], p: float) -> np.ndarray:
    """The multiplier dropout node `node_id` applies in a training pass with `seed`: 0 with
    probability p, else 1 / (1 - p) (float32, `shape`). Drawn from
    `np.random.default_rng([seed, crc32(node_id)])`: the same seed gives the same masks,
    and each node its own."""
    rng = np.random.default_rng([seed, zlib.crc32(node_id.encode())])
    keep = rng.random(shape, dtype=F32) >= p
    return keep.astype(F32) * F32(1.0 / (1.0 - p))


def _dropout_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    if not run.training or node.op.p == 0:
        return xs[0], None
    mask = dropout_mask(run.seed, node.id, xs[0].shape, node.op.p)
    return xs[0] * mask, mask


def _dropout_backward(node: Node, gy: np.ndarray, mask: np.ndarray | None, wts: Weights,
                      run: Run, needs: list[bool]) -> Grads:
    return [gy if mask is None else gy * mask], {}


def _pass_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                  ) -> tuple[np.ndarray, None]:
    return xs[0], None


def _pass_backward(node: Node, gy: np.ndarray, saved: None, wts: Weights, run: Run,
                   needs: list[bool]) -> Grads:
    return [gy], {}


def _input_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                   ) -> tuple[np.ndarray, None]:
    return run.inputs[node.id], None


def _input_backward(node: Node, gy: np.ndarray, saved: None, wts: Weights, run: Run,
                    needs: list[bool]) -> Grads:
    return [], {}


BACKWARD: dict[str, Rule] = {
    "input": Rule(_input_forward, _input_backward),
    "output": Rule(_pass_forward, _pass_backward),
    "identity": Rule(_pass_forward, _pass_backward),
    "conv2d": Rule(conv_forward, conv_backward),
    "fused_conv2d": Rule(fused_conv_forward, fused_conv_backward),
    "batchnorm2d": Rule(batchnorm_act_forward, _batchnorm_backward),
    "layernorm2d": Rule(_layernorm_forward, _layernorm_backward),
    "activation": Rule(_activation_forward, _activation_backward),
    "maxpool2d": Rule(_maxpool_forward, _maxpool_backward),
    "avgpool2d": Rule(_avgpool_forward, _avgpool_backward),
    "global_avgpool": Rule(_adaptive_forward, _adaptive_backward),
    "adaptive_avgpool2d": Rule(_adaptive_forward, _adaptive_backward),
    "upsample": Rule(_upsample_forward, _upsample_backward),
    "concat": Rule(_concat_forward, _concat_backward),
    "add": Rule(add_act_forward, _add_backward),
    "mul": Rule(_mul_forward, _mul_backward),
    "channel_pad": Rule(_channel_pad_forward, _channel_pad_backward),
    "channel_shuffle": Rule(_channel_shuffle_forward, _channel_shuffle_backward),
    "channel_slice": Rule(_channel_slice_forward, _channel_slice_backward),
    "linear": Rule(_linear_forward, _linear_backward),
    "flatten": Rule(_flatten_forward, _flatten_backward),
    "dropout": Rule(_dropout_forward, _dropout_backward),
}
