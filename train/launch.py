"""Run the runs of a sweep several at a time: `--parallel N` (processes on this machine) or `--slurm` (jobs).

--parallel N: each run is its own process (`python -m train.launch SPEC`), at most N at once. On CUDA
each process gets its own GPU, round robin over `--gpu-id` (or every visible GPU); on the CPU each gets
an equal share of the cores (its torch threads). A run's output goes to `{save folder}.log` (next to
where the run is saved, under the save dir); the terminal shows one line per run as it starts and
ends, then a summary of every run with its final losses and save folder. A failing run does not stop
the others; `main.py` exits with the number of runs that failed, diverged or could not
save where asked (the serial path exits 1 for any of them).

--slurm: each run is a job submitted through `submitit` (partition, time limit, GPUs per run from the
flags); without SLURM on the machine, submitit's local executor runs the jobs here.

Same seeds give the same results as running the runs one after another: every run builds its data,
model and random state from its own params only.
"""
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from train.runs import Namer

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.2  # how often the launcher looks at its running processes


def launched_rank() -> int:
    """The global rank a launcher gave this process (Lightning's DDP children, torchrun, srun), read
    from the environment the way Lightning reads it; 0 when not launched as part of a group."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def fixed_namer(namer: Namer) -> Namer:
    """namer with its timestamp and save folder decided here, in the launcher (the worker saves exactly
    there, and its log file sits beside it); a Namer pickles as it is."""
    namer.save_folder_name()
    return namer


def run_one(namer: Namer, threads: Optional[int] = None, gpu: Optional[int] = None) -> Dict[str, Any]:
    """Train one run (its `fixed_namer`) in this process: the body of a parallel worker and of a
    SLURM job. Returns the losses and where it was saved, as plain numbers and strings."""
    import torch

    from train.run import run_training
    if threads:
        torch.set_num_threads(threads)
    if gpu is not None:
        namer.args.gpu_id = [gpu]
    result = run_training(namer)
    return {key: result.get(key) for key in ("val_loss", "val_losses", "test_loss", "interrupted", "signal",
                                             "diverged", "save_error", "save_folder")}


BAD_STATUSES = ("failed", "diverged", "save failed")  # counted in main.py's exit status, as the serial path does


def finished_status(result: Dict[str, Any]) -> str:
    """The status of a run that returned (run_one's result): "diverged" (loss not finite), "save failed"
    (saved elsewhere: its save_error says where), "interrupted" or "done"."""
    if result.get("diverged"):
        return "diverged"
    if result.get("save_error"):
        return "save failed"
    return "interrupted" if result.get("interrupted") else "done"


def count_bad(results: Sequence[Any]) -> int:
    """How many runs of a --parallel / --slurm sweep failed, diverged or could not save where asked."""
    return sum(isinstance(r, dict) and r.get("status") in BAD_STATUSES for r in results)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus(gpu_ids: Optional[Sequence[int]]) -> List[int]:
    """The GPUs to spread runs over: --gpu-id's, else every visible one; [] without CUDA."""
    import torch
    if not torch.cuda.is_available():
        return []
    return list(gpu_ids) if gpu_ids else list(range(torch.cuda.device_count()))


def log_path(namer: Any) -> Path:
    """`{save folder}.log`: the save folder's name is decided here, so the run saves exactly there."""
    return Path(namer.save_folder_name() + ".log")


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:200] if lines else ""


def run_in_processes(namers: Sequence[Any], labels: Sequence[str], n_parallel: int,
                     gpu_ids: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """Train `namers` N at a time, each in its own process; one status line per run; results in order."""
    gpus = visible_gpus(gpu_ids)
    threads = None if gpus else max(1, cpu_count() // n_parallel)
    where = (f"GPUs {', '.join(map(str, gpus))} round robin" if gpus
             else f"{threads} CPU thread(s) each")
    print(f"=== {len(namers)} runs, {n_parallel} at a time, {where}; each run's output goes to its log file",
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="lm-parallel-"))
    results: List[Optional[Dict[str, Any]]] = [None] * len(namers)
    running: Dict[int, Any] = {}  # run index -> (process, slot, start time, log file)
    pending = list(range(len(namers)))
    free_slots = list(range(n_parallel))
    try:
        while pending or running:
            while pending and free_slots:
                i, slot = pending.pop(0), free_slots.pop(0)
                gpu = gpus[slot % len(gpus)] if gpus else None
                running[i] = (*start_worker(namers[i], tmp / f"run{i}", threads, gpu), slot, time.perf_counter())
                on = f" on GPU {gpu}" if gpu is not None else ""
                print(f"[{i + 1}/{len(namers)}] started{on}: {labels[i]} (log: {log_path(namers[i])})", flush=True)
            time.sleep(POLL_S)
            for i in [i for i, (process, *_rest) in running.items() if process.poll() is not None]:
                process, log, slot, start = running.pop(i)
                log.close()
                free_slots.append(slot)
                results[i] = worker_result(process.returncode, tmp / f"run{i}", log_path(namers[i]),
                                           time.perf_counter() - start)
                print(f"[{i + 1}/{len(namers)}] {status_line(results[i])}: {labels[i]}", flush=True)
    except KeyboardInterrupt:  # the runs got the Ctrl-C too: they stop after their batch and save
        print(f"Ctrl-C: waiting for the {len(running)} running run(s) to save; "
              f"{len(pending)} run(s) not started", flush=True)
        for i, (process, log, slot, start) in running.items():
            process.wait()
            log.close()
            results[i] = worker_result(process.returncode, tmp / f"run{i}", log_path(namers[i]),
                                       time.perf_counter() - start)
        for i in pending:
            results[i] = {"status": "not started", "log": None}
    return [r for r in results]


def start_worker(namer: Any, stem: Path, threads: Optional[int], gpu: Optional[int]) -> tuple:
    """A `python -m train.launch SPEC` process for one run, its output going to the run's log file."""
    spec = stem.with_suffix(".pkl")
    with open(spec, "wb") as f:
        pickle.dump({"namer": fixed_namer(namer), "threads": threads, "gpu": gpu, "result": str(stem.with_suffix(".json"))}, f)
    log = log_path(namer)
    log.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log, "w")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    process = subprocess.Popen([sys.executable, "-m", "train.launch", str(spec)], cwd=REPO, env=env,
                               stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, log_file


def worker_result(returncode: int, stem: Path, log: Path, elapsed_s: float) -> Dict[str, Any]:
    result_file = stem.with_suffix(".json")
    if returncode == 0 and result_file.is_file():
        result = json.loads(result_file.read_text())
        return {**result, "status": finished_status(result), "log": str(log), "elapsed_s": elapsed_s}
    return {"status": "failed", "error": f"exit code {returncode}: {last_line(log)}", "log": str(log),
            "elapsed_s": elapsed_s}


def status_line(result: Dict[str, Any]) -> str:
    if result["status"] == "failed":
        return f"FAILED after {result['elapsed_s']:.0f} s ({result['error']}; see {result['log']})"
    losses = "  ".join(f"{key[:-5]} {result[key]:.4f}" for key in ("val_loss", "test_loss")
                       if isinstance(result.get(key), (int, float)))
    why = {"diverged": " (DIVERGED: loss not finite)", "save failed": f" ({result.get('save_error')})"}
    return f"{result['status']} in {result['elapsed_s']:.0f} s  {losses}{why.get(result['status'], '')}"


def print_launch_summary(labels: Sequence[str], results: Sequence[Dict[str, Any]]) -> None:
    """Every run: status, final losses, and its save folder (or its log when it was not saved)."""
    rows = [("#", "status", "val loss", "test loss", "saved to / log", "run")]
    for i, (label, result) in enumerate(zip(labels, results), start=1):
        fmt = (lambda key: f"{result[key]:.4f}" if isinstance(result.get(key), (int, float)) else "-")
        rows.append((str(i), result["status"], fmt("val_loss"), fmt("test_loss"),
                     result.get("save_folder") or result.get("log") or "-", label))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
    print("\n=== summary")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    bad = [str(i) for i, r in enumerate(results, start=1) if r["status"] in BAD_STATUSES]
    if bad:
        print(f"{len(bad)} of {len(results)} run(s) failed, diverged or were not saved where asked: run(s) "
              f"{', '.join(bad)} (their logs say why)")


def slurm_minutes(text: str) -> int:
    """--slurm-time: minutes ("90"), or SLURM's "HH:MM:SS" / "D-HH:MM:SS"."""
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")] if clock.replace(":", "").isdigit() else None
    if parts is None or len(parts) > 3 or (days and not days.isdigit()):
        raise ValueError(f"--slurm-time={text!r}: give minutes (90) or HH:MM:SS (01:30:00) or D-HH:MM:SS")
    if len(parts) == 1:
        minutes = parts[0]
    else:
        hours, mins, secs = ([0] * (3 - len(parts)) + parts)
        minutes = hours * 60 + mins + (secs > 0)
    return int(days or 0) * 24 * 60 + minutes


def submit_jobs(namers: Sequence[Any], labels: Sequence[str], args: Any) -> List[Dict[str, Any]]:
    """--slurm: one submitit job per run (SLURM when there is one, else submitit's local executor);
    one status line per job as it ends; results in order."""
    import submitit
    folder = Path(args.save_dir) / "slurm-jobs"
    executor = submitit.AutoExecutor(folder=folder / "%j")
    local = executor.cluster != "slurm"
    params: Dict[str, Any] = {"timeout_min": slurm_minutes(args.slurm_time), "gpus_per_node": args.slurm_gpus_per_run,
                              "nodes": 1, "tasks_per_node": 1, "name": "lm-run"}
    if args.slurm_partition:
        params["slurm_partition"] = args.slurm_partition
    executor.update_parameters(**params)
    # local jobs all run at once on this machine: share its cores as --parallel would
    threads = max(1, cpu_count() // len(namers)) if local and not args.slurm_gpus_per_run else None
    if local:
        print("no SLURM here (no sbatch): submitit runs the jobs on this machine with its local executor", flush=True)
    jobs = [executor.submit(run_one, fixed_namer(namer), threads) for namer in namers]
    for i, job in enumerate(jobs):
        print(f"[{i + 1}/{len(jobs)}] submitted job {job.job_id}: {labels[i]} (log: {job.paths.stdout})", flush=True)
    results: List[Optional[Dict[str, Any]]] = [None] * len(jobs)
    start = time.perf_counter()
    while any(r is None for r in results):
        time.sleep(POLL_S)
        for i, job in enumerate(jobs):
            if results[i] is None and job.done():
                results[i] = job_result(job, time.perf_counter() - start)
                print(f"[{i + 1}/{len(jobs)}] {status_line(results[i])}: {labels[i]}", flush=True)
    return [r for r in results]


def job_result(job: Any, elapsed_s: float) -> Dict[str, Any]:
    log = str(job.paths.stdout)
    try:
        result = job.result()
    except Exception as error:  # the job raised, was cancelled, or ran out of time
        lines = [line for line in str(error).splitlines() if line.strip()]
        return {"status": "failed", "error": lines[-1][:200] if lines else type(error).__name__, "log": log,
                "elapsed_s": elapsed_s}
    return {**result, "status": finished_status(result), "log": log, "elapsed_s": elapsed_s}


def launch_runs(namers: Sequence[Any], labels: Sequence[str], args: Any) -> List[Dict[str, Any]]:
    """--parallel N or --slurm: train every run, print the summary, return one result per run
    ({"status": done | interrupted | diverged | save failed | failed | not started, "val_loss", "test_loss", "save_folder", "log", ...})."""
    if args.slurm:
        results = submit_jobs(namers, labels, args)
    else:
        results = run_in_processes(namers, labels, args.parallel, getattr(args, "gpu_id", None))
    print_launch_summary(labels, results)
    return results


def worker_main(spec_path: str) -> None:
    """Entry of a parallel worker process: train the pickled run, write its result as JSON."""
    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    try:
        result = run_one(spec["namer"], spec["threads"], spec["gpu"])
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    tmp = spec["result"] + ".tmp"
    Path(tmp).write_text(json.dumps(result))
    os.replace(tmp, spec["result"])


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    worker_main(sys.argv[1])
