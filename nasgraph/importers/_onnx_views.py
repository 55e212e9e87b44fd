"""Views and channel slices in `from_onnx`: the ONNX patterns of ShuffleNet v2 and ConvNeXt.

An IR tensor is N x C x H x W. ONNX graphs also pass through views the IR has no value for:
ShuffleNet's channel shuffle reshapes to N x g x C/g x H x W, transposes the two group
dims and reshapes back (one `ChannelShuffle`); ConvNeXt transposes to N x H x W x C, where
LayerNormalization and MatMul over the last axis are channel ops (`LayerNorm2d`, 1x1
convs), and transposes back. A view is held as a wrapper of the IR tensor (`Grouped`,
`Permuted`) until the node that ends it; any other node reading a view is refused, so a
view never reaches the graph half-translated.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nasgraph.importers._onnx_walk import Converter, OnnxWalk
from nasgraph.ir import Tensor, ops


class Grouped(NamedTuple):
    """A tensor reshaped to N x groups x C/groups x H x W (the first step of a channel
    shuffle); `swapped` once Transpose perm [0, 2, 1, 3, 4] swapped the group dims. The
    Reshape back to N x C x H x W emits `ChannelShuffle(groups)`."""

    x: Tensor
    groups: int
    swapped: bool = False


class Permuted(NamedTuple):
    """A tensor transposed to N x H x W x C (perm [0, 2, 3, 1]): ops over its last axis are
    channel ops of `x`, elementwise ones apply as they are, and perm [0, 3, 1, 2] gives
    `x` back."""

    x: Tensor


VIEWS = Grouped | Permuted


def viewed(value: object) -> Tensor | None:
    """The IR tensor that `value` (a tensor or a view of one) holds, else None."""
    if isinstance(value, Tensor):
        return value
    return value.x if isinstance(value, VIEWS) else None


def describe(view: object) -> str:
    """How a refusal names a view."""
    if isinstance(view, Grouped):
        return f"a N x {view.groups} x C/{view.groups} x H x W view of {view.x.type}"
    return f"a channels-last (N x H x W x C) view of {view.x.type}"


def per_sample(w: OnnxWalk, x: Tensor, target: list[int]) -> list[int] | None:
    """The per-sample shape that Reshape of `x` to `target` gives, or None when the
    batch does not stay the first dimension. ONNX's 0 copies the input's dimension and one
    -1 takes what is left."""
    numel, dims = x.type.numel, [0, *x.type.shape]
    if target and target[0] in {0, *w.batches}:
        rest = [dims[k] if d == 0 and k < len(dims) else d
                for k, d in enumerate(target) if k > 0]
    elif target and target[0] == -1 and all(d > 0 for d in target[1:]):
        rest = target[1:]
    else:
        return None
    known = int(np.prod([d for d in rest if d != -1]))
    if rest.count(-1) > 1 or any(d == 0 or d < -1 for d in rest) or known == 0:
        return None
    if -1 in rest:
        if numel % known:
            return None
        rest[rest.index(-1)] = numel // known
    return rest if int(np.prod(rest)) == numel else None


def reshape_view(w: OnnxWalk, x: object, shape: list[int] | None) -> Tensor | Grouped | None:
    """Reshape's channel shuffle steps: N x C x H x W -> N x g x C/g x H x W (a `Grouped`)
    and, once swapped, back (`ChannelShuffle`); None for reshapes that are not these."""
    if isinstance(x, Grouped):
        if not x.swapped or shape != list(x.x.type.shape):
            raise w.refuse(f"Reshape of {describe(x)} to {shape}: a 5-D view is an IR op only "
                           "as a channel shuffle (reshape to N x g x C/g x H x W, transpose "
                           "perm [0, 2, 1, 3, 4], reshape back)")
        scope = w.node_id().rsplit("/", 1)[0]
        return w.emit(w.spec(ops.ChannelShuffle, groups=x.groups), [x.x],
                      wanted_id=scope + "/channel_shuffle")
    if isinstance(x, Tensor) and shape is not None and len(shape) == 4 and not x.type.flat \
            and shape[0] * shape[1] == x.channels and tuple(shape[2:]) == x.type.spatial:
        return Grouped(x, shape[0])
    return None


def transpose(w: OnnxWalk) -> Tensor | Grouped | Permuted:
    """Transpose as the IR reads it: into and out of the channels-last view, and the
    group swap of a channel shuffle; any other permutation is refused."""
    x, perm = w.input(0), [int(p) for p in w.attrs.get("perm", [])]
    if isinstance(x, Tensor) and not x.type.flat and perm == [0, 2, 3, 1]:
        return Permuted(x)
    if isinstance(x, Permuted) and perm == [0, 3, 1, 2]:
        return x.x
    if isinstance(x, Grouped) and not x.swapped and perm == [0, 2, 1, 3, 4]:
        return x._replace(swapped=True)
    raise w.refuse(f"Transpose perm {perm}: only to channels-last ([0, 2, 3, 1]) and back "
                   "([0, 3, 1, 2]) around ops over channels, and a channel shuffle's "
                   "[0, 2, 1, 3, 4], are IR ops")


def on_channels(convert: Converter) -> Converter:
    """An elementwise op on a channels-last view: the op on the tensor, viewed again."""
    def run(w: OnnxWalk) -> Permuted:
        name, view = w.node.input[0], w.input(0)
        if not isinstance(view, Permuted):  # a 5-D view: only a channel shuffle reads it
            raise w.refuse(f"input 0 is {describe(view)}: only a channel shuffle's Transpose "
                           "and Reshape read it")
        w.values[name] = view.x
        try:
            out = convert(w)
        finally:
            w.values[name] = view
        if not isinstance(out, Tensor):
            raise w.refuse("an op on a channels-last view that gives no tensor")
        return Permuted(out)
    return run


def _ints(w: OnnxWalk, index: int, attr: str) -> list[int] | None:
    """Integer input `index` (opset >= 10/13), else attribute `attr` (older opsets)."""
    if len(w.node.input) > index and w.node.input[index]:
        value = w.constant(index)
        return None if value is None else [int(v) for v in value.reshape(-1)]
    value = w.attrs.get(attr)
    return None if value is None else [int(v) for v in value]


def slice_channels(w: OnnxWalk) -> Tensor:
    """Slice along channels (axis 1, step 1): a `ChannelSlice`."""
    x = w.tensor(0)
    starts, ends = _ints(w, 1, "starts"), _ints(w, 2, "ends")
    axes = _ints(w, 3, "axes") or list(range(len(starts or [])))
    steps = _ints(w, 4, "steps") or [1] * len(axes)
    if x.type.flat or starts is None or ends is None or len(axes) != 1 or \
            axes[0] % 4 != 1 or steps != [1]:
        raise w.refuse(f"Slice along axes {axes} with steps {steps}: only slices of channels "
                       "(axis 1 of N x C x H x W, step 1) are IR ops")
    if {starts[0], ends[0]} & w.batches - set(range(x.channels + 1)):
        raise w.refuse("Slice of channels up to the batch size, which the IR does not know")
    start, stop, _ = slice(starts[0], ends[0]).indices(x.channels)
    if start == 0 and stop == x.channels:
        return x
    return w.emit(w.spec(ops.ChannelSlice, start=start, stop=stop), [x])


def split_channels(w: OnnxWalk) -> tuple[Tensor, ...]:
    """Split along channels: one `ChannelSlice` per output (sizes from the `split` input
    or attribute, else equal parts, the last one smaller, as ONNX splits)."""
    x = w.tensor(0)
    if x.type.flat or w.attrs.get("axis", 0) % 4 != 1:
        raise w.refuse(f"Split along axis {w.attrs.get('axis', 0)}: only splits of channels "
                       "(axis 1 of N x C x H x W) are IR ops")
    sizes = _ints(w, 1, "split")
    if not sizes:
        parts = int(w.attrs.get("num_outputs", len(w.node.output)))
        size = -(-x.channels // parts)
        sizes = [min(size, x.channels - k * size) for k in range(parts)]
    if sum(sizes) != x.channels or min(sizes) <= 0 or len(sizes) != len(w.node.output):
        raise w.refuse(f"Split of {x.channels} channels into {sizes}")
    base, parts_out, start = w.node_id(), [], 0
    for k, size in enumerate(sizes):
        op = w.spec(ops.ChannelSlice, start=start, stop=start + size)
        parts_out.append(w.emit(op, [x], wanted_id=f"{base}/{k}"))
        start += size
    return tuple(parts_out)
