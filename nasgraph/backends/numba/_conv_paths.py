"""Which kernels take a conv in training: the choices `_conv_rules` makes per conv, each
with the thresholds it was measured at (docs/numba.md, "Which kernel computes which
gradient" and the sections it points to). Shapes and op attributes in, a yes or no out;
no kernel runs here."""

from __future__ import annotations

from nasgraph.backends.numba import _backward_conv as conv_b
from nasgraph.backends.numba import _planes as planes_k
from nasgraph.backends.numba import _strided_dx as strided_k
from nasgraph.backends.numba import _tiled as tiled_k


def subsampled_pointwise(op) -> bool:
    """Whether a conv is a 1x1 conv of its input's every s-th pixel: a strided, unpadded
    1x1 kernel (a ResNet's projection shortcut). Copying those pixels out first, then
    running the stride-1 GEMM conv, reads a quarter of the input at stride 2 where the
    tiled kernel lays out all of it, and its tiles do little with a handful of input
    channels. Forward plus backward, one thread, on an AVX-512 Xeon: 0.36-0.64x the
    tiled path's time (6-22 input channels, 4x4 to 7x7 outputs, batch 32-128;
    docs/numba.md, "Strided 1x1 convs, and the copies between layouts")."""
    return op.kernel == (1, 1) and op.stride != (1, 1) and op.pad == (0, 0)


def flat_depthwise(op, pixels: int) -> bool:
    """Whether a conv of one input channel a group (depthwise, of any channel multiplier;
    a stem of one input channel) trains on flat planes (`_depthwise_flat`): 3x3, stride
    1 or 2, padding 1, no dilation, input maps of at most FLAT_MAX_PIXELS[stride]. Each
    tap reads the plane (a stride phase of it) shifted by a constant, so a plane is whole
    vectors, with no transposes (NHWC) and no rows to copy and crop (the phase planes).
    Measured on an AVX-512 Xeon, one thread, batch 128 (32 for 8x8 and 56x56), forward
    plus backward (docs/numba.md, "Depthwise convs on flat planes"), against the faster
    of NHWC and the phase planes: channel multiplier 1, stride 1, 0.45-0.74x on 4x4 to
    28x28 maps, 0.83x on 56x56; stride 2, 0.66-0.83x from 7x7 to 28x28, 1.15x from 56x56.
    Multiplier 2-4: 0.42-0.65x the planes' time. Stems of one input channel, without an
    input gradient: 0.72-1.0x the planes' stem tiles. Of these, depthwise convs of
    multiplier 1 on small maps take the batch in the lanes instead (`lanes_depthwise`)."""
    return (op.kernel == (3, 3) and op.pad == (1, 1) and op.dilation == (1, 1)
            and pixels <= FLAT_MAX_PIXELS.get(op.stride, 0))


# input pixels up to which depthwise convs take the flat planes, by stride
FLAT_MAX_PIXELS = {(1, 1): 3136, (2, 2): 784}  # 56x56, 28x28


def lanes_depthwise(op, in_channels: int, out_channels: int, pixels: int) -> bool:
    """Whether a depthwise conv the flat planes would take (`flat_depthwise`) trains with
    16 samples in a vector's lanes instead (`_depthwise_lanes`): channel multiplier 1,
    input maps of at most LANES_MAX_PIXELS[stride] (stride 1: up to 8x8, a plane of one
    to four vectors, where the flat planes' loops run short). Measured on an AVX-512
    Xeon, one thread, batch 128 (32 where said), both kernels in turns in one process,
    time over the flat planes' (docs/numba.md, "Depthwise convs with the batch in the
    lanes"), forward and backward: stride 2 from 7x7 to 28x28, 0.38-0.58x and 0.39-0.72x;
    stride 1 on 4x4 0.44-0.58x and 0.36-0.48x, on 7x7 0.64-0.70x and 0.52-0.58x (batch
    32 too), on 8x8 0.77-0.98x and 0.71-0.89x; on 14x14 1.11x and 0.89x, on 16x16 1.43x
    and 0.95x: those stay flat."""
    return (in_channels == out_channels and flat_depthwise(op, pixels)
            and pixels <= LANES_MAX_PIXELS.get(op.stride, 0))


def lanes_conv(op, x_shape: tuple[int, ...]) -> bool:
    """Whether a conv on an N x C x H x W input trains with the batch in the lanes: a
    group per input channel, and `lanes_depthwise`. Asked by the conv's rule
    (`_conv_rules.conv_forward`) and by the BatchNorm before it, which then leaves the
    conv its output (`grad._deferred_for`)."""
    return op.groups == x_shape[1] and lanes_depthwise(op, x_shape[1], op.out_channels,
                                                       x_shape[2] * x_shape[3])


# input pixels up to which depthwise convs of channel multiplier 1 take the lanes, by
# stride
LANES_MAX_PIXELS = {(1, 1): 64, (2, 2): 784}  # 8x8, 28x28


# depthwise convs with at most this many output pixels train in NHWC (`_depthwise`)
DEPTHWISE_NHWC_PIXELS = 64


def depthwise_nhwc(op, out_channels: int, in_channels: int, out_pixels: int) -> bool:
    """Whether a depthwise conv trains in NHWC: channel multiplier 1, small outputs. On
    the phase planes every channel's plane costs setup, and a 4x4 or 7x7 plane has little
    work to spread it over; in NHWC each tap is one multiply-add over a run of channels.
    Measured on an AVX-512 Xeon, one thread, 3x3 convs at batch 128 (docs/numba.md,
    "Depthwise convs in NHWC"): forward plus backward 0.49-0.62x the planes' time onto
    4x4, 0.71-0.95x onto 7x7, 0.91-0.96x onto 8x8; 1.07x onto 10x10, 1.65-1.9x onto
    14x14. Since the planes sum a 3x3 kernel's taps in registers (`_planes_depthwise._nine_taps`),
    stride-1 3x3 convs of at most DEPTHWISE_PLANES_CHANNELS channels onto 7x7 and 8x8
    stay on the planes: there they take 0.54-0.61x NHWC's time at 16 channels, 0.84x at
    32, 0.96-1.05x at 64 (docs/numba.md, "Nine taps in registers"). So do 5x5 convs
    of stride 2 onto 7x7 to 8x8 with at most DEPTHWISE_STRIDED_PLANES_CHANNELS
    channels (the mobile space's): on an AMD EPYC with AVX2, one thread, batch 128,
    through the training rules, 0.50-0.81x NHWC's time for 8-24 channels from 14x14 and
    16x16, 0.97-1.05x for 32-96; onto 6x6 and 5x5, 1.10-1.17x (docs/numba.md, "Strided
    5x5 depthwise convs of few channels on the planes"). Asked only of convs the flat
    planes do not take (`flat_depthwise`): strided ones, other kernels and paddings."""
    if out_channels != in_channels or out_pixels > DEPTHWISE_NHWC_PIXELS:
        return False
    if (op.kernel == (5, 5) and op.stride == (2, 2) and op.dilation == (1, 1)
            and out_pixels >= 49 and out_channels <= DEPTHWISE_STRIDED_PLANES_CHANNELS):
        return False
    return not (op.kernel == (3, 3) and op.stride == (1, 1) and op.dilation == (1, 1)
                and out_pixels > 16 and out_channels <= DEPTHWISE_PLANES_CHANNELS)


# stride-1 3x3 depthwise convs of at most this many channels stay on the phase planes
# (`depthwise_nhwc`)
DEPTHWISE_PLANES_CHANNELS = 32

# stride-2 5x5 depthwise convs onto 7x7 to 8x8 of at most this many channels take the
# phase planes (`depthwise_nhwc`)
DEPTHWISE_STRIDED_PLANES_CHANNELS = 24


def planes_pay(op, out_channels: int, out_pixels: int) -> bool:
    """Whether a tiled conv's weight gradient runs faster by `_wgrad`'s register-tiled
    kernel than as a GEMM of copied columns: spatial kernels of few output channels, and
    of strided convs only on large outputs. The GEMM's rows are its output channels, and
    OpenBLAS uses few rows badly; with more, it copies once for many FMAs. Measured on
    AVX2, one thread, batch 128 (docs/numba.md, "The weight gradient"): at 7-16 output
    channels the tiled kernel takes 0.3-0.7x the GEMM's time, at 32 about as long, at 64
    1.7-2.5x; strided ones onto 7x7 outputs 1.7-2x. Asked only where `_wgrad_nhwc`'s
    tiles do not take the weight gradient (`_backward_conv.nhwc_weight_grad_pays`): where
    vectors are 512 bits, convs of at most 8 output channels; where they are 256, convs
    above NHWC_MAX_CHANNELS_256 (32; 28 if strided), so there it says no and the GEMM
    takes them."""
    kh, kw = op.kernel
    return (kh * kw > 1 and out_channels <= WGRAD_MAX_CHANNELS
            and (op.stride == (1, 1) or out_pixels >= 196))


# convs of at most this many output channels take `_wgrad`'s weight gradient
WGRAD_MAX_CHANNELS = 28

# convs of at most this many output channels run on phase planes (`planes_forward`)
PLANES_MAX_CHANNELS = 8


def planes_forward(op, out_channels: int, out_pixels: int) -> bool:
    """Whether a tiled conv's forward runs on its input's phase planes
    (`planes_k.conv2d_forward`): few output channels, where vectors are 512 bits, and
    where `_wgrad` reads the planes for the weight gradient anyway. The NHWC tiles hold
    a pixel's output channels in a vector, so 6 channels fill 6 of its 8 lanes; on the
    planes a vector holds 16 pixels of a row. Measured on an AVX-512 Xeon, one thread,
    batch 128, the copies included (docs/numba.md, "Few output channels on the phase
    planes"): 0.38-0.66x the time for 4-8 output channels, 0.79-0.89x for 10-16, where the
    weight gradient stays on the NHWC tiles. Its tiles need 16 of the 32 vector registers:
    AVX2 keeps the NHWC tiles."""
    return (conv_b.WIDE and out_channels <= PLANES_MAX_CHANNELS
            and planes_pay(op, out_channels, out_pixels))


# the input gradient of a stride-1 conv of 9-16 input channels runs on dy's phase planes
# where their tiles do enough useful work (`planes_input_grad`): per FMA computed they ran
# about this many times as fast as the NHWC tiles (3x3 convs, 9-16 channels, 4x4 to 32x32)
PLANES_RATE = 1.2


def planes_input_grad(cin: int, x_shape: tuple[int, ...], kernel_w: int,
                       dilation_w: int) -> bool:
    """Whether a stride-1 conv's input gradient runs on dy's phase planes
    (`planes_k.conv2d_input_grad`), where vectors are 512 bits: for at most
    PLANES_MAX_CHANNELS input channels always; for 9-16 (the NHWC tile's vector) where the
    planes' tiles, at PLANES_RATE times the NHWC tiles' rate, do more useful work. Both
    compute zeros: the NHWC tile's lanes past Cin, the planes' rows padded to whole tiles
    and the pixels past the map in each padded row. Measured on an AVX-512 Xeon, one
    thread, 3x3 convs (docs/numba.md, "The input gradient of 9-16 channels on the
    planes"): 0.64-0.96x the time of the NHWC tiles where it is taken, 0.93-1.35x where
    it is not. Where the NHWC side runs `_tiled_row`'s tiles of a row (`conv_b.row_tiles`),
    ROW_RATE times as fast, the planes must do that much more useful work to be taken: at
    16 channels they never are (on their own 0.95-1.05x the tiles' time from 14x14 to
    32x32 maps, 1.33-1.47x on 8x8, and dy's padded copy for the tiles is the one the
    NHWC weight gradient reads), at 10-12 on 14x14 and 16x16 they still are (0.75-0.85x)."""
    if not conv_b.WIDE or cin > tiled_k.V:
        return False
    if cin <= PLANES_MAX_CHANNELS:
        return True
    h, w = x_shape[2:]
    length = planes_k.row_length(h, w + (kernel_w - 1) * dilation_w, planes_k.PIXELS)
    rows = planes_k.conv_rows(cin)
    used = h * w / length * cin / (-(-cin // rows) * rows)
    rate = PLANES_RATE
    if dilation_w == 1 and conv_b.row_tiles(cin, kernel_w, 1, w) is not None:
        rate /= ROW_RATE  # the NHWC tiles of a row, faster than those `PLANES_RATE` met
    return rate * used > cin / tiled_k.V  # the NHWC tile's lanes in use


# how many times as fast `_tiled_row`'s tiles ran as `_tiled_mid`'s, forward or input
# gradient, 3x3 convs of 16 channels on 8x8 to 32x32 maps, one thread (0.78-0.90x the
# time; docs/numba.md, "Tiles of a row")
ROW_RATE = 1.2


def planes_grouped(op, in_per_group: int) -> bool:
    """Whether a grouped conv (not depthwise) runs forward on its input's phase planes,
    group by group (`planes_k.conv2d_forward`): where vectors are 512 bits, and where
    256 for a spatial kernel (those of at least PER_GROUP_FEWEST_CHANNELS input channels
    a group train a conv a group first, `per_group`). Elsewhere grouped convs run as a
    GEMM of im2col columns per group, which ran at 2-16 GFLOP/s on a ResNeXt candidate's
    3x3 convs of 2-4 groups (docs/numba.md, "Grouped convs on the planes"). Its gradients
    follow `dx_is_conv`."""
    return op.groups > 1 and in_per_group > 1 and (conv_b.WIDE or op.kernel != (1, 1))


def per_group(op, in_per_group: int, pixels: int) -> bool:
    """Whether a grouped conv trains as one ungrouped conv a group, each on its group's
    input channels copied out, on the paths of ungrouped convs
    (`_conv_rules._PerGroup`): where vectors are 256 bits, at least
    PER_GROUP_FEWEST_CHANNELS input channels a group, a spatial kernel, no dilation
    across, at least a tile of output pixels (where `nodes.conv_strategy` tiles an
    ungrouped conv). Forward and backward, one thread, batch 128, on an AMD EPYC with
    AVX2 (docs/numba.md, "Grouped convs, a conv a group, on AVX2"): 5-48 input channels
    a group, 3x3 kernels, 4x4 to 14x14 maps, strides 1 and 2, 0.26-0.56x the time of the
    GEMM of columns a group (0.90x on 4x4) and 0.39-0.93x that of the phase planes; with
    2-4 a group, the planes took 0.47-0.93x the time of a conv a group."""
    return (not conv_b.WIDE and op.groups > 1 and in_per_group >= PER_GROUP_FEWEST_CHANNELS
            and op.kernel != (1, 1) and op.dilation[1] == 1 and pixels >= tiled_k.R)


PER_GROUP_FEWEST_CHANNELS = 5


def dx_is_conv(op) -> bool:
    """Whether a conv's input gradient is a stride-1 conv of dy (seed 003's full
    convolution): stride 1, and a kernel that covers its padding, so that dy is padded by
    (k - 1) * d - p >= 0 on each side. Otherwise it is added back window by window (a
    GEMM of columns; for a grouped conv `conv2d_backward`, its weight gradient skipped:
    `_wgrad`'s on the input's planes is faster there too)."""
    (kh, kw), (dh, dw) = op.kernel, op.dilation
    return op.stride == (1, 1) and (kh - 1) * dh >= op.pad[0] and (kw - 1) * dw >= op.pad[1]


def strided_dx_pays(op, in_channels: int, out_channels: int) -> bool:
    """Whether a strided tiled conv's input gradient is summed in registers
    (`_strided_dx`) rather than as the GEMM back = dyᵀ · W added window by window:
    where vectors are 256 bits, a kernel row of at most 96 values (kw·Cin: 3x3 kernels
    of at most 32 input channels), at least STRIDED_DX_MIN_OUT output channels, no
    dilation across. Measured on an AMD EPYC with AVX2, one thread, stride 2 at batch
    128 (64 where said; docs/numba.md, "The strided input gradient in registers"), dx
    alone, the copy out of its padded layout included: 0.63-0.72x the GEMM's time for 4
    -> 8 to 8 -> 16 channels on 7x7 to 28x28 inputs, 0.76-0.80x for 9-16 input channels,
    0.81-0.87x for 20-32 (32 -> 64 on 16x16 at 64); 3 -> 6 on 28x28 1.04x (6 output
    channels: a tile's loop over them too short). Where vectors are 512 bits it was not
    measured, and the GEMM keeps them."""
    return (not conv_b.WIDE and op.stride != (1, 1) and op.dilation[1] == 1
            and out_channels >= STRIDED_DX_MIN_OUT
            and strided_k.vectors(op.kernel[1] * in_channels) <= strided_k.MAX_VECTORS)


# strided convs of fewer output channels keep the GEMM's input gradient (`strided_dx_pays`)
STRIDED_DX_MIN_OUT = 8


def tiled_input_grad(op, shape: tuple[int, ...]) -> bool:
    # dx a conv of dy (`conv_b.conv2d_input_grad`), with a tile's worth of pixels
    return dx_is_conv(op) and shape[2] * shape[3] >= tiled_k.R
