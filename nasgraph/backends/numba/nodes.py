"""How each node kind runs: its weights packed once, and a node bound to its kernel call.

`pack_conv` (a conv's weights packed for its strategy), `PACKERS` (other kinds -> packing
of the node's weights from the state dict) and `BINDERS` (kind -> a `Step`: the node's
kernel call on fixed arrays) are what `executor.Executor` uses to turn a planned graph
into a list of calls.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nasgraph.backends.numba import _chain as chain_k
from nasgraph.backends.numba import _conv as conv_k
from nasgraph.backends.numba import _depthwise as depthwise_k
from nasgraph.backends.numba import _elementwise as elem_k
from nasgraph.backends.numba import _resample as resample_k
from nasgraph.backends.numba import _tiled as tiled_k
from nasgraph.backends.numba import _winograd as winograd_k
from nasgraph.backends.numba._activations import ACT_CODES
from nasgraph.ir import Graph, Node
from nasgraph.passes import StateDict

Step = Callable[[int], None]  # called with numba's thread count (read once per call:
# numba.get_num_threads costs microseconds, as much as a small kernel)
# kind -> binds a node to its kernel: (node, packed weights + the executor's "scratch",
# input arrays, out, offset) -> step
Binder = Callable[[Node, dict, list[np.ndarray], np.ndarray, int], Step]


_NO_RES = np.zeros((1, 1, 1, 1), np.float32)
_NO_BIAS = np.zeros(1, np.float32)
# conv strategies that read a zero-padded NHWC input and write NCHW or padded NHWC
NHWC_STRATEGIES = ("tiled", "winograd", "depthwise_nhwc")


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


# ------------------------------------------------------------------ weight packing


# where a 3x3 stride-1 conv runs Winograd: at least this many input channels and this
# many (4x4 output tiles a sample x input channels); or, with at least WINOGRAD_BATCHED_CIN
# input channels, this many over a call's samples; below, the tiled kernel is faster
# (the measurements: docs/benchmarks.md, "Thresholds of the numba executor")
WINOGRAD_MIN_CIN = 16
WINOGRAD_MIN_WORK = 256
WINOGRAD_BATCHED_CIN = 32


def winograd_from(node: Node, in_per_group: int) -> int | None:
    """The smallest batch from which conv `node` runs Winograd F(4x4, 3x3) (3x3, stride
    1, no dilation, ungrouped, at least WINOGRAD_MIN_CIN input channels, and
    WINOGRAD_MIN_WORK tiles x input channels a sample, or, from WINOGRAD_BATCHED_CIN
    input channels on, a call), or None where it never does."""
    op, out = node.op, node.type
    if op.kernel != (3, 3) or op.stride != (1, 1) or op.dilation != (1, 1) \
            or op.groups != 1 or in_per_group < WINOGRAD_MIN_CIN:
        return None
    work = -(-out.height // 4) * -(-out.width // 4) * in_per_group  # a sample
    if work >= WINOGRAD_MIN_WORK:
        return 1
    if in_per_group < WINOGRAD_BATCHED_CIN:
        return None
    return -(-WINOGRAD_MIN_WORK // work)


def conv_strategy(node: Node, in_per_group: int, winograd: bool = True) -> str:
    """How a conv node runs at batch 1, judged on its own: "winograd" (F(4x4, 3x3),
    `_winograd`, where `winograd_from` gives 1; a conv it gives a larger batch runs tiled
    here and switches at that batch, `at_batch`), "tiled" (the register-tiled NHWC kernel:
    other ungrouped spatial kernels with no dilation along W and at least one full pixel
    tile, few-channel stems included, strided 1x1 convs, which gemm would gather first,
    and the 1x1 convs sgemm does badly), "depthwise_nhwc" (one channel per group, at
    most DEPTHWISE_NHWC_PIXELS output pixels: `_depthwise`), "depthwise" (other convs
    with one input channel per group: the direct NCHW kernel) or "gemm" ((im2col +)
    sgemm: other 1x1 and grouped convs, outputs smaller than a tile).

    sgemm (OpenBLAS, one thread) is slow where Cin is large and Cout or the pixels few: a
    1x1 conv with Cin >= 160 and at most 196 pixels or fewer than 64 outputs runs tiled,
    the rest stays gemm (docs/benchmarks.md, "Thresholds of the numba executor").
    `winograd=False`: never "winograd" (those convs run tiled)."""
    op, out = node.op, node.type
    kh, kw = op.kernel
    pixels = out.height * out.width
    if winograd and winograd_from(node, in_per_group) == 1:
        return "winograd"
    pointwise_tiled = in_per_group >= 160 and (pixels <= 196 or out.channels < 64)
    if op.groups == 1 and (kh * kw > 1 or op.stride != (1, 1) or pointwise_tiled) \
            and op.dilation[1] == 1 and pixels >= tiled_k.R:
        return "tiled"
    if in_per_group == 1:
        nhwc = out.channels == op.groups and pixels <= DEPTHWISE_NHWC_PIXELS
        return "depthwise_nhwc" if nhwc else "depthwise"
    return "gemm"


CONV_KINDS = ("conv2d", "fused_conv2d")
# depthwise convs (one channel per group, channel multiplier 1) with at most this many
# output pixels run in NHWC (`_depthwise`); on larger outputs the NCHW kernel is faster
# once the copy from NCHW is counted (docs/benchmarks.md, "Thresholds of the numba executor")
DEPTHWISE_NHWC_PIXELS = 196


def conv_strategies(graph: Graph, winograd: bool = True) -> dict[str, str]:
    """Each conv's strategy at batch 1: its own (`conv_strategy`), except that a conv
    reading a conv that runs in NHWC runs in NHWC too where it can: a 1x1 stride-1 conv
    tiled rather than gemm, a depthwise conv in NHWC at any size. Its input then needs no
    copy from NCHW, nor, when every reader of it is NHWC, does the conv before write NCHW
    (`executor.nhwc_outputs`); docs/benchmarks.md, "Thresholds of the numba executor",
    has what it saves."""
    chosen: dict[str, str] = {}
    for node in graph:
        if node.kind not in CONV_KINDS:
            continue
        op = node.op
        cig = graph[node.inputs[0]].type.channels // op.groups
        strategy = conv_strategy(node, cig, winograd)
        if chosen.get(node.inputs[0]) in NHWC_STRATEGIES:
            if strategy == "gemm" and op.groups == 1 and op.kernel == (1, 1) \
                    and op.stride == (1, 1) and node.type.height * node.type.width >= tiled_k.R:
                strategy = "tiled"
            elif strategy == "depthwise" and node.type.channels == op.groups:
                strategy = "depthwise_nhwc"
        chosen[node.id] = strategy
    return chosen


def _pack_winograd(w: np.ndarray) -> dict:
    packed = winograd_k.pack_weights(w)
    cout, cin = w.shape[:2]
    return {"w": _f32(packed), "strategy": "winograd",
            "zeros": np.zeros(packed.shape[0] * packed.shape[1] * tiled_k.V, np.float32),
            "work_size": winograd_k.work_size(cin, cout)}


def pack_conv(node: Node, state: StateDict, strategy: str, winograd: bool = True) -> dict:
    """A conv node's weights, packed for its strategy at batch 1 (`conv_strategies`), with
    its bias, activation code and, for Winograd, the size of work buffer it wants per
    thread. A tiled conv that runs Winograd from a larger batch on also holds that
    packing, under "winograd", and that batch, under "winograd_from" (`at_batch`)."""
    op = node.op
    w = state[f"{node.param_key}.weight"]  # Cout x Cin/G x kh x kw
    cout, cig, kh, kw = w.shape
    if strategy == "winograd":
        extra = _pack_winograd(w)
    elif strategy == "tiled":
        extra = {"w": _f32(tiled_k.pack_weights(w))}
        first = winograd_from(node, cig)
        if winograd and first is not None:  # both NHWC: the same buffers either way
            extra |= {"winograd": _pack_winograd(w), "winograd_from": first}
    elif strategy == "depthwise_nhwc":
        extra = {"w": depthwise_k.pack_weights(w)}
    elif strategy == "depthwise":
        extra = {"w": _f32(w.reshape(cout, kh, kw))}
    else:
        extra = {"w": _f32(w.reshape(op.groups, cout // op.groups, cig * kh * kw))}
    bias = state.get(f"{node.param_key}.bias") if op.bias else None
    if strategy in NHWC_STRATEGIES:  # zero-padded to whole blocks of channels
        bias = tiled_k.pack_bias(bias, cout)
    return {"strategy": strategy,
            "bias": _NO_BIAS if bias is None else _f32(bias),
            "has_bias": int(bias is not None), "act": ACT_CODES[getattr(op, "act", None)],
            **extra}


def at_batch(packed: dict, batch: int) -> dict:
    """A conv's packed parameters (`pack_conv`) as it runs on `batch` samples: the
    Winograd ones from its "winograd_from" batch on."""
    if "winograd" in packed and batch >= packed["winograd_from"]:
        return {**packed, **packed["winograd"]}
    return packed


def _pack_bn(node: Node, state: StateDict) -> dict:
    key = node.param_key
    scale = state[f"{key}.weight"] / np.sqrt(state[f"{key}.running_var"] + node.op.eps)
    shift = state[f"{key}.bias"] - state[f"{key}.running_mean"] * scale
    return {"scale": _f32(scale), "shift": _f32(shift), "act": 0}


def _pack_act(node: Node, state: StateDict) -> dict:
    c = node.type.channels
    return {"scale": np.ones(c, np.float32), "shift": np.zeros(c, np.float32),
            "act": ACT_CODES[node.op.fn]}


def _pack_linear(node: Node, state: StateDict) -> dict:
    bias = state.get(f"{node.param_key}.bias") if node.op.bias else None
    return {"wt": _f32(state[f"{node.param_key}.weight"].T),
            "bias": _NO_BIAS if bias is None else _f32(bias), "has_bias": int(bias is not None)}


def _pack_layernorm(node: Node, state: StateDict) -> dict:
    return {"weight": _f32(state[f"{node.param_key}.weight"]),
            "bias": _f32(state[f"{node.param_key}.bias"])}


# convs (CONV_KINDS) are packed by `pack_conv`, which also takes the Winograd switch
PACKERS: dict[str, Callable[[Node, StateDict], dict]] = {
    "batchnorm2d": _pack_bn, "activation": _pack_act, "linear": _pack_linear,
    "layernorm2d": _pack_layernorm,
}

# ------------------------------------------------------------------ binding nodes to kernels


def compiled(kernel, *args):
    """numba `kernel`'s compiled entry point for these arguments' types, compiled (or
    loaded from the cache) now. Called with arguments of the same types, it skips the
    dispatcher's matching of types: 0.85 instead of 1.35 us a call with 20 arguments, the
    order of a whole small kernel at batch 1."""
    return kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))


def _conv(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray, co: int) -> Step:
    op = node.op
    x, res = xs[0], (xs[1] if len(xs) > 1 else _NO_RES)
    has_res = int(len(xs) > 1)
    if p["strategy"] in NHWC_STRATEGIES:
        (ph, pw), (ho, wo) = op.pad, node.type.shape[1:]
        in_nhwc = p["in_pad"] >= 0  # stored padded NHWC by the tiled conv that made it
        x_off = 0
        if in_nhwc:  # padded by in_pad >= ph = pw: start in_pad - ph rows and columns in
            n, hp, wp, c = x.shape
            x_off = (p["in_pad"] - ph) * (wp + 1) * c
        else:  # N x C x H x W -> padded N x Hp x Wp x C in the executor's shared scratch
            n, c, h, w = x.shape
            hp, wp = h + 2 * ph, w + 2 * pw
            xp = p["scratch"][:n * hp * wp * c].reshape(n, hp, wp, c)
        rows = (x if in_nhwc else xp).reshape(n, hp, wp * c)  # read as N x Hp x (Wp*C)
        # a call on one thread opens no parallel region (`Executor.threads_for`)
        if p["strategy"] == "winograd":
            args = (rows, x_off, p["w"], p["zeros"], p["bias"], res, out, co, op.out_channels,
                    p["act"], has_res, ho, wo, p["out_pad"], p["res_pad"], p["work"])
            conv = compiled(winograd_k.conv2d_winograd_1 if p["one_thread"] else
                            winograd_k.conv2d_winograd, *args, 1)
        elif p["strategy"] == "depthwise_nhwc":
            args = (rows, x_off, p["w"], p["bias"], res, out, co, *op.kernel, *op.stride,
                    *op.dilation, p["act"], has_res, ho, wo, p["out_pad"], p["res_pad"])
            conv = compiled(depthwise_k.conv2d_depthwise_nhwc_1 if p["one_thread"] else
                            depthwise_k.conv2d_depthwise_nhwc, *args, 1)
        else:
            args = (rows, x_off, p["w"], p["bias"], res, out, co, op.out_channels, c,
                    op.kernel[0], *op.stride, op.dilation[0], p["act"], has_res, ho, wo,
                    p["out_pad"], p["res_pad"])
            conv = compiled(tiled_k.conv2d_tiled_1 if p["one_thread"] else
                            tiled_k.conv2d_tiled, *args, 1)
        if in_nhwc:
            def step(threads: int) -> None:
                conv(*args, threads)
            # the executor may run a tiled or Winograd conv in a chain (`_chain`)
            if not p["one_thread"] and p["strategy"] in chain_k.STRATEGIES:
                step.chain_row = chain_k.conv_row(
                    chain_k.WINOGRAD if p["strategy"] == "winograd" else chain_k.TILED, rows,
                    x_off, p["w"], p["bias"], p.get("zeros"), res, out, co, op.out_channels,
                    c, op.kernel, op.stride, op.dilation[0], p["act"], has_res, p["out_pad"],
                    p["res_pad"], p["arena"], p["wts"], p["threads"])
            return step
        pad = compiled(tiled_k.to_padded_nhwc_1 if p["one_thread"] else
                        tiled_k.to_padded_nhwc, x, xp, ph, pw)

        def step(threads: int) -> None:
            pad(x, xp, ph, pw)
            conv(*args, threads)
        return step
    if p["strategy"] == "depthwise":
        args = (x, p["w"], p["bias"], res, out, co, *op.stride, *op.pad, *op.dilation,
                p["act"], p["has_bias"], has_res)
        depthwise = compiled(conv_k.conv2d_depthwise, *args, 1)
        return lambda threads: depthwise(*args, threads)
    args = (x, p["w"], p["bias"], res, out, co, *op.kernel, *op.stride, *op.pad, *op.dilation,
            p["act"], p["has_bias"], has_res)
    gemm = compiled(conv_k.conv2d_gemm, *args, 1)
    return lambda threads: gemm(*args, threads)


def _scale_shift(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray, co: int) -> Step:
    args = (xs[0], p["scale"], p["shift"], out, co, p["act"])
    kernel = compiled(elem_k.scale_shift, *args)
    return lambda threads: kernel(*args)


def _pool(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray, co: int) -> Step:
    op = node.op
    if node.kind == "maxpool2d":
        args = (xs[0], out, co, resample_k.NO_PICKS, *op.kernel, *op.strides, *op.padding)
        kernel = compiled(resample_k.maxpool2d, *args, 1)
        return lambda threads: kernel(*args, threads)
    args = (xs[0], out, co, *op.kernel, *op.strides, *op.padding, int(op.count_include_pad))
    kernel = compiled(resample_k.avgpool2d, *args)
    return lambda threads: kernel(*args)


def _adaptive(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray, co: int) -> Step:
    kernel = compiled(resample_k.adaptive_avgpool, xs[0], out, co)
    return lambda threads: kernel(xs[0], out, co)


def _upsample(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray, co: int) -> Step:
    op = node.op
    (h, w), (ho, wo) = xs[0].shape[2:], out.shape[2:]
    if op.align_corners:  # torch: (in - 1) / (out - 1) in float32, 0 for a single output
        scales = [float(np.float32(i - 1) / np.float32(o - 1)) if o > 1 else 0.0
                  for i, o in ((h, ho), (w, wo))]
    elif op.scale is not None:
        scales = [float(np.float32(1.0 / op.scale))] * 2
    else:
        scales = [float(np.float32(i) / np.float32(o)) for i, o in ((h, ho), (w, wo))]
    args = (xs[0], out, co, int(op.mode == "bilinear"), int(op.align_corners), *scales)
    return lambda threads: resample_k.upsample(*args)


def _add(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray, co: int) -> Step:
    weights = [float(w) for w in (node.op.weights or [1.0] * len(xs))]

    def step(threads: int) -> None:
        for k, (x, w) in enumerate(zip(xs, weights, strict=True)):
            elem_k.add_scaled(x, w, out, co, int(k > 0))
    return step


def _mul(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray, co: int) -> Step:
    a, b = xs if xs[0].size >= xs[1].size else xs[::-1]
    return lambda threads: elem_k.mul(a, b, out, co)


def _linear(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray, co: int) -> Step:
    args = (xs[0], p["wt"], p["bias"], out, co, 0, p["has_bias"])
    kernel = compiled(conv_k.linear, *args)
    return lambda threads: kernel(*args)


def _channel_pad(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray, co: int) -> Step:
    before, c = node.op.before, xs[0].shape[1]
    end = co + c + before + node.op.after

    def step(threads: int) -> None:
        out[:, co:co + before] = 0.0
        out[:, co + before + c:end] = 0.0
        elem_k.copy_channels(xs[0], out, co + before)
    return step


def _channel_shuffle(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray,
                     co: int) -> Step:
    return lambda threads: elem_k.shuffle_channels(xs[0], out, co, node.op.groups)


def _channel_slice(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray,
                   co: int) -> Step:
    part = xs[0][:, node.op.start:node.op.stop]
    return lambda threads: elem_k.copy_channels(part, out, co)


def _layer_norm(node: Node, p: dict, xs: list[np.ndarray], out: np.ndarray, co: int) -> Step:
    args = (xs[0], p["weight"], p["bias"], node.op.eps, out, co)
    return lambda threads: elem_k.layer_norm_channels(*args)


BINDERS: dict[str, Binder] = {
    "conv2d": _conv, "fused_conv2d": _conv, "batchnorm2d": _scale_shift,
    "activation": _scale_shift, "maxpool2d": _pool, "avgpool2d": _pool,
    "global_avgpool": _adaptive, "adaptive_avgpool2d": _adaptive, "upsample": _upsample,
    "add": _add, "mul": _mul, "linear": _linear, "channel_pad": _channel_pad,
    "channel_shuffle": _channel_shuffle, "channel_slice": _channel_slice,
    "layernorm2d": _layer_norm,
}
# input and concat are bound by the executor (BOUND_HERE); views of their input
# (`Op.is_alias`: identity, dropout, flatten, output) compute nothing
