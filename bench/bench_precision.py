"""Training step time by precision and attention kernel, both layer paths, in one process.

    .venv/bin/python bench/bench_precision.py [--config shakespeare-char] [--batch-size 12] [--repeats 5]

What precision="auto" chooses on a CPU with bfloat16 products (bf16-mixed, with PyTorch's math attention
kernel on the torch path; see train/precision.py and attention_kernels in model/transformer/torch_layer.py)
against float32 and the other kernel. Each variant trains its own copy of the config's model (the same
initial weights) on the same batches: forward under the variant's autocast and kernel, backward,
clipping and the fused AdamW step, as LMTrainer and Lightning run it. The variants take turns, in blocks
of `--steps` timed steps after a few untimed ones, `--repeats` times: a shared VM's speed drifts, and
turns inside one process compare like with like. Prints the median and best ms per step, and the
speed-up of each variant's median over float32's on the torch path with the flash kernel (the old default).
"""
import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from bench_train import bench_model  # noqa: E402
from model.lm import LM  # noqa: E402
from train.trainer import make_optimizer  # noqa: E402

# (layer path, bf16 autocast, attention kernel: "default" lets the layer choose, "flash"/"math" force one)
VARIANTS = [("torch-transformer", False, "default"), ("torch-transformer", False, "math"),
            ("torch-transformer", True, "flash"), ("torch-transformer", True, "default"),
            ("custom-transformer", False, "default"), ("custom-transformer", True, "default")]
KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def forced_kernel(kernel: str) -> contextlib.AbstractContextManager:
    """Force `kernel` on the torch path by making it the layer's own choice (its attention_kernels)."""
    if kernel == "default":
        return contextlib.nullcontext()
    import model.transformer.torch_layer as torch_layer
    return _patched(torch_layer, "attention_kernels", lambda x: sdpa_kernel(KERNELS[kernel]))


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="shakespeare-char")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=35, help="timed steps per block (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="blocks per variant (default: %(default)s)")
    args = parser.parse_args()
    models: Dict[str, Tuple[LM, torch.optim.Optimizer]] = {}
    for architecture in sorted({v[0] for v in VARIANTS}):
        lm, dm, tp = bench_model(args.config, architecture, [f"batch_size={args.batch_size}"])
        models[architecture] = lm.train(), make_optimizer(lm, dataclasses.replace(tp, precision="32"))  # fused AdamW
    batches = [b for _, b in zip(range(args.steps + 5), dm.train_dataloader())]

    def step(variant: Tuple[str, bool, str], batch: Dict[str, torch.Tensor]) -> None:
        lm, optimizer = models[variant[0]]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant[1], cache_enabled=False), \
                forced_kernel(variant[2]):
            loss, _ = lm.get_losses(batch, tp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times: Dict[Tuple[str, bool, str], List[float]] = {v: [] for v in VARIANTS}
    print(f"{args.config}, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.repeats} blocks of {args.steps} steps per variant")
    for _ in range(args.repeats):
        for variant in VARIANTS:
            for batch in batches[:5]:
                step(variant, batch)
            start = time.perf_counter()
            for batch in batches[5:]:
                step(variant, batch)
            times[variant].append((time.perf_counter() - start) / args.steps * 1e3)
    base = statistics.median(times[VARIANTS[0]])
    print("\n| layer path | precision | attention kernel | ms per step, median (best) | speed-up |")
    print("|---|---|---|---:|---:|")
    for variant, ms in times.items():
        kernel = variant[2] if variant[2] != "default" else (
            "written out" if variant[0] == "custom-transformer" else "the layer's choice")
        print(f"| {variant[0]} | {'bf16 autocast' if variant[1] else 'float32'} | {kernel} | "
              f"{statistics.median(ms):.2f} ({min(ms):.2f}) | {base / statistics.median(ms):.2f}x |")


if __name__ == "__main__":
    main()
