"""Training throughput: LMTrainer + lightning.Trainer against a plain PyTorch loop, and the first run's wall time.

    .venv/bin/python bench/bench_train.py [--steps 24] [--warmup 4] [--repeats 3] [--skip-first-run]

For each config (configs/test-nlp.txt and the larger configs/ptb-small.txt) and each layer path
(torch-transformer, custom-transformer), both loops train the same freshly initialised model on
the same batches (the run's seeded batch order) with the same optimizer, schedule and clipping,
for `--steps` optimizer steps. Lightning runs exactly as `run_training` sets it up (progress bar,
train_stats, no validation, no logger, no checkpoint). A step's time runs from one batch's start to
the next one's, so everything either loop does between batches counts. Throughput (real tokens read
per second) uses the median step after `--warmup` on a CPU (robust to other processes on a shared
machine), the mean over those steps on a GPU; each loop runs `--repeats` times, taking turns to go
first, and the best run of each is compared. The final weights of the two loops are compared too: they match, which shows
that both did the same work. Lightning's overhead must stay under 10%.

Last, the wall time of `python3 main.py --config=test-nlp --task=ptb --no-wandb` (start-up included).
"""
import argparse
import copy
import dataclasses
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from config_parser import load_runs  # noqa: E402
from data.dataloader import LMDataModule  # noqa: E402
from model.lm import LM  # noqa: E402
from train.precision import resolve_precision  # noqa: E402
from train.resumable_loader import ResumableTrainLoader  # noqa: E402
from train.run import IGNORED_WARNINGS, make_trainer  # noqa: E402
from train.trainer import LMTrainer, lr_schedule, make_optimizer  # noqa: E402

CONFIGS = ("test-nlp", "ptb-small")
ARCHITECTURES = ("torch-transformer", "custom-transformer")


class StepTimer(Callback):
    """Per-step wall times: from one training batch's start to the next one's (all of Lightning's work
    in between included), for the batches after `warmup`."""

    def __init__(self, warmup: int, sync: Any):
        self.warmup, self.sync = warmup, sync
        self.clock = StepClock(sync)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx >= self.warmup:
            self.clock.tick(batch)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.clock.tick(None)


class StepClock:
    """Times between ticks, and the tokens of each timed batch.

    On a CPU the clock is this process's CPU time (all its threads: Lightning's progress bar thread
    counts) with torch on one thread: that measures the work each loop does even when other processes
    share the cores, where wall time swings by several times from one run to the next. On a GPU it is
    wall time, synchronised only at the first and last tick (per-step syncs would change what is measured).
    """

    def __init__(self, sync: Any):
        self.sync, self.times, self.tokens = sync, [], []
        self.clock = time.perf_counter if torch.cuda.is_available() else time.process_time

    def tick(self, batch: Any) -> None:
        if not self.times or batch is None:
            self.sync()
        self.times.append(self.clock())
        if batch is not None:
            self.tokens.append(int(batch["mask"][:, :-1].sum()))

    def tokens_per_s(self, on_gpu: bool) -> float:
        steps = [b - a for a, b in zip(self.times, self.times[1:])]
        step = statistics.mean(steps) if on_gpu else statistics.median(steps)  # median: robust to a busy CPU
        return statistics.mean(self.tokens) / step


def lightning_loop(lm: LM, dm: LMDataModule, tp: Any, device: torch.device, steps: int,
                   warmup: int, sync: Any) -> Tuple[float, Dict[str, torch.Tensor]]:
    tp = dataclasses.replace(tp, max_steps=steps)  # no val_dataloaders are given: no validation runs
    loader = ResumableTrainLoader(dm.train_dataloader(), seed=tp.seed)
    timer = StepTimer(warmup, sync)
    trainer = make_trainer(tp, device, n_train_batches=len(loader), callbacks=[loader, timer])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*validation_step` but have no `val_dataloader.*")
        for message in IGNORED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        trainer.fit(LMTrainer(lm, tp, val_names=dm.val_names), train_dataloaders=loader)
    return timer.clock.tokens_per_s(device.type == "cuda"), {k: v.detach().cpu() for k, v in lm.state_dict().items()}


def plain_loop(lm: LM, dm: LMDataModule, tp: Any, device: torch.device, steps: int,
               warmup: int, sync: Any) -> Tuple[float, Dict[str, torch.Tensor]]:
    """What Lightning does for us, written out: the same batches, optimizer, schedule, clipping and precision
    (bf16-mixed: the forward under bfloat16 autocast, as Lightning's precision plugin runs it)."""
    lm.to(device).train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False,
                              enabled=resolve_precision(tp.precision, device) == "bf16-mixed")
    optimizer = make_optimizer(lm, tp)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # clipped in Lightning's order
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(tp, total_steps=steps))
    loader = ResumableTrainLoader(dm.train_dataloader(), seed=tp.seed)
    clock = StepClock(sync)
    for i, batch in enumerate(loader):
        if i == steps:
            break
        if i >= warmup:
            clock.tick(batch)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            loss, _ = lm.get_losses(batch, tp)
        loss.backward()
        if tp.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, tp.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    clock.tick(None)
    return clock.tokens_per_s(device.type == "cuda"), {k: v.detach().cpu() for k, v in lm.state_dict().items()}


def bench_model(config: str, architecture: str, overrides: Sequence[str] = ()) -> Tuple[LM, LMDataModule, Any]:
    """(a freshly initialised LM, its data module, its TrainParams) for a config's first run on one layer path,
    with `overrides` ("key=value", as --set), seeded as run_training seeds it."""
    run = load_runs(config, [f"layer_architecture={architecture!r}", *overrides])[0]
    dp, mp, tp = run.params["DataParams"], run.params["ModelParams"], run.params["TrainParams"]
    dm = LMDataModule(dp, batch_size=tp.batch_size, seed=tp.seed)
    mp = dataclasses.replace(mp, max_seq_len=mp.max_seq_len or dp.max_seq_len)
    L.seed_everything(tp.seed, verbose=False)
    return LM(mp, dm.tokenizer), dm, tp


def bench_config(config: str, architecture: str, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    initial, dm, tp = bench_model(config, architecture)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.use_deterministic_algorithms(device.type == "cpu")  # as make_trainer's Trainer sets it
    rates: Dict[str, List[float]] = {"lightning": [], "plain": []}  # the best run of each counts
    weights = {}
    loops = [("lightning", lightning_loop), ("plain", plain_loop)]
    for repeat in range(args.repeats):
        for name, loop in (loops if repeat % 2 == 0 else loops[::-1]):  # alternate which goes first
            L.seed_everything(tp.seed, verbose=False)
            rate, weights[name] = loop(copy.deepcopy(initial), dm, tp, device, args.steps, args.warmup, sync)
            rates[name].append(rate)
    max_diff = max((weights["lightning"][k] - weights["plain"][k]).abs().max().item() for k in weights["plain"])
    lightning, plain = max(rates["lightning"]), max(rates["plain"])
    print(f"  {config} {architecture}: tokens/s per run " + ", ".join(f"{k} {[round(r) for r in v]}" for k, v in rates.items()))
    return {"config": config, "architecture": architecture, "params": initial.n_parameters(),
            "lightning": lightning, "plain": plain, "ratio": lightning / plain, "max_weight_diff": max_diff}


def first_run_wall_time() -> Tuple[float, List[str]]:
    command = [sys.executable, "main.py", "--config=test-nlp", "--task=ptb", "--no-wandb"]
    start = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith(("epoch", "final", "  greedy"))]
    return seconds, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per loop (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=4, help="first steps not timed (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop, alternating (default: %(default)s)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="configs to time (default: %(default)s)")
    parser.add_argument("--skip-first-run", action="store_true", help="do not time the first-run command")
    args = parser.parse_args()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # see StepClock
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"lightning {L.__version__}, precision {resolve_precision('auto', device)} (auto); {args.steps} steps ({args.warmup} untimed), {args.repeats} repeats")

    rows = [bench_config(config, arch, args, device) for config in args.configs for arch in ARCHITECTURES]
    print("\n| config | layers | parameters | Lightning tokens/s | plain loop tokens/s | Lightning / plain "
          "| max weight difference |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['architecture']} | {r['params']:,} | {r['lightning']:,.0f} | {r['plain']:,.0f} "
              f"| {r['ratio']:.3f} | {r['max_weight_diff']:.1e} |")
    worst = min(r["ratio"] for r in rows)
    print(f"\nLightning overhead: worst case {100 * (1 - worst):.1f}% (target < 10%)")

    if not args.skip_first_run:
        seconds, lines = first_run_wall_time()
        print(f"\npython3 main.py --config=test-nlp --task=ptb --no-wandb: {seconds:.1f} s wall time")
        for line in lines[-4:]:
            print("   " + line)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
