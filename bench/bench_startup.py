"""Start-up time of the command line, next to the import time of the heavy libraries it avoids.

    .venv/bin/python bench/bench_startup.py [--repeats 3]
    .venv/bin/python bench/bench_startup.py --breakdown [--repeats 3] [-- MAIN_ARGS ...]

`--breakdown` runs `main.py MAIN_ARGS` (default: --config=test-nlp --no-wandb) through bench/startup_probe.py
and prints, per milestone (torch imported, lightning imported, our modules, runs checked, data module, model,
Trainer, first training step, final evaluation, exit), the median seconds since the process started and the
median time the stage took. Set LM_DATA_PATH first.

`main.py --help` should cost about as much as Python itself: argument and config parsing import
nothing heavy. `--dry-run` checks every run's params, and the model checks live with the model code,
so it also imports torch (not Lightning, which is imported only when training starts).
Each command runs once to warm the file cache, then `--repeats` times; the table shows the
median and the fastest wall time. About a minute on an idle 2-core machine (more when it is busy).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMANDS = [
    ("python3 -c pass", [sys.executable, "-c", "pass"]),
    ("python3 main.py --help", [sys.executable, "main.py", "--help"]),
    ("python3 main.py --config=test --dry-run", [sys.executable, "main.py", "--config=test", "--dry-run"]),
    ('python3 -c "import torch"', [sys.executable, "-c", "import torch"]),
    ('python3 -c "import lightning"', [sys.executable, "-c", "import lightning"]),
    ("python3 main.py --config=test-nlp --no-wandb --set max_steps=1",
     [sys.executable, "main.py", "--config=test-nlp", "--no-wandb", "--set", "max_steps=1"]),
]


def wall_times(command: list, repeats: int) -> list:
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)  # warm-up, not counted
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def probe_marks(main_args: list) -> list:
    """[(seconds since the process was started, milestone)] of one `startup_probe.py MAIN_ARGS` run."""
    env = dict(os.environ, BENCH_T0=repr(time.time()))
    done = subprocess.run([sys.executable, str(REPO / "bench" / "startup_probe.py"), *main_args], cwd=REPO, env=env,
                          check=True, capture_output=True, text=True)
    marks = [line.split(" ", 2)[1:] for line in done.stderr.splitlines() if line.startswith("probe ")]
    return [(float(t), what) for t, what in marks]


def breakdown(main_args: list, repeats: int) -> None:
    probe_marks(main_args)  # warm-up, not counted
    runs = [probe_marks(main_args) for _ in range(repeats)]
    names = [what for _, what in runs[0]]
    print(f"\nStart-up breakdown of main.py {' '.join(main_args)}, median of {repeats} runs ({sys.executable})\n")
    print(f"| {'milestone'.ljust(44)} | since start (s) | stage (s) |")
    print(f"|{'-' * 46}|----------------:|----------:|")
    previous = 0.0
    for i, name in enumerate(names):
        at = statistics.median(run[i][0] for run in runs if len(run) > i and run[i][1] == name)
        print(f"| {name.ljust(44)} | {at:15.2f} | {at - previous:9.2f} |")
        previous = at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per command (default: %(default)s)")
    parser.add_argument("--breakdown", action="store_true", help="time the milestones of one run's start instead")
    parser.add_argument("main_args", nargs="*", help="after --: main.py's arguments for --breakdown")
    args = parser.parse_args()
    repeats = args.repeats
    if args.breakdown:
        breakdown(args.main_args or ["--config=test-nlp", "--no-wandb"], repeats)
        return
    rows = []
    for label, command in COMMANDS:
        times = wall_times(command, repeats)
        rows.append((label, statistics.median(times), min(times)))
        print(f"  {label}: {statistics.median(times):.2f} s", file=sys.stderr, flush=True)
    width = max(len(label) for label, _, _ in rows)
    print(f"\nStart-up wall time, {repeats} runs each ({sys.executable})\n")
    print(f"| {'command'.ljust(width)} | median (s) | fastest (s) |")
    print(f"|{'-' * (width + 2)}|-----------:|------------:|")
    for label, median, fastest in rows:
        print(f"| {label.ljust(width)} | {median:10.2f} | {fastest:11.2f} |")


if __name__ == "__main__":
    main()
