"""Keep glibc from handing big tensor buffers back to the OS after every step.

A training step of a word-level model allocates and frees buffers of tens of MB (logits of
batch x seq x vocab and their gradients). glibc serves allocations above its mmap threshold
(at most 32 MB) with fresh mmap()s and unmaps them on free, so each step faults the same
memory in again: on PTB that was a quarter of all CPU time, spent in the kernel. Turning
mmap off for malloc and raising the trim threshold lets freed blocks be reused instead; the
cost is a higher peak RSS (blocks stay in the heap, up to `trim_mb` of free space at its top
is kept). `tune_allocator()` runs at every entry point (main.py, model_explorer, the tests);
set LM_MALLOC_TUNING=0 to keep glibc's defaults.
"""
import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4
_tuned = False


def tune_allocator(trim_mb: int = 256) -> bool:
    """Serve big allocations from the reusable heap (once per process). True when the settings were
    applied; False off Linux/glibc, when LM_MALLOC_TUNING=0, or when glibc refused them."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("LM_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    _tuned = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, trim_mb << 20))
    return _tuned
