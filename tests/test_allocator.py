"""Every process that imports the model package tunes glibc's allocator (model/allocator.py): by default
(or LM_MALLOC_TUNING=1) every block comes from the heap and freed ones stay there for reuse (no page faults
per step); LM_MALLOC_TUNING=0 keeps glibc's own settings."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# glibc's mallinfo2(): hblkhd = bytes held in mmap()ed blocks, fordblks = free bytes kept in the heap
PROBE = """
import ctypes
import model.allocator as allocator
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
MB = 1024 * 1024
before = libc.mallinfo2().hblkhd
small = [torch.ones(MB // 4) for _ in range(32)]  # 32 buffers of 1 MB, as a step's activations
small_mapped = libc.mallinfo2().hblkhd - before >= 32 * MB
del small
kept = libc.mallinfo2().fordblks >= 30 * MB  # freed, but still in the process for the next step
big = torch.empty(16 * MB)  # 64 MB
big_mapped = libc.mallinfo2().hblkhd - before >= 64 * MB
print(allocator._tuned or "-", small_mapped, kept, big_mapped)
"""


def run_probe(env_value: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LM_MALLOC_TUNING"}
    if env_value:
        env["LM_MALLOC_TUNING"] = env_value
    return subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_importing_the_model_package_keeps_freed_buffers_for_reuse() -> None:
    assert run_probe("") == "default False True False"  # every buffer from the heap, freed ones kept
    assert run_probe("1") == "1 False True False"  # the same, asked for
    assert run_probe("0") == "- True False True"  # glibc's defaults: mapped, and unmapped when freed


def test_an_unknown_tuning_mode_is_a_clear_error() -> None:
    env = dict(os.environ, LM_MALLOC_TUNING="yes")
    out = subprocess.run([sys.executable, "-c", "import model"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "LM_MALLOC_TUNING='yes': set 0" in out.stderr


THP_PROBE = """
import resource, sys
import model  # the entry point's import: before any large tensor
import torch
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    buffer = torch.ones(20_000_000)  # 80 MB, allocated and freed as a training step's logits are
    del buffer
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "never"
    return text[text.index("[") + 1:text.index("]")]


@pytest.mark.skipif(thp_mode() == "never", reason="the kernel has transparent huge pages off")
def test_big_tensors_get_huge_pages_unless_the_user_says_otherwise() -> None:
    """Importing the model package turns on PyTorch's huge-page allocation: ten fresh 80 MB buffers then
    cost a few thousand page faults instead of ~200,000 (4 kB pages). THP_MEM_ALLOC_ENABLE=0 keeps it off.
    (With glibc's own settings, LM_MALLOC_TUNING=0, so that each buffer is mapped afresh rather than reused.)"""
    def faults(**env_value) -> int:
        env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        env.update(env_value, LM_MALLOC_TUNING="0")
        return int(subprocess.run([sys.executable, "-c", THP_PROBE], cwd=REPO, env=env, capture_output=True,
                                  text=True, check=True).stdout)
    default = faults()
    assert default < 40_000, default  # 10 x 40 huge pages and the process's other faults
    if thp_mode() == "madvise":  # huge pages only where asked for (with "always" the kernel gives them anyway)
        assert faults(THP_MEM_ALLOC_ENABLE="0") > 150_000  # 10 x 20,000 pages of 4 kB
