"""With LM_MALLOC_TUNING=1 every process that imports the model package tunes the allocator: a 64 MB
tensor then comes from the reusable heap instead of a fresh mmap. Off by default (peak RSS)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# glibc's mallinfo2().hblkhd: bytes currently held in mmap()ed blocks
PROBE = """
import ctypes
import model.allocator as allocator
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
big = torch.empty(16 * 1024 * 1024)  # 64 MB
print(allocator._tuned, libc.mallinfo2().hblkhd >= 64 * 1024 * 1024)
"""


def run_probe(env_value: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LM_MALLOC_TUNING"}
    if env_value:
        env["LM_MALLOC_TUNING"] = env_value
    return subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_importing_the_model_package_serves_big_tensors_from_the_heap() -> None:
    assert run_probe("1") == "True False"  # tuned: the 64 MB tensor is not an mmap()ed block
    assert run_probe("0") == "False True"  # glibc's defaults: it is
    assert run_probe("") == "False True"  # off unless asked for


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
    cost a few thousand page faults instead of ~200,000 (4 kB pages). THP_MEM_ALLOC_ENABLE=0 keeps it off."""
    def faults(**env_value) -> int:
        env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        env.update(env_value)
        return int(subprocess.run([sys.executable, "-c", THP_PROBE], cwd=REPO, env=env, capture_output=True,
                                  text=True, check=True).stdout)
    default = faults()
    assert default < 40_000, default  # 10 x 40 huge pages and the process's other faults
    if thp_mode() == "madvise":  # huge pages only where asked for (with "always" the kernel gives them anyway)
        assert faults(THP_MEM_ALLOC_ENABLE="0") > 150_000  # 10 x 20,000 pages of 4 kB
