"""Winograd F(4x4, 3x3) convolution: 3x3, stride 1, dilation 1, ungrouped.

A 4x4 tile of output pixels is computed from the 6x6 window of input under it with 36
multiply-adds per input and output channel, where a direct conv does 144 (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", 2015):

    Y = A^T [ (G g G^T) * (B^T d B) ] A

for a 3x3 kernel g, a 6x6 input window d and the constant matrices A (6x4), B (6x6) and G
(6x3) below (interpolation points 0, 1, -1, 2, -2 and infinity). The kernel transform
U = G g G^T is done once, when the weights are packed. A call then runs, per group of
tiles, three steps on one thread, in the thread's own part of a work buffer:

1. input transform: V = B^T d B, for every tile of the group and input channel;
2. 36 matrix products, one per position (a, b) of the 6x6 transformed tile:
   M[t, ab, :] = V[t, ab, :] @ U[ab] (tiles x Cin times Cin x Cout), run by the tiled
   conv's register-tiled inner kernel (`_tiled._tiles`) as a 1x1 conv over the group's
   tiles, so that no second one has to be compiled;
3. output transform and epilogue: act(A^T M A + bias + residual), written NCHW at channel
   offset `co` (whole tiles 16 channels at a time through a transpose in registers) or
   zero-padded NHWC for the next conv, as the tiled conv writes.

A group's tiles go through all three steps before the next group, so the work buffer
stays in the core's cache and the threads never wait for each other: one parallel region
a conv. Where there are few tiles (8x8 outputs: four at batch 1), the jobs split the
output channels as well, each transforming the group's input itself.

The input is the tiled conv's: a zero-padded N x Hp x (Wp*Cin) buffer. Tiles that run
past the output's last row or column (sizes not a multiple of 4) read their window
through a zero-filled copy and write only the pixels that exist.

Arithmetic is in float32, fastmath without `reassoc` as in the tiled kernel. The
transforms add rounding error: 1e-6 to 1e-5 of the output's scale for 16 to 256 input
channels (against float64), which the agreement tests bound.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._activations import activate_call
from nasgraph.backends.numba._tiled import R, V, _strides, _tiles, zero_border
from nasgraph.backends.numba._transpose import BLOCK as SIDE
from nasgraph.backends.numba._transpose import transpose16

FASTMATH = {"contract", "nsz", "arcp"}

# the kernel transform: U = G g G^T, 6x6 per 3x3 kernel
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
# for reference and tests; `_bt` and `_at` below have them written out
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], float)


def pack_weights(w: np.ndarray, flip: bool = False) -> np.ndarray:
    """Cout x Cin x 3 x 3 -> U = G g G^T as 36 x ceil(Cout/V) x Cin x V (float32, computed
    in float64, output channels zero-padded to whole blocks): the layout `_tiles` reads its
    weights in, with position ab and channel block cb at block ab * blocks + cb. With
    `flip`, w is a forward conv's weight and the kernel packed its input gradient's (seed
    003): each kernel rotated by 180 degrees, its channel axes swapped. Training packs
    them every step (0.07 ms for 64 x 64 channels, one thread)."""
    cout, cin = (w.shape[1], w.shape[0]) if flip else w.shape[:2]
    # taps outermost, output channels innermost: the transform's runs
    taps = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1) if flip else w.transpose(2, 3, 1, 0)
    blocks = -(-cout // V)
    u = (np.zeros if cout % V else np.empty)((36, blocks, cin, V), np.float32)
    _transform(np.ascontiguousarray(taps, np.float32), u)
    return u


@njit(parallel=True, cache=True)
def _transform(taps, u):
    """u[a*6 + b, o // V, c, o % V] = (G g G^T)[a, b] for the 3x3 kernel g[i, j] = taps[i,
    j, c, o], in float64, as T = G g, then T G^T (G's rows written out), V output channels
    at a time, in the order u is laid out in (a block of them a job)."""
    h0, h1, h2, h3 = 1 / 4, 1 / 6, 1 / 12, 1 / 24
    cin, cout = taps.shape[2], taps.shape[3]
    for cb in prange((cout + V - 1) // V):
        t = np.empty((6, 3, V))
        o0 = cb * V
        for c in range(cin):
            for j in range(3):
                for v in range(min(V, cout - o0)):
                    g0 = np.float64(taps[0, j, c, o0 + v])
                    g1 = np.float64(taps[1, j, c, o0 + v])
                    g2 = np.float64(taps[2, j, c, o0 + v])
                    t[0, j, v] = g0 * h0
                    t[1, j, v] = -(g0 + g1 + g2) * h1
                    t[2, j, v] = -(g0 - g1 + g2) * h1
                    t[3, j, v] = g0 * h3 + g1 * h2 + g2 * h1
                    t[4, j, v] = g0 * h3 - g1 * h2 + g2 * h1
                    t[5, j, v] = g2
            for a in range(6):
                b = a * 6
                for v in range(min(V, cout - o0)):
                    g0, g1, g2 = t[a, 0, v], t[a, 1, v], t[a, 2, v]
                    u[b, cb, c, v] = g0 * h0
                    u[b + 1, cb, c, v] = -(g0 + g1 + g2) * h1
                    u[b + 2, cb, c, v] = -(g0 - g1 + g2) * h1
                    u[b + 3, cb, c, v] = g0 * h3 + g1 * h2 + g2 * h1
                    u[b + 4, cb, c, v] = g0 * h3 - g1 * h2 + g2 * h1
                    u[b + 5, cb, c, v] = g2


WORK_BYTES = 1 << 21  # a thread's work buffer, at most (groups of R tiles excepted)


@njit(cache=True)
def largest_group(cin, blocks):
    """The most tiles a group holds: as many as fit WORK_BYTES of work buffer (each
    weight is read once per group), at least R (the inner kernel's tile). `blocks`:
    output channel blocks of V."""
    return max(R, WORK_BYTES // (4 * 36 * (cin + blocks * V)))


def work_size(cin: int, cout: int) -> int:
    """float32 values of one thread's part of the work buffer: the transformed inputs
    (group x 36 x Cin), the products (group x 36 x Cout padded), one 6x6 input window
    and one tile's half-transformed values (36 x max(Cin, Cout padded))."""
    coutp = -(-cout // V) * V
    return largest_group(cin, coutp // V) * 36 * (cin + coutp) + 36 * cin \
        + 36 * max(cin, coutp)


@njit(cache=True)
def _plan(n_tiles, blocks, threads, cin):
    """(tiles per group, channel splits) for a call: the fewest groups the work buffer
    holds, in a multiple of `threads` (numba gives each thread an equal run of jobs);
    with fewer tiles than threads x R, the jobs split the output channel blocks too (each
    then transforms its group's input itself)."""
    largest = largest_group(cin, blocks)
    n_groups = (n_tiles + largest - 1) // largest
    n_groups = min((n_groups + threads - 1) // threads * threads, (n_tiles + R - 1) // R)
    group = (n_tiles + n_groups - 1) // n_groups
    n_groups = (n_tiles + group - 1) // group
    splits = 1
    if n_groups < threads:
        splits = min(blocks, (threads + n_groups - 1) // n_groups)
    return group, splits


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _bt(z0, z1, z2, z3, z4, z5):
    """B^T z for one column z of six values: the input transform's rows, with their
    common terms shared (LLVM may not find them itself: that needs reassociation)."""
    f2, f4, f5 = np.float32(2.0), np.float32(4.0), np.float32(5.0)
    p, q = z4 - f4 * z2, z3 - f4 * z1  # rows 1 and 2: p + q, p - q
    r, s = z4 - z2, f2 * (z3 - z1)  # rows 3 and 4: r + s, r - s
    return f4 * z0 - f5 * z2 + z4, p + q, p - q, r + s, r - s, f4 * z1 - f5 * z3 + z5


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _at(z0, z1, z2, z3, z4, z5):
    """A^T z for one column z of six values: the output transform's rows, their common
    terms shared."""
    f2, f4, f8 = np.float32(2.0), np.float32(4.0), np.float32(8.0)
    a, b, c, d = z1 + z2, z1 - z2, z3 + z4, z3 - z4
    return z0 + a + c, b + f2 * d, a + f4 * c, b + f8 * d + z5


@njit(cache=True, fastmath=FASTMATH)
def _input_tile(src, s0, rs, cin, dst, d0, tmp, h):
    """dst[d0 + (a*6 + b)*cin + c] = (B^T d B)[a, b] for the 6x6 window d whose value of
    row i, column j, channel c is src[s0 + i*rs + j*cin + c], through tmp[h:h + 36*cin].
    Flat unsigned offsets into whole arrays, no views: a view of the work buffer would
    update its reference count, one count shared by the threads, at every tile."""
    # (every offset is a sum of unsigned values: a product with an int literal is signed,
    # and a signed index gets a negative-index fix-up that blocks vectorization)
    cu, rs, cu6 = np.uint64(cin), np.uint64(rs), np.uint64(6 * cin)
    # B^T d: tmp[a*6 + j] = sum_i BT[a, i] d[i, j]. For each row i, the window's columns
    # and channels are one run of 6*cin values, so this is one loop over the six runs
    # together (a loop per column was too short to vectorize well at 16 channels)
    b0 = np.uint64(s0)
    b1 = b0 + rs
    b2 = b1 + rs
    b3 = b2 + rs
    b4 = b3 + rs
    b5 = b4 + rs
    t0 = np.uint64(h)
    t1 = t0 + cu6
    t2 = t1 + cu6
    t3 = t2 + cu6
    t4 = t3 + cu6
    t5 = t4 + cu6
    for k in range(cu6):
        y0, y1, y2, y3, y4, y5 = _bt(src[b0 + k], src[b1 + k], src[b2 + k], src[b3 + k],
                                     src[b4 + k], src[b5 + k])
        tmp[t0 + k], tmp[t1 + k], tmp[t2 + k] = y0, y1, y2
        tmp[t3 + k], tmp[t4 + k], tmp[t5 + k] = y3, y4, y5
    for a in range(6):  # (B^T d) B, row by row
        s = np.uint64(h + a * 6 * cin)
        s1 = s + cu
        s2 = s1 + cu
        s3 = s2 + cu
        s4 = s3 + cu
        s5 = s4 + cu
        o = np.uint64(d0 + a * 6 * cin)
        o1 = o + cu
        o2 = o1 + cu
        o3 = o2 + cu
        o4 = o3 + cu
        o5 = o4 + cu
        for k in range(cu):
            y0, y1, y2, y3, y4, y5 = _bt(tmp[s + k], tmp[s1 + k], tmp[s2 + k], tmp[s3 + k],
                                         tmp[s4 + k], tmp[s5 + k])
            dst[o + k], dst[o1 + k], dst[o2 + k] = y0, y1, y2
            dst[o3 + k], dst[o4 + k], dst[o5 + k] = y3, y4, y5


@njit(cache=True, fastmath=FASTMATH)
def _output_tile(m, m0, coutp, c0, c1, bias, tmp, h, dst, d0, d_h, d_w, res1, r0, r_h,
                 r_w, has_res, lo, hi):
    """min(max((A^T M A)[a, b] + bias[c] + res, lo), hi) for channels c in c0..c1 to
    dst[d0 + a*d_h + b*d_w + c], where M[i, j] of channel c is m[m0 + (i*6 + j)*coutp + c]
    and res is res1[r0 + a*r_h + b*r_w + c] (read where `has_res`), through
    tmp[h:h + 24*coutp]. The clamp is the
    identity, ReLU or ReLU6 (lo, hi = -inf or 0, inf or 6) without a branch in the loop,
    which LLVM vectorizes."""
    cu, cu6 = np.uint64(coutp), np.uint64(6 * coutp)  # unsigned sums only, as above
    c0, c1 = np.uint64(c0), np.uint64(c1)
    # A^T M: tmp[a*6 + j] = sum_i AT[a, i] M[i, j]: for each row i of M, its columns and
    # channels are one run of 6*coutp values, so where the job has every channel this is
    # one loop over the six runs together (a loop per column, too short at 16 channels)
    runs, run, first = 6, c1 - c0, c0  # a run per column, of the job's channels
    if c0 == 0 and c1 + np.uint64(V) > cu:  # every channel block (c1 leaves out padding)
        runs, run = 1, cu6
    for j in range(runs):
        s = np.uint64(m0) + first + np.uint64(j) * cu
        s1 = s + cu6
        s2 = s1 + cu6
        s3 = s2 + cu6
        s4 = s3 + cu6
        s5 = s4 + cu6
        t0 = np.uint64(h) + first + np.uint64(j) * cu
        t1 = t0 + cu6
        t2 = t1 + cu6
        t3 = t2 + cu6
        for k in range(run):
            y0, y1, y2, y3 = _at(m[s + k], m[s1 + k], m[s2 + k], m[s3 + k], m[s4 + k],
                                 m[s5 + k])
            tmp[t0 + k], tmp[t1 + k], tmp[t2 + k], tmp[t3 + k] = y0, y1, y2, y3
    dw, rw = np.uint64(d_w), np.uint64(r_w)
    for a in range(4):  # (A^T M) A + bias (+ residual), clamped, row by row
        s = np.uint64(h + a * 6 * coutp)
        s1 = s + cu
        s2 = s1 + cu
        s3 = s2 + cu
        s4 = s3 + cu
        s5 = s4 + cu
        o = np.uint64(d0 + a * d_h)
        o1 = o + dw
        o2 = o1 + dw
        o3 = o2 + dw
        if has_res:
            q = np.uint64(r0 + a * r_h)
            q1 = q + rw
            q2 = q1 + rw
            q3 = q2 + rw
            for k in range(c0, c1):
                y0, y1, y2, y3 = _at(tmp[s + k], tmp[s1 + k], tmp[s2 + k], tmp[s3 + k],
                                     tmp[s4 + k], tmp[s5 + k])
                b = bias[k]
                dst[o + k] = min(max(y0 + b + res1[q + k], lo), hi)
                dst[o1 + k] = min(max(y1 + b + res1[q1 + k], lo), hi)
                dst[o2 + k] = min(max(y2 + b + res1[q2 + k], lo), hi)
                dst[o3 + k] = min(max(y3 + b + res1[q3 + k], lo), hi)
        else:
            for k in range(c0, c1):
                y0, y1, y2, y3 = _at(tmp[s + k], tmp[s1 + k], tmp[s2 + k], tmp[s3 + k],
                                     tmp[s4 + k], tmp[s5 + k])
                b = bias[k]
                dst[o + k] = min(max(y0 + b, lo), hi)
                dst[o1 + k] = min(max(y1 + b, lo), hi)
                dst[o2 + k] = min(max(y2 + b, lo), hi)
                dst[o3 + k] = min(max(y3 + b, lo), hi)


@njit(inline="always", cache=True)
def _store_planes(y, y0, coutp, c0, c1, out1, at, o_c, o_h, h):
    """A whole tile's 4 x 4 pixels of channels c0..c1 (c0 a multiple of V; pixel (a, b) of
    channel c at y0 + (a*4 + b)*coutp + c in y) to NCHW planes (at at + c*o_c + a*o_h + b
    in `out1`): 16 channels at a time transposed in registers (`transpose16`) into
    y[h:h + 256], then each channel's four rows of four. Value by value (`_store_tile`),
    a store a channel apart, the whole conv took 1.34-1.41x as long (64 channels on 16 x
    16, batch 64, one thread)."""
    hu, cu = np.uint64(h), np.uint64(coutp)
    for c in range(c0, c1, SIDE):
        transpose16(y, np.uint64(y0 + c), cu, y, hu, np.uint64(SIDE))
        for k in range(min(SIDE, c1 - c)):
            s = hu + np.uint64(k * SIDE)
            o = np.uint64(at + (c + k) * o_c)
            for a in range(4):  # loaded before stored: a vector each (y may be out1)
                q, r = o + np.uint64(a * o_h), s + np.uint64(4 * a)
                v0, v1, v2, v3 = y[r], y[r + 1], y[r + 2], y[r + 3]
                out1[q], out1[q + 1], out1[q + 2], out1[q + 3] = v0, v1, v2, v3


@njit(cache=True)
def _store_tile(y, y0, coutp, c0, c1, rows, cols, act, has_res, out1, at, o_c, o_h, o_w,
                res1, rt, r_c, r_h, r_w):
    """act(y + residual) of a tile's rows x cols pixels and channels c0..c1 to `out1`, one
    value at a time: the value of pixel (a, b), channel c at at + c*o_c + a*o_h + b*o_w
    (the residual's likewise from rt), y's at y0 + (a*4 + b)*coutp + c. For what the clamp of
    `_output_tile` cannot write: NCHW, other activations, tiles past the edge."""
    oc, rc = np.uint64(o_c), np.uint64(r_c)
    for a in range(rows):
        for b in range(cols):
            yo = np.uint64(y0 + (a * 4 + b) * coutp)
            q = np.uint64(at + a * o_h + b * o_w)
            rq = np.uint64(rt + a * r_h + b * r_w)
            for k in range(np.uint64(c0), np.uint64(c1)):
                v = y[yo + k]
                if has_res:
                    v += res1[rq + k * rc]
                out1[q + k * oc] = activate_call(v, act) if act != 0 else v


@njit(cache=True, fastmath=FASTMATH)
def _job(xf, hp, row, x_off, cin, uf, zeros, blocks, bias, t0, t1, cb0, cb1, cout, th, tw,
         ho, wo, act, has_res, out1, o_s, res1, r_s, wf, w_0):
    """Tiles t0..t1 (counted over the whole batch, row-major per sample) x channel blocks
    cb0..cb1, in the flat work buffer `wf` from w_0 on (this thread's part; an offset, not
    a view: views of one array share one reference count). A function of its own: numba compiles
    the body of a parallel loop more slowly."""
    o_n, o_c, o_h, o_w, o_0 = o_s  # flat strides (`_tiled._strides`)
    r_n, r_c, r_h, r_w, r_0 = r_s
    coutp = blocks * V
    tiles = max(t1 - t0, R)  # the inner kernel computes whole tiles of R
    v_0 = w_0  # this thread's part of the flat work buffer `wf` starts at w_0
    m_0 = v_0 + tiles * 36 * cin
    e_0 = m_0 + tiles * 36 * coutp  # one zero-filled 6x6 window
    h_0 = e_0 + 36 * cin  # half-transformed values
    for t in range(t0, t1):  # 1. V = B^T d B
        n, r = t // (th * tw), t % (th * tw)
        i0, j0 = r // tw * 4, r % tw * 4
        d = n * hp * row + x_off + i0 * row + j0 * cin
        dst = v_0 + (t - t0) * 36 * cin
        if i0 + 4 <= ho and j0 + 4 <= wo:
            _input_tile(xf, d, row, cin, wf, dst, wf, h_0)
        else:  # past the last row or column: through a zero-filled copy of the window
            for i in range(6):
                for j in range(6):
                    e = np.uint64(e_0 + (i * 6 + j) * cin)
                    inside = i0 + i < ho + 2 and j0 + j < wo + 2
                    s = np.uint64(d + i * row + j * cin)
                    for k in range(np.uint64(cin)):
                        wf[e + k] = xf[s + k] if inside else np.float32(0.0)
            _input_tile(wf, e_0, 6 * cin, cin, wf, dst, wf, h_0)
    n_pt = (tiles + R - 1) // R
    # constants as int64 variables: a literal argument would make numba compile another
    # specialization of the callee (the inner kernel's took 15 s)
    zero, one = np.int64(0), np.int64(1)
    for ab in range(36):  # 2. M[ab] = V[ab] @ U[ab], as a 1x1 conv over the tiles
        for cb in range(cb0, cb1):
            _tiles(wf, v_0 + ab * cin, zero, uf, cin, zeros, ab * blocks + cb, zero, n_pt,
                   tiles, tiles, 36 * coutp, 36 * cin, one, one, one, one, zero, zero, wf,
                   m_0, one, zero, 36 * coutp, wf, zero, one, zero, zero)
    c0, c1 = cb0 * V, min(cb1 * V, cout)
    # the identity, ReLU and ReLU6 as a clamp, written straight to channels-contiguous
    # outputs, or through y, this tile's 4 x 4 x Cout values, transposed to NCHW ones;
    # the rest through y value by value
    clamp = act <= 2 and o_c == 1 and (r_c == 1 or not has_res)
    planes = act <= 2 and o_w == 1 and o_c != 1 and not has_res
    lo = np.float32(-np.inf) if act == 0 else np.float32(0.0)
    hi = np.float32(6.0) if act == 2 else np.float32(np.inf)
    for t in range(t0, t1):  # 3. act(A^T M A + bias + residual)
        n, r = t // (th * tw), t % (th * tw)
        i0, j0 = r // tw * 4, r % tw * 4
        m = m_0 + (t - t0) * 36 * coutp
        at = n * o_n + o_0 + i0 * o_h + j0 * o_w
        rt = n * r_n + r_0 + i0 * r_h + j0 * r_w
        if clamp and i0 + 4 <= ho and j0 + 4 <= wo:
            _output_tile(wf, m, coutp, c0, c1, bias, wf, h_0, out1, at, o_h, o_w, res1, rt,
                         r_h, r_w, has_res, lo, hi)
        elif planes and i0 + 4 <= ho and j0 + 4 <= wo:
            _output_tile(wf, m, coutp, c0, c1, bias, wf, h_0, wf, m, 4 * coutp, coutp,
                         res1, zero, zero, zero, zero, lo, hi)
            _store_planes(wf, m, coutp, c0, c1, out1, at, o_c, o_h, h_0)
        else:  # y overwrites the tile's own products, read into tmp before
            _output_tile(wf, m, coutp, c0, c1, bias, wf, h_0, wf, m, 4 * coutp, coutp,
                         res1, zero, zero, zero, zero, np.float32(-np.inf),
                         np.float32(np.inf))
            _store_tile(wf, m, coutp, c0, c1, min(4, ho - i0), min(4, wo - j0), act,
                        has_res, out1, at, o_c, o_h, o_w, res1, rt, r_c, r_h, r_w)


@njit(cache=True)
def _setup(xp, u, out, res, ho, wo, co, out_pad, res_pad, threads):
    """What a call's jobs share: sizes, strides, the plan; zeroes the border of an NHWC
    output."""
    n_batch = xp.shape[0]
    th, tw = (ho + 3) // 4, (wo + 3) // 4
    n_tiles = n_batch * th * tw
    group, splits = _plan(n_tiles, u.shape[1], threads, u.shape[2])
    if out_pad > 0:
        for n in range(n_batch):
            zero_border(out[n], out_pad)
    return (th, tw, n_tiles, group, splits, (n_tiles + group - 1) // group * splits,
            _strides(out, out_pad, ho, wo, co), _strides(res, res_pad, ho, wo, 0))


@njit(parallel=True, cache=True)
def conv2d_winograd(xp, x_off, u, zeros, bias, res, out, co, cout, act, has_res, ho, wo,
                    out_pad, res_pad, work, threads):
    """Padded N x Hp x (Wp*Cin) input (as `_tiled.conv2d_tiled` takes it, its padding
    starting `x_off` values into each sample), U packed by `pack_weights` -> the Ho x Wo
    output of channels co..co+cout of `out` (N x C x Ho x Wo for `out_pad` < 0, else padded
    NHWC, border zeroed here), + `res` (likewise by `res_pad`) where `has_res`.
    `zeros`: 36 x Cout padded zeros (the inner kernel's bias); `work`: a row of
    `work_size` float32 values per thread; `threads`: how many share the jobs."""
    th, tw, n_tiles, group, splits, n_jobs, o_s, r_s = _setup(
        xp, u, out, res, ho, wo, co, out_pad, res_pad, threads)
    xf, uf, workf = xp.reshape(xp.size), u.reshape(u.size), work.reshape(work.size)
    out1, res1 = out.reshape(out.size), res.reshape(res.size)
    for job in prange(n_jobs):
        _job(xf, xp.shape[1], xp.shape[2], x_off, u.shape[2], uf, zeros, u.shape[1], bias,
             job // splits * group, min(n_tiles, (job // splits + 1) * group),
             job % splits * u.shape[1] // splits, (job % splits + 1) * u.shape[1] // splits,
             cout, th, tw, ho, wo, act, has_res, out1, o_s, res1, r_s, workf,
             numba.get_thread_id() * work.shape[1])


@njit(cache=True)
def conv2d_winograd_1(xp, x_off, u, zeros, bias, res, out, co, cout, act, has_res, ho, wo,
                      out_pad, res_pad, work, threads):
    """`conv2d_winograd` on the calling thread alone (no parallel region: 1.5-2 us, as
    much as a small conv at batch 1)."""
    th, tw, n_tiles, group, splits, n_jobs, o_s, r_s = _setup(
        xp, u, out, res, ho, wo, co, out_pad, res_pad, 1)
    xf, uf, workf = xp.reshape(xp.size), u.reshape(u.size), work.reshape(work.size)
    out1, res1 = out.reshape(out.size), res.reshape(res.size)
    zero = np.int64(0)  # not a literal 0: that would compile another `_job`
    for g in range((n_tiles + group - 1) // group):
        _job(xf, xp.shape[1], xp.shape[2], x_off, u.shape[2], uf, zeros, u.shape[1], bias,
             g * group, min(n_tiles, (g + 1) * group), zero, u.shape[1], cout, th, tw, ho,
             wo, act, has_res, out1, o_s, res1, r_s, workf, zero)
