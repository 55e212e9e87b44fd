"""Chains: consecutive tiled and Winograd convs in one parallel region.

A parallel region costs 3 us on a 2-core machine (numba's parfor launch, measured in a loop
of empty regions), and a ResNet-20 at batch 1 runs 21 convs of 30-80 us each: 5% of the
call is spent opening regions. A chain runs a list of convs (a *program*, one row of ints
per conv: `FIELDS`) in a single region. Each thread works through the convs in order and
waits, before a conv, until every job of the one before is done.

The jobs of a conv are those of `conv2d_tiled` or `conv2d_winograd` (the same `_tiles` and
`_winograd._job` calls). Thread p first takes the jobs of its own share, the p-th of
`threads` equal runs (as prange would give it, so that it reads what it wrote in the conv
before), then any job of the others' shares still unclaimed. Claims are atomic
(`fetch_add`), so no job runs twice and the chain cannot deadlock: a thread waits only for
jobs that a running thread has claimed, even where fewer threads run than were asked for.

Every array is addressed flat, by offset: the activations in the executor's one arena of
buffers, the packed weights and biases in one arena of weights.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from nasgraph.backends.numba import _winograd as winograd_k
from nasgraph.backends.numba._tiled import (
    R,
    _strides,
    _tiles,
    jobs_per_block,
    zero_border,
)

FIELDS = ("kind", "n_jobs", "x_0", "hp", "row", "w_0", "w_1", "run", "b_0", "b_1", "z_0",
          "z_1", "blocks",
          "cout", "cin", "kh", "sh", "sw", "dh", "act", "has_res", "ho", "wo",
          "o_n", "o_c", "o_h", "o_w", "o_0", "r_n", "r_c", "r_h", "r_w", "r_0",
          "pad", "p_0", "p_h", "p_w", "p_c", "a", "b", "c")
(KIND, N_JOBS, X_0, HP, ROW, W_0, W_1, RUN, B_0, B_1, Z_0, Z_1, BLOCKS, COUT, CIN, KH, SH, SW,
 DH, ACT, HAS_RES, HO, WO, O_N, O_C, O_H, O_W, O_0, R_N, R_C, R_H, R_W, R_0, PAD, P_0, P_H,
 P_W, P_C, A, B, C) = range(len(FIELDS))
TILED, WINOGRAD = 0, 1  # kinds
STRATEGIES = ("tiled", "winograd")  # the conv strategies a chain runs
LINE = 8  # int64 counters a cache line apart: the threads' claims do not share lines


@intrinsic
def fetch_add(typingctx, a, i, v):
    """a[i] += v as one atomic step (sequentially consistent); the value before."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")
    return types.int64(a, i, v), codegen


@intrinsic
def load_acquire(typingctx, a, i):
    """a[i], read atomically: a loop that waits on it sees other threads' writes."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])
        return builder.load_atomic(ptr, "acquire", ir.IntType(64).get_abi_alignment(
            context.target_data))
    return types.int64(a, i), codegen


@njit(cache=True)
def _zero_border(a, p_0, hp, wp, c, pad):
    """`zero_border` of the Hp x Wp x C sample at p_0 in the flat `a`."""
    zero_border(a[p_0:p_0 + hp * wp * c].reshape((hp, wp, c)), pad)


@njit(cache=True)
def _tiled_job(prog, s, job, arena, wts):
    """Job `job` of the tiled conv of row s, as `conv2d_tiled` splits them."""
    n_pt, n_job, n_cb = prog[s, A], prog[s, B], prog[s, BLOCKS]
    n, j, cb = job // (n_job * n_cb), job // n_cb % n_job, job % n_cb
    o_n, r_n = prog[s, O_N], prog[s, R_N]
    if prog[s, PAD] > 0 and cb == 0 and j == 0:  # a sample's first job
        _zero_border(arena, prog[s, P_0] + n * o_n, prog[s, P_H], prog[s, P_W], prog[s, P_C],
                     prog[s, PAD])
    ho, wo, row = prog[s, HO], prog[s, WO], prog[s, ROW]
    _tiles(arena, prog[s, X_0] + n * prog[s, HP] * row, row, wts[prog[s, W_0]:prog[s, W_1]],
           prog[s, RUN], wts[prog[s, B_0]:prog[s, B_1]], cb, j * n_pt // n_job,
           (j + 1) * n_pt // n_job, ho * wo, wo, prog[s, COUT], prog[s, CIN], prog[s, KH],
           prog[s, SH], prog[s, SW], prog[s, DH],
           prog[s, ACT], prog[s, HAS_RES], arena, n * o_n + prog[s, O_0], prog[s, O_C],
           prog[s, O_H], prog[s, O_W], arena, n * r_n + prog[s, R_0], prog[s, R_C],
           prog[s, R_H], prog[s, R_W])


@njit(cache=True)
def _winograd_job(prog, s, job, arena, wts, work, w_0):
    """Job `job` of the Winograd conv of row s, as `conv2d_winograd` splits them, in the
    work buffer from w_0 on."""
    group, splits, n_tiles = prog[s, A], prog[s, B], prog[s, C]
    blocks, ho, wo = prog[s, BLOCKS], prog[s, HO], prog[s, WO]
    th, tw = (ho + 3) // 4, (wo + 3) // 4
    t0, t1 = job // splits * group, min(n_tiles, (job // splits + 1) * group)
    sp = job % splits
    if prog[s, PAD] > 0 and sp == 0:  # the samples whose first tile is in this job
        for n in range((t0 + th * tw - 1) // (th * tw), (t1 + th * tw - 1) // (th * tw)):
            _zero_border(arena, prog[s, P_0] + n * prog[s, O_N], prog[s, P_H], prog[s, P_W],
                         prog[s, P_C], prog[s, PAD])
    o_s = (prog[s, O_N], prog[s, O_C], prog[s, O_H], prog[s, O_W], prog[s, O_0])
    r_s = (prog[s, R_N], prog[s, R_C], prog[s, R_H], prog[s, R_W], prog[s, R_0])
    winograd_k._job(arena, prog[s, HP], prog[s, ROW], prog[s, X_0], prog[s, CIN],
                    wts[prog[s, W_0]:prog[s, W_1]], wts[prog[s, Z_0]:prog[s, Z_1]], blocks,
                    wts[prog[s, B_0]:prog[s, B_1]], t0, t1, sp * blocks // splits,
                    (sp + 1) * blocks // splits, prog[s, COUT], th, tw, ho, wo, prog[s, ACT],
                    prog[s, HAS_RES], arena, o_s, arena, r_s, work, w_0)


@njit(cache=True)
def _worker(p, threads, prog, arena, wts, work, w_0, sync):
    """Thread p's part of a chain: every conv in turn, its own share of the jobs, then
    what is left of the others'. sync[s*stride + q*LINE] counts the claims on share q of
    conv s, sync[s*stride + threads*LINE] its jobs done."""
    stride = (threads + 1) * LINE
    for s in range(prog.shape[0]):
        if s > 0:  # the conv before is done
            while load_acquire(sync, (s - 1) * stride + threads * LINE) < prog[s - 1, N_JOBS]:
                pass
        n_jobs, ran = prog[s, N_JOBS], 0
        for k in range(threads):
            q = (p + k) % threads
            first = n_jobs * q // threads
            count = n_jobs * (q + 1) // threads - first
            while True:
                i = fetch_add(sync, s * stride + q * LINE, 1)
                if i >= count:
                    break
                if prog[s, KIND] == TILED:
                    _tiled_job(prog, s, first + i, arena, wts)
                else:
                    _winograd_job(prog, s, first + i, arena, wts, work, w_0)
                ran += 1
        if ran > 0:
            fetch_add(sync, s * stride + threads * LINE, ran)


@njit(parallel=True, cache=True)
def run(prog, arena, wts, work, sync, threads):
    """Run the chain `prog` on `threads` threads, numba's current count (at most work's
    rows). `arena`, `wts`: flat float32 activations and weights; `work`: a row of Winograd
    work buffer per thread; `sync`: at least rows x (threads + 1) x LINE int64 counters."""
    threads = min(threads, work.shape[0])
    sync[:prog.shape[0] * (threads + 1) * LINE] = 0
    workf = work.reshape(work.size)
    for p in prange(threads):
        _worker(p, threads, prog, arena, wts, workf, p * work.shape[1], sync)


def _offset(a: np.ndarray, arena: np.ndarray) -> int:
    """Where view `a` starts in `arena`, in elements."""
    return (a.ctypes.data - arena.ctypes.data) // a.itemsize


def conv_row(kind: int, rows: np.ndarray, x_off: int, w: np.ndarray, bias: np.ndarray,
             zeros: np.ndarray | None, res: np.ndarray, out: np.ndarray, co: int, cout: int,
             cin: int, kernel: tuple[int, int], stride: tuple[int, int], dh: int, act: int,
             has_res: int, out_pad: int, res_pad: int, arena: np.ndarray, wts: np.ndarray,
             threads: int) -> np.ndarray:
    """One conv's program row, for the arguments `conv2d_tiled` (kind TILED) or
    `conv2d_winograd` (WINOGRAD) would take, every array a view of `arena` or `wts`."""
    n_batch, hp, row = rows.shape
    ho, wo = (out.shape[2], out.shape[3]) if out_pad < 0 else \
        (out.shape[1] - 2 * out_pad, out.shape[2] - 2 * out_pad)
    f = dict.fromkeys(FIELDS, 0)
    o = _strides(out, out_pad, ho, wo, co)
    r = _strides(res, res_pad, ho, wo, 0)
    f.update(kind=kind, x_0=_offset(rows, arena) + x_off, hp=hp, row=row,
             w_0=_offset(w, wts), w_1=_offset(w, wts) + w.size, b_0=_offset(bias, wts),
             b_1=_offset(bias, wts) + bias.size, cout=cout, cin=cin, kh=kernel[0],
             sh=stride[0], sw=stride[1], dh=dh, act=act, has_res=has_res, ho=ho, wo=wo,
             o_n=o[0], o_c=o[1], o_h=o[2], o_w=o[3], o_0=o[4] + _offset(out, arena),
             r_n=r[0], r_c=r[1], r_h=r[2], r_w=r[3],
             r_0=r[4] + (_offset(res, arena) if has_res else 0))
    if out_pad > 0:
        f.update(pad=out_pad, p_0=_offset(out, arena), p_h=out.shape[1], p_w=out.shape[2],
                 p_c=out.shape[3])
    if kind == TILED:  # as conv2d_tiled splits its jobs
        n_cb = w.shape[0]
        n_pt = (ho * wo + R - 1) // R
        n_job = jobs_per_block(n_batch, n_cb, n_pt, threads)
        f.update(run=w.shape[2], blocks=n_cb, a=n_pt, b=n_job, n_jobs=n_batch * n_job * n_cb)
    else:  # as conv2d_winograd does
        n_tiles = n_batch * ((ho + 3) // 4) * ((wo + 3) // 4)
        group, splits = winograd_k._plan(n_tiles, w.shape[1], threads, w.shape[2])
        f.update(z_0=_offset(zeros, wts), z_1=_offset(zeros, wts) + zeros.size,
                 blocks=w.shape[1], a=group, b=splits, c=n_tiles,
                 n_jobs=(n_tiles + group - 1) // group * splits)
    return np.array([f[k] for k in FIELDS], np.int64)
