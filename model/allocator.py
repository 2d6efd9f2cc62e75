"""Make the big per-step tensor buffers cheap to get from the OS again, or keep them in the process.

A training step of a word-level model allocates and frees buffers of tens of MB (logits of
batch x seq x vocab and their gradients). glibc serves allocations above its mmap threshold
(at most 32 MB) with fresh mmap()s and unmaps them on free, so each step faults the same
memory in again: on PTB that was a quarter of all CPU time, spent in the kernel.

On by default, `use_huge_pages()`: PyTorch's CPU allocator backs tensors of 2 MB and more with
transparent huge pages (its THP_MEM_ALLOC_ENABLE switch; the kernel's THP mode "madvise" or "always"),
so a fresh 80 MB buffer faults in 40 pages instead of 20,000. configs/ptb-10min.txt, 80 steps, 2 threads:
system time 17.3-18.6 s -> 7.0-7.1 s, wall 34.9-35.5 s -> 29.7-30.1 s, peak RSS 877-886 MB -> 911-922 MB,
identical losses (bench/RESULTS.md).

Opt-in, `tune_allocator()`: turning mmap off for malloc and raising the trim threshold lets freed blocks be reused instead; the
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


def use_huge_pages() -> bool:
    """Turn on PyTorch's transparent-huge-page allocation for big CPU tensors (Linux), unless the user set
    THP_MEM_ALLOC_ENABLE. PyTorch reads it at its first large allocation: call this before that (importing
    the model package does). True when it is on."""
    if not sys.platform.startswith("linux"):
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return os.environ["THP_MEM_ALLOC_ENABLE"] == "1"


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
