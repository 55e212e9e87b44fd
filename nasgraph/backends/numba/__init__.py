"""The Numba backend: a JIT-compiled CPU executor for nasgraph graphs.

`compile(graph, state_dict)` runs the passes (identities dropped, BN folded, activations and
residual adds fused), plans memory and returns an `Executor` calling `@njit(cache=True)`
kernels on NCHW float32 arrays.
"""

import os

# SLP vectorization packs the conv kernels' scalar accumulators into vector registers; it
# is read once, when numba is first imported, so it must be set before that.
os.environ.setdefault("NUMBA_SLP_VECTORIZE", "1")

# On AVX-512 CPUs, 512-bit vectors (LLVM's tuning prefers 256-bit ones there): read, too,
# when numba is first imported
from nasgraph.backends.numba._isa import use_wide_vectors  # noqa: E402

use_wide_vectors()

from nasgraph.backends.numba.executor import Executor, compile, set_threads  # noqa: E402
from nasgraph.backends.numba.grad import Gradients, loss_and_grads, value_and_grad  # noqa: E402
from nasgraph.backends.numba.loop import fit  # noqa: E402

__all__ = ["Executor", "Gradients", "compile", "fit", "loss_and_grads", "set_threads",
           "value_and_grad"]
