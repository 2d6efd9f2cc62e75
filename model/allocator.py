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

Also on by default, `tune_allocator()`: glibc keeps freed heap memory for reuse instead of handing it
back after every step. glibc returns the free top of its heap to the OS once it exceeds a trim threshold
(a few MB by default), and a step frees many small buffers (a small model's activations: 1.5 MB each),
so each step faulted about 1,000 pages back in (shakespeare-char model, batch 12: 1.5-3.5 ms of system
time per 32 ms step). Now buffers under 32 MB come from the heap from the start (glibc's adaptive mmap
threshold climbs to this limit anyway once such buffers are freed; larger ones are still mapped fresh,
with huge pages), and up to 64 MB of freed heap stays in the process (the trim threshold glibc itself
pairs with it): no page faults per step and about 4% faster steps there, 8% on configs/ptb-llama.txt,
1-2% more peak memory (bench/RESULTS.md). (A 2 MB threshold, tried first, made batched GPT-2 decoding
slower: its 3 MB logits were then mapped afresh at every step.)

LM_MALLOC_TUNING chooses: unset (the above), "0" (glibc's own defaults) or "1" (no mmap for malloc
at all and a 256 MB trim threshold: every freed block is reused; configs/ptb-llama.txt, 40 steps, one
thread: 23.0 s instead of 24.2 s, but a peak RSS of 1.07 GB instead of 0.82 GB, unbounded in general:
large blocks fragment the heap). `tune_allocator()` runs at every entry point (main.py, model_explorer,
the tests, anything that imports the model package).
"""
import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
HEAP_BELOW_MB = 32  # default tuning: buffers under this size come from the heap (glibc's largest mmap threshold)
KEEP_FREED_MB = 64  # default tuning: freed heap memory kept in the process, at most
_tuned = ""  # the LM_MALLOC_TUNING mode applied ("default" or "1"), "" before / when nothing was applied


def use_huge_pages() -> bool:
    """Turn on PyTorch's transparent-huge-page allocation for big CPU tensors (Linux), unless the user set
    THP_MEM_ALLOC_ENABLE. PyTorch reads it at its first large allocation: call this before that (importing
    the model package does). True when it is on."""
    if not sys.platform.startswith("linux"):
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return os.environ["THP_MEM_ALLOC_ENABLE"] == "1"


def tune_allocator() -> str:
    """Apply the LM_MALLOC_TUNING mode once per process (see the module docstring). Returns the mode
    applied: "default", "1", or "" for glibc's own settings (LM_MALLOC_TUNING=0, not Linux/glibc, refused)."""
    global _tuned
    mode = os.environ.get("LM_MALLOC_TUNING", "default")
    if mode not in ("default", "0", "1"):
        raise ValueError(f"LM_MALLOC_TUNING={mode!r}: set 0 (glibc's own settings) or 1 (reuse every freed "
                         "block, more memory), or leave it unset (reuse freed small buffers; see model/allocator.py)")
    if _tuned or mode == "0" or not sys.platform.startswith("linux"):
        return _tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return ""
    if mode == "1":
        applied = mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 256 << 20)
    else:
        applied = mallopt(M_MMAP_THRESHOLD, HEAP_BELOW_MB << 20) and mallopt(M_TRIM_THRESHOLD, KEEP_FREED_MB << 20)
    _tuned = mode if applied else ""
    return _tuned
