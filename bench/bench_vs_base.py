"""This checkout against an older commit (issue 15's baseline is 2db900c), back to back in one invocation.

    git worktree add /tmp/base 2db900c
    .venv/bin/python bench/bench_vs_base.py --base /tmp/base [--repeats 2] [--steps 600]
        [--config shakespeare-char] [--set batch_size=12 --set 'precision="32"']   (--steps 0: steady state only)

Two measurements of the shakespeare-char model (4 layers, 4 heads, dim 128, context 64) at batch 12,
each run once per tree per repeat, taking turns to go first:
- whole process: the wall time of `python3 main.py --config=shakespeare-char --no-wandb
  --set max_steps=600 --set batch_size=12` run in each tree (start-up, training, per-epoch samples and
  the final evaluation included), with its peak RSS, user and system CPU time (os.wait4);
- steady state: a fresh process per tree imports that tree's code, trains the same model with
  `LMTrainer` + `lightning.Trainer` (as `run_training` builds it, without validation) and reports
  training tokens/s from the median wall time of a step after the first 10.
The best run of each tree is compared, and for the steady state also the median (on a shared VM one
process can run 10-20% slower than the next for no reason of its own: use --repeats 5 or more there);
the table prints both trees and the ratio. Both trees train
the same model from the same seed, so their final losses must match: the script prints them.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]


def main_args(config: str, sets: List[str]) -> List[str]:
    return ["main.py", f"--config={config}", "--no-wandb", *[a for s in sets for a in ("--set", s)]]


def whole_process(tree: Path, steps: int, config: str = "shakespeare-char", sets: List[str] = ()) -> Dict[str, Any]:
    """Run main.py in `tree`; wall time, peak RSS (MB), user and system CPU time, the final line."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *main_args(config, list(sets)), "--set", f"max_steps={steps}"], cwd=tree,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"main.py failed in {tree}:\n{out[-3000:]}")
    final = [line for line in out.splitlines() if line.startswith("final")]
    return {"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "final": final[-1] if final else "?"}


def steady_state(tree: Path, steps: int, config: str = "shakespeare-char", sets: List[str] = ()) -> Dict[str, Any]:
    """Training tokens/s of `tree`'s code, measured in a fresh process (see `_steady_worker`)."""
    out = subprocess.run([sys.executable, __file__, "--worker", str(tree), "--steps", str(steps), "--config", config,
                          *[a for s in sets for a in ("--set", s)]], cwd=tree,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"steady-state worker failed in {tree}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _steady_worker(tree: Path, steps: int, config: str, sets: List[str]) -> None:
    sys.path.insert(0, str(tree))
    import warnings
    import resource

    import lightning as L
    from lightning.pytorch.callbacks import Callback
    import torch

    from config_parser import load_runs
    from data.dataloader import LMDataModule
    from model.lm import LM
    from train.resumable_loader import ResumableTrainLoader
    from train.run import IGNORED_WARNINGS, make_trainer
    from train.trainer import LMTrainer

    class Timer(Callback):
        def __init__(self) -> None:
            self.times: List[float] = []
            self.tokens: List[int] = []

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.times.append(time.perf_counter())
            self.tokens.append(int(batch["mask"][:, :-1].sum()))

    run = load_runs(config, [*sets, f"max_steps={steps}"])[0]
    dp, mp, tp = run.params["DataParams"], run.params["ModelParams"], run.params["TrainParams"]
    import dataclasses
    dm = LMDataModule(dp, batch_size=tp.batch_size, seed=tp.seed)
    mp = dataclasses.replace(mp, max_seq_len=mp.max_seq_len or dp.max_seq_len)
    L.seed_everything(tp.seed, verbose=False)
    lm = LM(mp, dm.tokenizer)
    loader = ResumableTrainLoader(dm.train_dataloader(), seed=tp.seed)
    timer = Timer()
    trainer = make_trainer(tp, torch.device("cpu"), n_train_batches=len(loader), callbacks=[loader, timer],
                           enable_progress_bar=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*validation_step` but have no `val_dataloader.*")
        for message in IGNORED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        trainer.fit(LMTrainer(lm, tp, val_names=dm.val_names), train_dataloaders=loader)
    step_times = [b - a for a, b in zip(timer.times[10:], timer.times[11:])]
    tokens = statistics.mean(timer.tokens)
    print(json.dumps({"tokens_per_s": tokens / statistics.median(step_times), "threads": torch.get_num_threads(),
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=False, help="the baseline checkout (a git worktree)")
    parser.add_argument("--steps", type=int, default=600, help="steps of the whole-process run (default: %(default)s)")
    parser.add_argument("--steady-steps", type=int, default=60, help="steps of the steady-state run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each tree, alternating (default: %(default)s)")
    parser.add_argument("--config", default="shakespeare-char", help="the config both trees train (default: %(default)s)")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="overrides for both trees, e.g. --set 'precision=\"32\"' (default: batch_size=12)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sets = args.set if args.set is not None else ["batch_size=12"]
    if args.worker:
        _steady_worker(args.worker, args.steps, args.config, sets)
        return
    if args.base is None:
        parser.error("--base PATH is required (e.g. git worktree add /tmp/base 2db900c)")
    trees = {"base": args.base.resolve(), "this": REPO}
    results: Dict[str, Dict[str, List[Dict[str, Any]]]] = {name: {"whole": [], "steady": []} for name in trees}
    for repeat in range(args.repeats):
        order = list(trees) if repeat % 2 == 0 else list(trees)[::-1]
        for name in order:
            steady = steady_state(trees[name], args.steady_steps, args.config, sets)
            results[name]["steady"].append(steady)
            print(f"  {name} steady: {steady['tokens_per_s']:,.0f} tokens/s ({steady['threads']} threads)", flush=True)
        for name in order if args.steps else []:
            whole = whole_process(trees[name], args.steps, args.config, sets)
            results[name]["whole"].append(whole)
            print(f"  {name} whole: {whole['wall_s']:.1f} s wall, user {whole['user_s']:.1f} s, sys {whole['sys_s']:.1f} s, "
                  f"peak {whole['peak_mb']:.0f} MB | {whole['final']}", flush=True)
    best = {name: {"steady": max(r["steady"], key=lambda r: r["tokens_per_s"]),
                   "whole": min(r["whole"], key=lambda r: r["wall_s"]) if r["whole"] else None}
            for name, r in results.items()}
    b, t = best["base"], best["this"]
    print(f"\nbase: {trees['base']}; {args.repeats} repeats, best of each; load average before: {os.getloadavg()[0]:.1f}\n")
    print("| measurement | base | this checkout | this / base |")
    print("|---|---:|---:|---:|")
    print(f"| steady-state training tokens/s, best | {b['steady']['tokens_per_s']:,.0f} | {t['steady']['tokens_per_s']:,.0f} "
          f"| {t['steady']['tokens_per_s'] / b['steady']['tokens_per_s']:.2f}x |")
    medians = {name: statistics.median(r["tokens_per_s"] for r in results[name]["steady"]) for name in trees}
    print(f"| steady-state training tokens/s, median | {medians['base']:,.0f} | {medians['this']:,.0f} "
          f"| {medians['this'] / medians['base']:.2f}x |")
    if not args.steps:
        return
    print(f"| {args.steps}-step run, wall s (speed-up = base / this) | {b['whole']['wall_s']:.1f} | {t['whole']['wall_s']:.1f} "
          f"| {b['whole']['wall_s'] / t['whole']['wall_s']:.2f}x faster |")
    for key, label in (("user_s", "user CPU s"), ("sys_s", "system CPU s"), ("peak_mb", "peak RSS MB")):
        print(f"| {args.steps}-step run, {label} | {b['whole'][key]:.1f} | {t['whole'][key]:.1f} | "
              f"{t['whole'][key] / max(b['whole'][key], 1e-9):.2f} |")
    print(f"| steady-state process, peak RSS MB | {b['steady']['peak_mb']:.0f} | {t['steady']['peak_mb']:.0f} | "
          f"{t['steady']['peak_mb'] / b['steady']['peak_mb']:.2f} |")
    print(f"\nfinal losses: base {b['whole']['final']}\n              this {t['whole']['final']}")


if __name__ == "__main__":
    main()
