"""1x1 convs in NCHW as register tiles: out[n] = W · x[n], a sample's planes the product's
right operand as they lie.

numpy's batched matmul runs one sgemm a sample (`_conv_matmul.pointwise_forward`); on
the small products of a search candidate's 1x1 convs (8-128 channels, 16-196 pixels)
OpenBLAS spends much of each call packing its operands. Here a tile is 4 output channels
x 3 vectors of 8 pixels, 12 of AVX2's 16 vector registers of sums: for each input
channel it loads the 24 pixels of its plane once, broadcasts the 4 weights, and adds 12
products (`_outer`'s tiles, which `_strided_dx` shares). A plane's pixels past its whole
tiles of 24 go in one tile of 3, 2 or 1 vectors ending at its last pixel, which computes
some pixels twice and stores the same values; the last block of 4 channels likewise ends
at the last channel. The same kernel computes the input gradient, Wᵀ · dY.
`_conv_matmul.pointwise_tiles` says where it runs.

A tile reads one run of 24 pixels from each of the sample's Cin planes, a plane apart:
more streams than the hardware's prefetcher follows, so that on 14x14 maps, where a
sample is 10-75 KB, every block's first tiles waited on memory. While a thread computes
a sample, its tiles ask for the next sample's cache lines a few at a time, and for its
output's to write (`_prefetch`; docs/numba.md, "1x1 convs prefetch the next sample").
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._outer import WIDTH, tile4x1, tile4x2, tile4x3
from nasgraph.backends.numba._prefetch import LINE, prefetch_lines

ROWS = 4  # output channels a tile
MIN_PIXELS = WIDTH  # planes of fewer pixels than a vector stay with numpy
# planes of fewer pixels do not ask for their output's lines: on 7x7 maps, 0.99-1.04x the
# time without (docs/numba.md, "1x1 convs prefetch the next sample")
ASK_OUT_PIXELS = 96


@njit(inline="always", cache=True)
def _tiles(x1, xa, p, cin, w1, wa, o1, oa, at, n_vectors):
    # the tile of n_vectors vectors from pixel `at` of a plane p pixels long: W's 4 rows
    # from wa broadcast, the planes' runs from xa + at, stored from oa + at
    q, pu, cu = np.uint64(at), np.uint64(p), np.uint64(cin)
    rows = (wa, wa + cu, wa + np.uint64(2) * cu, wa + np.uint64(3) * cu)
    o = oa + q
    outs = (o, o + pu, o + np.uint64(2) * pu, o + np.uint64(3) * pu)
    if n_vectors == 3:
        tile4x3(w1, rows, np.uint64(1), cu, x1, xa + q, pu, o1, outs)
    elif n_vectors == 2:
        tile4x2(w1, rows, np.uint64(1), cu, x1, xa + q, pu, o1, outs)
    else:
        tile4x1(w1, rows, np.uint64(1), cu, x1, xa + q, pu, o1, outs)


@njit(inline="always", cache=True)
def _lines(values):
    # cache lines a run of `values` float32 spans, from a line's start
    return (values + LINE - 1) // LINE


@njit(parallel=True, cache=True)
def pointwise(x, w, out, threads):
    """out[n] = w · x[n] for the samples of x (N x Cin x P, P >= 8 pixels; C-contiguous
    of any shape), w (Cout x Cin, Cout >= 4), out (N x Cout x P). Each thread its share
    of the samples, and the tiles of each the next one's lines prefetched."""
    n_batch, cin = x.shape[0], x.shape[1]
    cout = w.shape[0]
    p = x[0].size // cin
    x1, w1, o1 = x.reshape(x.size), w.reshape(w.size), out.reshape(out.size)
    full = p // 24 * 24
    rest = p - full
    sample, written = cin * p, cout * p
    # the next sample's lines, and its output's, spread over a sample's whole tiles
    tiles = max(1, (cout + ROWS - 1) // ROWS * (full // 24))
    per_tile = -(-_lines(sample) // tiles)
    per_tile_out = -(-_lines(written) // tiles) if p >= ASK_OUT_PIXELS else 0
    for t in prange(threads):
        end = (t + 1) * n_batch // threads
        for s in range(t * n_batch // threads, end):
            nxt, out_nxt = np.uint64((s + 1) * sample), np.uint64((s + 1) * written)
            more = s + 1 < end
            last = nxt + np.uint64(sample) if more else nxt
            out_last = out_nxt + np.uint64(written) if more else out_nxt
            line = out_line = 0
            for c0 in range(0, cout, ROWS):
                cb = min(c0, cout - ROWS)
                xa = np.uint64(s * sample)
                wa = np.uint64(cb * cin)
                oa = np.uint64((s * cout + cb) * p)
                for p0 in range(0, full, 24):
                    line = prefetch_lines(x1, nxt, line, last, per_tile)
                    out_line = prefetch_lines(o1, out_nxt, out_line, out_last, per_tile_out,
                                              True)
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p0, 3)
                # the pixels left: tiles ending at the last pixel, starting at or after 0
                if rest > 16 and p >= 24:
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p - 24, 3)
                elif rest > 16:
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, 0, 2)
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p - 8, 1)
                elif rest > 8 and p >= 16:
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p - 16, 2)
                elif rest > 8:
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, 0, 1)
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p - 8, 1)
                elif rest > 0:
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p - 8, 1)
