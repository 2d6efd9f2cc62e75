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
