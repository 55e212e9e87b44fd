"""Generates `_tiled.py`, the register-tiled direct convolution kernel.

The kernel holds a tile of R output pixels x V output channels in R*V scalar accumulators,
which LLVM's SLP vectorizer packs into vector registers; numba has no stack arrays, and a
heap array would be reloaded from memory at every step. Writing the R*V accumulators out by
hand is error-prone, so they are generated; `cache=True` needs the kernel in a real file,
so the result is committed. Regenerate after editing: `python -m
nasgraph.backends.numba._tiled_gen` (a test checks the file is up to date).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from nasgraph.backends.numba._transpose import BLOCK as COLUMN_CHANNELS
from nasgraph.backends.numba._transpose import COLUMN_ROWS, COLUMN_WIDTHS

R = 6  # output pixels per tile
V = 16  # output channels per tile: two AVX2 vectors, R*V/8 = 12 accumulator registers
TILES = 8  # pixel tiles per parallel job, at most

TARGET = Path(__file__).with_name("_tiled.py")


def column_width(v: int) -> int | None:
    """The channels of the blocks that a tile of v channels writes NCHW in
    (`column_blocks`): 16 (`COLUMN_CHANNELS`) where v is whole blocks of 16, else v
    itself where the intrinsics take rows of v (8: `_tiled_narrow`'s tiles), else none."""
    if v % COLUMN_CHANNELS == 0:
        return COLUMN_CHANNELS
    return v if v in COLUMN_WIDTHS else None


def column_intrinsic(rows: int, v: int) -> str:
    """The name of the `_transpose.store_columns` that writes `rows` pixels of a tile of
    v channels."""
    width = column_width(v)
    return f"store_columns{rows}" + ("" if width == COLUMN_CHANNELS else f"x{width}")


def column_blocks(r: int, v: int) -> list[tuple[int, int]]:
    """The (first pixel, pixels) blocks that a tile of r pixels x v channels writes NCHW
    in, each by the `_transpose.store_columns` of that many rows (`COLUMN_ROWS`: 8, 4, 2)
    x 16 channels (`COLUMN_CHANNELS`), or x 8 for tiles of 8 channels, transposed in
    registers; none (the epilogue goes value by value) where v is neither or r is odd."""
    if column_width(v) is None or r % min(COLUMN_ROWS):
        return []
    blocks, first = [], 0
    for rows in COLUMN_ROWS:
        while r - first >= rows:
            blocks.append((first, rows))
            first += rows
    return blocks


def _column_imports(r: int, v: int, also: tuple[str, ...] = ()) -> str:
    # the import of the `store_columns` a tile's epilogue calls, if any, and of `also`
    names = {column_intrinsic(rows, v) for _, rows in column_blocks(r, v)} | set(also)
    # in ruff's order: the digits in a name as a number
    names = sorted(names, key=lambda name: [int(p) if p.isdigit() else p
                                            for p in re.split(r"(\d+)", name)])
    return f"from nasgraph.backends.numba._transpose import {', '.join(names)}\n" if names else ""


# Twins of the kernel with other tiles, for training's forward and input gradient
# (`_backward_conv.conv2d_direct`): (R, V, the file, what the tile is for).
TWINS = (
    # one AVX2 vector of channels, 12 pixels, again 12 accumulator registers; V = 16 would
    # leave half of them zero for such convs
    (12, 8, "_tiled_narrow.py", "for convs of at most 8 output channels: `_tiled` keeps "
     "16-channel tiles, of which such a conv uses half or less"),
    # two 512-bit vectors of channels x 8 pixels: 16 of AVX-512's 32 vector registers
    # (`_isa.wide_vectors`); on AVX2's 16 it would spill. 8 pixels, not 12: the small
    # maps of 4x4 and 8x8 pixels are whole tiles (0.71-0.93x the time of 12 x 32 there,
    # 0.91-1.05x on 7x7 to 28x28; docs/numba.md, "AVX-512")
    # one 512-bit vector of channels x 12 pixels: 12 accumulators where `_tiled`'s 6 x 16,
    # sized for AVX2's two 8-lane vectors, leaves 6 on AVX-512 (too few to cover the FMA
    # latency). 3x3 convs of 16 channels, one thread: 0.90x the time on 32x32 maps, 0.95x
    # on 14x14, 0.97x on 7x7 (docs/numba.md, "AVX-512")
    (12, 16, "_tiled_mid.py", "for convs of 9-16 output channels where numba compiles "
     "512-bit vectors (`_isa.wide_vectors`): one vector of channels, 12 accumulators of "
     "AVX-512's 32 vector registers"),
    # three 512-bit vectors of channels x 8 pixels: 24 accumulators, for convs whose
    # channels fill fewer lanes of 32-channel tiles (33-48 channels: 48 lanes, not 64).
    # 3x3 convs of 45 channels, one thread: 0.73-0.76x the 8 x 32 tile's time; of 90
    # (96 lanes either way), 1.06x (docs/numba.md, "AVX-512")
    (8, 48, "_tiled_wide48.py", "for convs whose output channels fill more of its "
     "48-channel tiles than of `_tiled_wide`'s 32 (33-48 channels), where numba compiles "
     "512-bit vectors: 24 accumulators of AVX-512's 32 vector registers"),
    (8, 32, "_tiled_wide.py", "for convs of more than 16 output channels where numba "
     "compiles 512-bit vectors (`_isa.wide_vectors`): 16 accumulators of AVX-512's 32 "
     "vector registers"),
)


HEADER = f'''"""Register-tiled direct convolution, NHWC inside (generated by _tiled_gen.py).

`conv2d_tiled` computes a tile of R={R} output pixels x V={V} output channels at a time in
scalar accumulators that LLVM packs into vector registers (NUMBA_SLP_VECTORIZE). The
input is a zero-padded N x Hp x Wp x Cin buffer (made by the tiled conv before, or copied
by `to_padded_nhwc`), passed as N x Hp x (Wp*Cin) rows: with dilation 1 along W, the kw
taps of a kernel row over all input channels are one contiguous run of kw*Cin values, so
the inner loop is that long and has no bounds test. The weights are packed to match, as
Cout/V x kh x (kw*Cin) x V (`pack_weights`, Cout padded to a multiple of V with zeros),
and the accumulators start from the bias. The epilogue act(acc + residual) writes NCHW at
channel offset `co`, or padded NHWC for the next tiled conv.
fastmath without `reassoc`: contraction to FMA, no reordering of the sums.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._activations import activate_inline
{_column_imports(R, V, ("pixels8", "pixels16"))}
R = {R}
V = {V}
TILES = {TILES}  # pixel tiles per parallel job, at most: divisions and setup once per job


@njit(inline="always", cache=True)
def _store_pixel(tile, r, res1, rt, has_res, act, out1, at):
    """out1[at:at+V] = act(tile[r] + res1[rt:rt+V]) for identity, ReLU or ReLU6: one
    pixel's V channels, contiguous (NHWC), as loops without the per-channel switch of
    the general epilogue; LLVM leaves them scalar, as it cannot rule out `out1`
    overlapping `res1` or the tile. No view of the row: views cost reference counting."""
    if has_res:
        for v in range(V):
            tile[r, v] += res1[rt + np.uint64(v)]
    if act == 1:
        for v in range(V):
            out1[at + np.uint64(v)] = max(tile[r, v], np.float32(0.0))
    elif act == 2:
        for v in range(V):
            out1[at + np.uint64(v)] = min(max(tile[r, v], np.float32(0.0)), np.float32(6.0))
    else:
        for v in range(V):
            out1[at + np.uint64(v)] = tile[r, v]

'''

PACK = '''

def pack_weights(w: np.ndarray) -> np.ndarray:
    """Cout x Cin x kh x kw -> ceil(Cout/V) x kh x (kw*Cin) x V (zero-padded channels):
    `pack_tiles`."""
    return pack_tiles(np.ascontiguousarray(w, np.float32), V, False)


@njit(cache=True)
def _strides(a, pad, ho, wo, co):
    """Flat-offset strides (sample, channel, row, column) and the offset of channel co,
    pixel (0, 0), of an output-shaped N x C x Ho x Wo array (pad < 0) or a zero-padded
    N x Hp x Wp x C one (pad >= 0)."""
    if pad >= 0:
        row = a.shape[2] * a.shape[3]
        return a.shape[1] * row, 1, row, a.shape[3], pad * (row + a.shape[3]) + co
    return a.shape[1] * ho * wo, ho * wo, wo, 1, co * ho * wo


@njit(cache=True)
def jobs_per_block(n_batch, n_cb, n_pt, threads):
    """How `conv2d_tiled` (and a chain, `_chain`) splits a sample's n_pt pixel tiles in
    each of n_cb channel blocks: into jobs of up to TILES tiles, fewer where that would
    leave under 4 jobs a thread."""
    per = max(1, min(TILES, n_batch * n_cb * n_pt // (4 * threads)))
    return (n_pt + per - 1) // per


@njit(cache=True)
def pack_tiles(w, v, flip):
    """w (Cout x Cin x kh x kw, C-contiguous) packed as the tiled kernels read it,
    ceil(Cout/v) x kh x (kw*Cin) x v with the channels zero-padded to whole blocks, for
    this module's tiles (v = V) and its twins' (their V). With `flip`, w is a forward
    conv's weight and the kernel packed is its input gradient's: rotated by 180 degrees,
    its channel axes swapped (seed 003), in the same pass. Training packs its weights
    every step: numpy took a copy to rotate and one to pack, 10.8 against 4.4 us for
    32 x 32 x 3 x 3."""
    co, ci, kh, kw = w.shape
    cout, cin = (ci, co) if flip else (co, ci)
    blocks = (cout + v - 1) // v
    packed = np.zeros((blocks, kh, kw * cin, v), np.float32)
    p1, w1 = packed.reshape(packed.size), w.reshape(w.size)  # flat: unsigned offsets
    taps = kh * kw
    # lane l of channel block b, tap (i, j), input channel c: w[b*v + l, c, i, j]
    lane_step = np.uint64(taps if flip else ci * taps)
    for b in range(blocks):
        lanes = np.uint64(min(v, cout - b * v))
        for i in range(kh):
            for j in range(kw):
                for c in range(cin):
                    dst = np.uint64((((b * kh + i) * kw + j) * cin + c) * v)
                    if flip:
                        src = np.uint64((c * ci + b * v) * taps + (kh - 1 - i) * kw
                                        + kw - 1 - j)
                    else:
                        src = np.uint64((b * v * ci + c) * taps + i * kw + j)
                    for lane in range(lanes):
                        p1[dst + lane] = w1[src + lane * lane_step]
    return packed


def pack_bias(bias: np.ndarray | None, cout: int) -> np.ndarray:
    """The bias (or zeros), zero-padded to whole blocks of V channels."""
    padded = np.zeros(-(-cout // V) * V, np.float32)
    if bias is not None:
        padded[:cout] = bias
    return padded


@njit(cache=True)
def zero_border(xp, pad):
    """Zero the `pad`-wide border of one Hp x Wp x C sample (the interior is overwritten)."""
    hp, wp = xp.shape[0], xp.shape[1]
    for r in range(hp):
        if r < pad or r >= hp - pad:
            xp[r, :, :] = 0.0
        else:
            xp[r, :pad, :] = 0.0
            xp[r, wp - pad:, :] = 0.0


@njit(parallel=True, cache=True)
def to_padded_nhwc(x, xp, ph, pw):
    """N x C x H x W -> N x (H+2ph) x (W+2pw) x C, zero border included (`xp` is scratch
    shared by the convs of an executor). Flat unsigned offsets, no views (a view per
    channel and row cost a third of the time). One channel: a row is one run. Fewer
    than 16: columns go in blocks of 8, so that a channel's 8 reads are one run and the
    block's writes stay in a few cache lines. 16 or more: each pixel's channels are
    written as one run, read a plane apart (0.76-0.87x the blocks' time for 16-90
    channels, one thread; 1.2-1.8x for 6-12; one channel 0.38-0.44x), unless the plane
    is a multiple of 4 KB (32 x 32, 64 x 64): then each of those reads falls in the same
    set of L1 (4 KB a way), 16 or more lines in a set of 8 or 12 ways, and the columns go
    in blocks of 16, a channel's reads one cache line (0.23-0.50x the runs' time for
    16-96 channels on 32 x 32 planes, one thread, on an AMD EPYC). 4-15 channels, where
    the zeros past a pixel's channels that `_transpose.pixels8` (at most 8) and
    `pixels16` store with them fit in the row's right padding: 8 or 16 pixels at a time
    transposed in registers (0.59-0.83x the blocks' time for 4-14 channels on 7x7 to
    28x28 maps, as long on 8x8 and 16x16, one thread, on an AMD EPYC)."""
    n_batch, c_in, h, w = x.shape
    hp, wp = xp.shape[1], xp.shape[2]
    xf, pf = x.reshape(x.size), xp.reshape(xp.size)
    hw, cu = np.uint64(h * w), np.uint64(c_in)
    for job in prange(n_batch * hp):
        n, r = job // hp, job % hp
        o = np.uint64((n * hp + r) * wp * c_in)  # row r of sample n: Wp x C values
        if r < ph or r >= ph + h:
            for k in range(np.uint64(wp * c_in)):
                pf[o + k] = 0.0
            continue
        for k in range(np.uint64(pw * c_in)):
            pf[o + k] = 0.0
        for k in range(np.uint64((pw + w) * c_in), np.uint64(wp * c_in)):
            pf[o + k] = 0.0
        src = np.uint64((n * c_in * h + r - ph) * w)  # x[n, 0, r - ph, 0]
        dst = o + np.uint64(pw * c_in)  # xp[n, r, pw, 0]
        if c_in == 1:
            for k in range(np.uint64(w)):
                pf[dst + k] = xf[src + k]
        elif c_in >= 16 and h * w % 1024 != 0:
            for q in range(np.uint64(w)):
                for c in range(cu):
                    pf[dst + q * cu + c] = xf[src + c * hw + q]
        elif c_in <= 8 and 8 - c_in <= pw * c_in:
            for iw0 in range(0, w, 8):
                pixels8(xf, src + np.uint64(iw0), hw, cu, np.uint64(min(8, w - iw0)), pf,
                        dst + np.uint64(iw0) * cu, cu)
        elif c_in < 16 and 16 - c_in <= pw * c_in:
            for iw0 in range(0, w, 16):
                pixels16(xf, src + np.uint64(iw0), hw, cu, np.uint64(min(16, w - iw0)), pf,
                         dst + np.uint64(iw0) * cu, cu)
        else:
            block = 8 if c_in < 16 else 16
            for iw0 in range(0, w, block):
                m = np.uint64(min(block, w - iw0))
                for c in range(cu):
                    s = src + c * hw + np.uint64(iw0)
                    d = dst + np.uint64(iw0) * cu + c
                    for k in range(m):
                        pf[d + k * cu] = xf[s + k]
'''


def _kernel() -> str:
    lines = [
        '@njit(parallel=True, cache=True, fastmath={"contract", "nsz", "arcp"})',
        "def conv2d_tiled(xp, x_off, w, bias, res, out, co, cout, cin, kh, sh, sw, dh, act,",
        "                 has_res, ho, wo, out_pad, res_pad, threads):",
        '    """Padded N x Hp x (Wp*Cin), packed weights -> the Ho x Wo output of channels',
        "    co..co+cout of `out`.",
        "",
        "    The conv's padded input starts `x_off` values into each sample of `xp`: 0, or",
        "    d*(Wp+1)*Cin where `xp` is padded by d more than this conv pads. `threads`: how",
        "    many share the work (jobs get fewer tiles where they would be too few to share).",
        "    `out` is N x C x Ho x Wo (`out_pad` < 0) or, to feed the next tiled conv without",
        "    a copy, zero-padded N x (Ho+2p) x (Wo+2p) x C with p = `out_pad` >= 0 (the border",
        "    is zeroed here). `res` likewise: N x C x Ho x Wo or padded NHWC by `res_pad`.",
        "    Dilation along W must be 1 (the taps of a row are one run of kw*Cin values).",
        "    Needs Ho*Wo >= R: the last pixel tile of a sample is moved back to end at the last",
        "    pixel (it recomputes some pixels rather than leave registers half used).",
        '    """',
        "    n_batch, n_cb = xp.shape[0], w.shape[0]",
        "    n_pt = (ho * wo + R - 1) // R  # pixel tiles per sample",
        "    n_job = jobs_per_block(n_batch, n_cb, n_pt, threads)  # of n_pt/n_job tiles each",
        "    # the epilogue writes `out` and reads `res` flat: the element of sample n, channel",
        "    # c, output pixel (oh, ow) is at n*o_n + c*o_c + oh*o_h + ow*o_w + o_0",
        "    o_n, o_c, o_h, o_w, o_0 = _strides(out, out_pad, ho, wo, co)",
        "    r_n, r_c, r_h, r_w, r_0 = _strides(res, res_pad, ho, wo, 0)",
        "    xf, wf = xp.reshape(xp.size), w.reshape(w.size)",
        "    out1, res1 = out.reshape(out.size), res.reshape(res.size)",
        "    # channel blocks vary fastest: a thread's share is whole pixels, so no two threads",
        "    # write to one cache line of an NHWC output (16 channels are 64 bytes, most often",
        "    # not on a line boundary), and each reads only its share of the input",
        "    for job in prange(n_batch * n_job * n_cb):",
        "        n, j, cb = job // (n_job * n_cb), job // n_cb % n_job, job % n_cb",
        "        if out_pad > 0 and cb == 0 and j == 0:  # a sample's first job",
        "            zero_border(out[n], out_pad)",
        "        _tiles(xf, n * xp.shape[1] * xp.shape[2] + x_off, xp.shape[2], wf, w.shape[2],",
        "               bias, cb, j * n_pt // n_job, (j + 1) * n_pt // n_job, ho * wo, wo, cout,",
        "               cin, kh, sh, sw, dh, act, has_res, out1, n * o_n + o_0, o_c, o_h, o_w,",
        "               res1, n * r_n + r_0, r_c, r_h, r_w)",
    ]
    return "\n".join(lines) + "\n"


def _serial(parallel: str) -> str:
    """The one-thread twin of a parallel kernel's source: a plain loop where the parallel
    one has `prange`, so that a call the executor runs on one thread opens no parallel
    region (1.5-2 us, as much as a small kernel). Its own function, not the same one
    compiled twice: numba's cache tells functions apart by name."""
    head, _, body = parallel.strip().partition("\n")
    name = body[4:body.index("(")]
    signature = body[len(name) + 4:body.index('"""')]
    signature = signature.replace("\n" + " " * (len(name) + 5), "\n" + " " * (len(name) + 7))
    doc_end = body.index('"""', body.index('"""') + 3) + 3
    return (head.replace("parallel=True, ", "") + "\n" + "def " + name + "_1" + signature
            + f'"""`{name}` on the calling thread alone."""'
            + body[doc_end:].replace("prange(", "range(") + "\n")


def outer_product(indent: str, rows: int, width: int, vec: str, vec_at, row_at) -> list[str]:
    """The lines of one rank-1 update of a tile's scalar accumulators a{r}_{v}: the width
    values `vec`{v} = vec_at(v), then for each row r, x = row_at(r) and a{r}_{v} += x *
    `vec`{v}. What the tiled kernels (pixels x channels) and `_wgrad_nhwc`'s (columns x
    channels) do per step of their inner loop."""
    lines = [f"{indent}{vec}{v} = {vec_at(v)}" for v in range(width)]
    for r in range(rows):
        lines.append(f"{indent}x = {row_at(r)}")
        lines += [f"{indent}a{r}_{v} += x * {vec}{v}" for v in range(width)]
    return lines


def _tile_kernel(R: int = R, V: int = V) -> str:  # noqa: N803 (the tile's names)
    lines = [
        '@njit(cache=True, fastmath={"contract", "nsz", "arcp"})',
        "def _tiles(xf, x_0, row, wf, run, bias, cb, pt0, pt1, hw, wo, cout, cin, kh, sh, sw, dh,",
        "           act, has_res, out1, o_0, o_c, o_h, o_w, res1, r_0, r_c, r_h, r_w):",
        "    # Pixel tiles pt0..pt1 (R output pixels each, row-major) x the channels of block",
        "    # cb, for one sample: its Hp x (Wp*Cin) rows start at x_0 in the flat xf, and its",
        "    # pixel (0, 0) is at o_0 in out1 and r_0 in res1. Every index is an unsigned",
        "    # offset into a flat array: numba adds no negative-index fix-up to those, and",
        "    # creates no view (views cost reference counting). A function of its own: numba",
        "    # compiles the body of a parallel loop more slowly.",
        "    run_u, v_u = np.uint64(run), np.uint64(V)  # run: kw*Cin, the taps of a kernel row",
        "    c0 = cb * V",
        "    n_v = min(V, cout - c0)  # channels of this block that exist",
        "    # channels contiguous in out (and res): the epilogue goes a pixel at a time",
        "    by_pixel = o_c == 1 and n_v == V and (r_c == 1 or not has_res) and act <= 2",
        "    o_cu, r_cu = np.uint64(o_c), np.uint64(r_c)",
        "    tile = np.empty((R, V), np.float32)",
        "    oh0 = min(pt0 * R, hw - R) // wo  # one division per job, then steps along rows",
        "    ow0 = min(pt0 * R, hw - R) - oh0 * wo",
        "    for pt in range(pt0, pt1):",
        "        if pt * R > hw - R:  # the last tile, moved back to end at the last pixel",
        "            oh0 = (hw - R) // wo",
        "            ow0 = hw - R - oh0 * wo",
    ]
    ind1, ind2, ind3, ind4 = (" " * k for k in (8, 12, 16, 20))
    for r in range(1, R):
        lines.append(f"{ind1}oh{r}, ow{r} = (oh{r - 1}, ow{r - 1} + 1) if ow{r - 1} + 1 < wo "
                     f"else (oh{r - 1} + 1, 0)")
    # the accumulators start from the bias (zero-padded to whole channel blocks)
    for v in range(V):
        lines.append(f"{ind1}a0_{v} = bias[c0 + {v}]")
    step = min(8, V // 2)  # channels a line: lines of at most 100 characters
    for r in range(1, R):
        for part in (range(v0, v0 + step) for v0 in range(0, V, step)):
            lines.append(f"{ind1}" + ", ".join(f"a{r}_{v}" for v in part) + " = (")
            lines.append(f"{ind2}" + ", ".join(f"a0_{v}" for v in part) + ")")
    # where each pixel's input window starts: one kernel row of it is a run of kw*Cin values
    for r in range(R):
        lines.append(f"{ind1}x{r} = np.uint64(x_0 + oh{r} * sh * row + ow{r} * sw * cin)")
    lines += [
        f"{ind1}for i in range(kh):",
        f"{ind2}wi = np.uint64((cb * kh + i) * V) * run_u  # w[cb, i]: (kw*Cin) x V",
        f"{ind2}xi = np.uint64(i * dh * row)",
    ]
    for r in range(R):
        lines.append(f"{ind2}x{r}i = x{r} + xi")
    lines += [
        f"{ind2}for c in range(run_u):",
        f"{ind3}wc = wi + c * v_u",
    ]
    lines += outer_product(ind3, R, V, "w", lambda v: f"wf[wc + np.uint64({v})]",
                           lambda r: f"xf[x{r}i + c]")
    # the epilogue: the accumulators to memory, then act(acc + residual)
    for r in range(R):
        for v in range(V):
            lines.append(f"{ind1}tile[{r}, {v}] = a{r}_{v}")
    for r in range(R):
        lines.append(f"{ind1}at{r} = np.uint64(o_0 + c0 * o_c + oh{r} * o_h + ow{r} * o_w)")
    for r in range(R):
        lines.append(f"{ind1}rt{r} = np.uint64(r_0 + c0 * r_c + oh{r} * r_h + ow{r} * r_w)")
    lines.append(f"{ind1}if by_pixel:  # V contiguous values a pixel")
    for r in range(R):
        lines.append(f"{ind2}_store_pixel(tile, {r}, res1, rt{r}, has_res, act, out1, at{r})")
    blocks = column_blocks(R, V)
    if blocks:
        # where a channel's R pixels are consecutive values (NCHW, the tile on one row or
        # the rows without padding), 16 channels at a time (8 in tiles of 8) transposed in
        # registers (`_transpose.store_columns8` and its twins, for 8, 4 or 2 of the
        # pixels) instead of value by value
        width = column_width(V)
        lines += [
            f"{ind1}elif at{R - 1} == at0 + np.uint64({R - 1}) and not has_res and act == 0:",
            f"{ind2}for b in range(0, n_v, {width}):",
            f"{ind3}m, o = np.uint64(min({width}, n_v - b)), at0 + np.uint64(b) * o_cu",
        ]
        for first, rows in blocks:
            src, dst = (f"np.uint64({first * V} + b)", f"o + np.uint64({first})") if first else (
                "np.uint64(b)", "o")
            lines.append(f"{ind3}{column_intrinsic(rows, V)}(tile, {src}, v_u, out1, {dst}, "
                         "o_cu, m)")
    lines += [
        f"{ind1}else:  # one loop over the block's channels, the R pixels unrolled",
        f"{ind2}for v in range(n_v):",
        f"{ind3}o, q = np.uint64(v) * o_cu, np.uint64(v) * r_cu",
        f"{ind3}if has_res:",
    ]
    for r in range(R):
        lines.append(f"{ind4}tile[{r}, v] += res1[rt{r} + q]")
    for r in range(R):
        lines.append(f"{ind3}out1[at{r} + o] = activate_inline(tile[{r}, v], act)")
    lines += [  # the next tile starts at the pixel after this one's last
        f"{ind1}oh0, ow0 = (oh{R - 1}, ow{R - 1} + 1) if ow{R - 1} + 1 < wo "
        f"else (oh{R - 1} + 1, 0)",
    ]
    return "\n".join(lines) + "\n"


def render() -> str:
    """The source of `_tiled.py`."""
    driver = _kernel()
    pad = PACK[PACK.index("@njit(parallel=True, cache=True)\ndef to_padded_nhwc"):]
    return (HEADER + "\n" + driver + "\n\n" + _serial(driver) + "\n\n" + _tile_kernel()
            + PACK + "\n\n" + _serial(pad))


def render_twin(r: int, v: int, purpose: str) -> str:
    """The source of a twin (`TWINS`): `_tiled`'s kernel with R x V tiles, its weight and
    bias packing; the helpers that do not depend on the tile imported."""
    head = HEADER[HEADER.index("@njit(inline"):]
    text = (f"`_tiled`'s register-tiled direct convolution with tiles of R={r} pixels x "
            f"V={v} channels, {purpose} (generated by _tiled_gen.py). Same arguments, "
            "weights packed by `_tiled.pack_tiles` with this module's V, the bias by its "
            "`pack_bias`.")
    doc = '"""' + textwrap.fill(text, 90) + '\n"""\n'
    columns = _column_imports(r, v)
    imports = (f'''
from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._activations import activate_inline
from nasgraph.backends.numba._tiled import _strides, jobs_per_block, zero_border
{columns}
R = {r}
V = {v}


''')
    driver = _kernel()
    pack = "\n\n" + PACK[PACK.index("def pack_bias"):
                            PACK.index("@njit(cache=True)\ndef zero_border")].rstrip()
    return (doc + imports + head + "\n" + driver + "\n\n" + _serial(driver) + "\n\n"
            + _tile_kernel(r, v) + pack + "\n")


def twin_path(name: str) -> Path:
    """Where the twin of file `name` is written: beside `_tiled.py`."""
    return TARGET.with_name(name)


if __name__ == "__main__":
    TARGET.write_text(render())
    for r, v, name, purpose in TWINS:
        twin_path(name).write_text(render_twin(r, v, purpose))
