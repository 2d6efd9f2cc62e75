"""Keep glibc from handing big tensor buffers back to the OS after every step.

A training step of a word-level model allocates and frees buffers of tens of MB (logits of
batch x seq x vocab and their gradients). glibc serves allocations above its mmap threshold
(at most 32 MB) with fresh mmap()s and unmaps them on free, so each step faults the same
memory in again: on PTB that was a quarter of all CPU time, spent in the kernel. Turning
mmap off for malloc and raising the trim threshold lets freed blocks be reused instead; the
cost is a much higher peak RSS (freed blocks stay in the heap and fragment it). Measured on
configs/ptb-llama.txt, 40 steps, one thread: 24 s instead of 34 s, but a peak RSS of 2.8 GB
instead of 0.8 GB (4.8 GB for the full 2-epoch run). Until that cost is bounded it is opt-in:
`tune_allocator()` runs at every entry point (main.py, model_explorer, the tests, anything that
imports the model package) and acts only when LM_MALLOC_TUNING=1.
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
    applied; False unless LM_MALLOC_TUNING=1, off Linux/glibc, or when glibc refused them."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("LM_MALLOC_TUNING", "0") != "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    _tuned = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, trim_mb << 20))
    return _tuned
