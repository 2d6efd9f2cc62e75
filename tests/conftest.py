"""Test environment: never touch the network, find the shared corpora, keep caches out of the repo."""
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["MPLBACKEND"] = "Agg"
os.environ.setdefault("LM_DATA_PATH", str(REPO.parent / "shared" / "data"))
# one token cache per test session, shared by all tests in it
os.environ.setdefault("LM_CACHE_DIR", tempfile.mkdtemp(prefix="lm-test-cache-"))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models step faster on one thread (and much faster on a machine shared with other jobs)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
