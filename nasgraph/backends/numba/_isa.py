"""The vector width the kernels are compiled for on this CPU, and the tiles it allows.

The register-tiled kernels (`_tiled` and its twins) hold their accumulators in scalars
that LLVM's SLP vectorizer packs into vector registers, as wide as LLVM prefers for the CPU.
On AVX-512 CPUs its tuning prefers 256-bit vectors (Intel's server cores since Skylake),
which leaves half of each register and 16 of the 32 unused. `use_wide_vectors`, called
before numba is first imported, lifts that preference through numba's NUMBA_CPU_FEATURES
(the host's features plus "-prefer-256-bit"), unless the user set that variable; numba's
cache keys its kernels by the features, so kernels compiled either way never mix.

Measured on an Intel Xeon with AVX-512, one thread (docs/numba.md, "AVX-512"): with 512-bit
vectors `_tiled`'s 6 x 16 tile takes 0.88-0.94x the time of 256-bit ones, and a 12 x 32 tile
(24 of the 32 registers) 0.73-0.81x that again at 32-64 channels; whole training steps
0.91-0.94x for nets of 16-90 channels, 0.98-1.05x for the smallest. `_tiled_wide`'s 8 x 32
tile does as well on larger maps and better on 4x4 and 8x8 ones, which it covers in whole
tiles. `_wgrad`'s weight-gradient tiles (LLVM IR, vectors of 8 or 16 pixels) take 16
pixels where `wide_vectors` (0.64-0.99x the time for 3-8 channels, docs/numba.md, "The
weight gradient on 16 pixels a vector"); `_wgrad_nhwc`'s tiles, for 512-bit vectors
only, take over from them and from the GEMM at more than 8 channels.
"""

from __future__ import annotations

import os
import sys

FEATURES = "NUMBA_CPU_FEATURES"
PREFER_256 = "-prefer-256-bit"


def _host_features() -> str:
    """LLVM's flattened feature string of this CPU ("+avx2,+avx512f,-amx-tile,..."), as
    numba compiles for it by default; "" where LLVM cannot tell."""
    import llvmlite.binding as llvm  # numba's own dependency; importing it loads no numba

    try:
        return llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        return ""


def use_wide_vectors() -> None:
    """On an AVX-512 CPU, let numba compile 512-bit vectors: sets NUMBA_CPU_FEATURES to the
    host's features without LLVM's 256-bit preference, before numba compiles anything
    (where numba was imported first, it reads its configuration again). Leaves a user's
    own setting alone."""
    if FEATURES in os.environ or os.environ.get("NUMBA_CPU_NAME"):
        return
    features = _host_features()
    if "+avx512f" in features.split(","):
        os.environ[FEATURES] = features + "," + PREFER_256
        if "numba" in sys.modules:
            sys.modules["numba"].config.reload_config()


def _compiled_features() -> list[str]:
    # the features numba's CPU code generator compiles for (creates it where it is not yet)
    from numba.core.registry import cpu_target

    return cpu_target.target_context.codegen().magic_tuple()[2].split(",")


def wide_vectors() -> bool:
    """Whether numba compiles this process's kernels with 512-bit vectors: AVX-512 enabled
    and LLVM's 256-bit preference lifted, as `use_wide_vectors` sets it (or a user did).
    Read from the features numba's code generator actually took: where it had compiled
    before `use_wide_vectors`, they are the host's."""
    features = _compiled_features()
    return "+avx512f" in features and PREFER_256 in features


CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"


def l2_bytes(cache_dir: str = CACHE_DIR) -> int | None:
    """The size of one core's level-2 cache in bytes, as Linux's sysfs gives it (512 KB
    on an AMD EPYC of Zen 3, 1-2 MB on Intel's server cores); None where it is not
    there to read (another OS, a container without sysfs)."""
    try:
        entries = os.listdir(cache_dir)
    except OSError:
        return None
    for entry in sorted(entries):
        try:
            with open(os.path.join(cache_dir, entry, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(cache_dir, entry, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        if level == "2" and size:
            unit = {"K": 1 << 10, "M": 1 << 20}.get(size[-1].upper(), 1)
            digits = size[:-1] if size[-1].isalpha() else size
            return int(digits) * unit if digits.isdigit() else None
    return None
