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

Also on by default, `tune_allocator()`: glibc serves every block from its heap (no mmap for malloc) and keeps
up to 256 MB of freed heap in the process, so a step's buffers are reused by the next step instead of being
handed back to the OS and faulted in again. glibc's own settings return the free top of the heap once it
exceeds a few MB and map every buffer over its mmap threshold (at most 32 MB) afresh: a small model's
activations (1.5 MB each) faulted about 1,000 pages back in per step, and a word-level model's logits and
their gradients (82 MB each at batch 32 x 64 x 10,000) were mapped and zeroed at every step, which cost
configs/ptb-10min.txt a third of its CPU time in the kernel. Measured against the earlier default (buffers
under 32 MB from the heap, 64 MB kept; bench/RESULTS.md): ptb-10min 300 -> 201 s for the whole run (peak RSS
1.03 -> 1.00 GB), ptb-small 150 steps 1.19x faster (peak +16%), ptb-llama 60 steps 1.14x (+4%), batched
GPT-2 decoding 1.06x (+2-3%). The heap's layout settles after a few steps (the same buffers every step), so the
peak does not creep up over a long run. A 2 MB mmap threshold, tried first, made batched GPT-2 decoding slower:
its 3 MB logits were then mapped afresh at every step.

LM_MALLOC_TUNING chooses: unset or "1" (the above) or "0" (glibc's own settings: less memory held, slower
word-level steps). `tune_allocator()` runs at every entry point (main.py, model_explorer, the tests, anything
that imports the model package).
"""
import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4
KEEP_FREED_MB = 256  # freed memory at the top of the heap kept in the process, at most
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
        raise ValueError(f"LM_MALLOC_TUNING={mode!r}: set 0 (glibc's own settings, less memory held) or 1 "
                         "(reuse every freed block, the default when unset; see model/allocator.py)")
    if _tuned or mode == "0" or not sys.platform.startswith("linux"):
        return _tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return ""
    applied = mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, KEEP_FREED_MB << 20)
    _tuned = mode if applied else ""
    return _tuned
