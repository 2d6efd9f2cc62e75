"""The cost of hook points when no hook is attached: training and perplexity tokens/s with and without them.

    .venv/bin/python bench/bench_hooks.py [--steps 24] [--warmup 4] [--repeats 4] [--configs test-nlp ptb-small]

For each config and layer path, two copies of the same freshly initialised model run back to back in
this process: the model as built (its HookPoint modules in place, nothing attached) and a copy whose
HookPoints are replaced by a plain Python identity function (what the code costs without hook
modules: one function call each, ~0.1 us, against ~2 us for a module call). Training is
bench_train.py's plain loop (get_losses, backward, clipping, fused AdamW, schedule) on the run's
batches; perplexity is lm.perplexities on the first validation batches. Both use this process's CPU
time with torch on one thread (robust to a shared machine; see bench_train.py) or wall time on a GPU.
The two copies take turns to go first; the best of `--repeats` runs of each is compared.
"""
import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench_train import bench_model, plain_loop  # noqa: E402
from model.hook_point import HookPoint  # noqa: E402
from model.lm import LM  # noqa: E402

CONFIGS = ("test-nlp", "ptb-small")
ARCHITECTURES = ("torch-transformer", "custom-transformer")


def without_hook_points(lm: LM) -> LM:
    """A copy of lm whose HookPoint modules are plain identity functions (no module call)."""
    lm = copy.deepcopy(lm)
    for module in list(lm.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, HookPoint):
                del module._modules[name]
                object.__setattr__(module, name, lambda x: x)
    assert not any(isinstance(m, HookPoint) for m in lm.modules())
    return lm


def perplexity_rate(lm: LM, batches: List[Dict[str, torch.Tensor]], clock: Callable[[], float],
                    sync: Callable[[], None]) -> float:
    """Tokens per second of lm.perplexities over `batches` (the whole call, once warmed up)."""
    lm.perplexities(batches[:1])
    sync()
    start = clock()
    _, _, _, n_tokens, _ = lm.perplexities(batches)
    sync()
    return n_tokens / (clock() - start)


def bench_config(config: str, architecture: str, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    initial, dm, tp = bench_model(config, architecture)
    models = {"with hook points": initial, "without": without_hook_points(initial)}
    val_batches = [b for _, b in zip(range(args.eval_batches), dm.val_dataloader()[0])]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    torch.use_deterministic_algorithms(device.type == "cpu")
    train: Dict[str, List[float]] = {k: [] for k in models}
    ppl: Dict[str, List[float]] = {k: [] for k in models}
    weights = {}
    order = list(models)
    for repeat in range(args.repeats):
        for name in (order if repeat % 2 == 0 else order[::-1]):  # take turns to go first
            L.seed_everything(tp.seed, verbose=False)
            rate, weights[name] = plain_loop(copy.deepcopy(models[name]), dm, tp, device, args.steps, args.warmup, sync)
            train[name].append(rate)
            ppl[name].append(perplexity_rate(models[name].to(device), val_batches, clock, sync))
    same = all(torch.equal(weights["with hook points"][k], weights["without"][k]) for k in weights["without"])
    for label, rates in (("train", train), ("perplexity", ppl)):
        print(f"  {config} {architecture} {label} tokens/s per run: "
              + "; ".join(f"{k} {[round(r) for r in v]}" for k, v in rates.items()))
    return {"config": config, "architecture": architecture, "params": initial.n_parameters(), "same_weights": same,
            "train": {k: max(v) for k, v in train.items()}, "ppl": {k: max(v) for k, v in ppl.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per training run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=4, help="first steps not timed (default: %(default)s)")
    parser.add_argument("--eval-batches", type=int, default=8, help="validation batches per perplexity run")
    parser.add_argument("--repeats", type=int, default=4, help="runs of each model, alternating (default: %(default)s)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="configs to time (default: %(default)s)")
    args = parser.parse_args()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.steps} steps "
          f"({args.warmup} untimed), {args.eval_batches} eval batches, {args.repeats} repeats")
    rows = [bench_config(config, arch, args, device) for config in args.configs for arch in ARCHITECTURES]
    print("\n| config | layers | training tokens/s with / without hook points | ratio "
          "| perplexity tokens/s with / without | ratio | same trained weights |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        t, p = r["train"], r["ppl"]
        print(f"| {r['config']} | {r['architecture']} | {t['with hook points']:,.0f} / {t['without']:,.0f} "
              f"| {t['with hook points'] / t['without']:.3f} | {p['with hook points']:,.0f} / {p['without']:,.0f} "
              f"| {p['with hook points'] / p['without']:.3f} | {r['same_weights']} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
