"""Process-wide runtime settings atomnet applies itself, so users need no ``LD_PRELOAD`` or environment recipe.

glibc's allocator returns large freed blocks to the kernel (``munmap`` above the mmap threshold, heap trimming
above the trim threshold) and faults the pages in again, zero-filled, at the next allocation. A SchNet training
step allocates and frees tens of (n_pairs × F) float32 tensors of a few MiB each, so on CPU a part of it is
page faults. Measured here (2 threads, batches of 100 molecules, ``python scripts/bench_levers.py``,
``docs/performance.md``): energy training on QM9 66.5 ms per step with glibc's defaults, 61.1 ms with the
settings below, 58.3 ms with tcmalloc preloaded; energy + force training on C7H12O2 312.6, 277.4 and 275.2 ms.

:func:`tune_allocator` keeps freed blocks in the process instead: blocks up to 32 MiB (glibc's largest mmap
threshold on 64-bit) come from the heap, and up to 1 GiB of free heap is kept rather than trimmed. Peak memory is
unchanged; memory freed after the peak is reused by the process rather than handed back to the system.
It runs once per process when the first :class:`~atomnet.potential.Potential` is built (training, evaluation,
the ASE calculator, MD, explanations). ``ATOMNET_MALLOC=default`` leaves glibc's settings alone; on a C library
other than glibc, or when another allocator (tcmalloc, jemalloc) is preloaded, it does nothing.

OpenMP threads (torch's CPU wheel uses GNU OpenMP) wait for the next parallel region at the end of each one. With
``OMP_WAIT_POLICY=PASSIVE`` they sleep at once and every parallel op wakes them through the kernel (a futex
call); with libgomp's default they spin 300,000 times (≈ 3 ms) first, which is fastest on idle cores but makes torch several
times slower when the cores are shared with another job. :func:`bounded_openmp_spin` (called by
``import atomnet``, so it takes effect when atomnet is imported before torch) sets ``GOMP_SPINCOUNT=10000``
(≈ 0.1 ms) unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` (``ATOMNET_OMP_WAIT=default`` opts out).
Measured on 2 cores, 2 threads, batches of 100 molecules (``python scripts/bench_levers.py --variants
baseline,omp-passive,omp-default``, then with ``--busy 1``; ``docs/performance.md``): on idle cores within 3 % of
libgomp's default and 1.2-1.3x faster than PASSIVE in training (ethanol inference with forces in
``scripts/bench_peers.py``: 4,965 molecules/s before, 8,010 after, two runs of one day); next to one busy
process 2.2-2.5x faster than libgomp's default and 0.71-0.83x PASSIVE.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # bytes; glibc's maximum on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1024 * 1024 * 1024  # bytes of free heap kept before trimming
TOP_PAD = 64 * 1024 * 1024  # bytes requested beyond each heap growth

_state: dict[str, bool] = {}

#: GNU OpenMP spin iterations before a waiting thread sleeps (libgomp's own default: 300,000)
OPENMP_SPIN_COUNT = 10_000


def bounded_openmp_spin(environ: dict | None = None) -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`OPENMP_SPIN_COUNT` unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set
    (or ``ATOMNET_OMP_WAIT=default``). Acts on ``environ`` (default ``os.environ``) and only matters before
    OpenMP starts, i.e. before torch is imported. Returns whether it set the variable."""
    env = os.environ if environ is None else environ
    if env.get("ATOMNET_OMP_WAIT", "").lower() == "default":
        return False
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return False
    env["GOMP_SPINCOUNT"] = str(OPENMP_SPIN_COUNT)
    return True


def _preloaded_allocator() -> bool:
    preload = os.environ.get("LD_PRELOAD", "")
    return any(name in preload for name in ("tcmalloc", "jemalloc", "mimalloc"))


def tune_allocator() -> bool:
    """Apply the allocator settings above once per process. Returns whether glibc accepted them (``False``
    when disabled by ``ATOMNET_MALLOC=default``, another allocator is preloaded, or not on glibc)."""
    if "applied" in _state:
        return _state["applied"]
    applied = False
    if (
        sys.platform.startswith("linux")
        and os.environ.get("ATOMNET_MALLOC", "").lower() != "default"
        and not _preloaded_allocator()
    ):
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError):  # musl and others: no glibc mallopt
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            applied = all(
                mallopt(param, value) == 1
                for param, value in (
                    (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                    (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                    (M_TOP_PAD, TOP_PAD),
                )
            )
    _state["applied"] = applied
    return applied
