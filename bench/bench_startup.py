"""Start-up time of the command line, next to the import time of the heavy libraries it avoids.

    .venv/bin/python bench/bench_startup.py [--repeats 3]

`main.py --help` should cost about as much as Python itself: argument and config parsing import
nothing heavy. `--dry-run` checks every run's params, and the model checks live with the model code,
so it also imports torch (not Lightning, which is imported only when training starts).
Each command runs once to warm the file cache, then `--repeats` times; the table shows the
median and the fastest wall time. About a minute on an idle 2-core machine (more when it is busy).
"""
import argparse
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
]


def wall_times(command: list, repeats: int) -> list:
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)  # warm-up, not counted
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per command (default: %(default)s)")
    repeats = parser.parse_args().repeats
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
