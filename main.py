"""Train language models from config files: `python3 main.py --config=test-nlp --task=ptb --no-wandb`.

    --config=NAME     configs/NAME.txt and every configs/NAME-*.txt, each expanded into its sweep
    --set KEY=VALUE   override any field (`lr=3e-4`, `ModelParams.max_seq_len=128`; a list sweeps)
    --dry-run         print the runs this would start, one line each, check all of them, and exit
    --list-params     every field of DataParams, ModelParams, TrainParams with its default and description

Argument parsing imports nothing heavy (no torch/lightning), so `--help` and config errors answer at
once; the checks of every run before training (also with `--dry-run`) import torch for the model
checks, and training code is imported inside `run_all`. Exit status: 0 when every run trained well,
2 for bad input, 1 when a run diverged or failed otherwise, 130 / 143 after Ctrl-C / SIGTERM.
"""
import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from config_parser import ConfigError, RunSpec, format_literal, format_params_list, load_runs
from train.runs import MAIN_PROJ, Namer, save_root

REPO = Path(__file__).resolve().parent


# ---- ablations --------------------------------------------------------------------------------


def swap_layer_architecture(data_params: Any, model_params: Any, train_params: Any) -> None:
    """The same model built from the other layer implementation (fused torch layers <-> our editable one)."""
    if model_params.layer_architecture not in ("torch-transformer", "custom-transformer"):
        raise ConfigError(f"the swap-layer-architecture ablation swaps the two transformer paths; a "
                          f"{model_params.layer_architecture!r} model has no other implementation: drop --ablate "
                          "or edit the ablations list in run_all (main.py)")
    is_torch = model_params.layer_architecture == "torch-transformer"
    model_params.layer_architecture = "custom-transformer" if is_torch else "torch-transformer"


def runs_with_ablations(runs: Sequence[RunSpec], ablations: Sequence[Tuple[str, Callable]]) -> List[RunSpec]:
    """Each run, followed by one copy per ablation with that ablation applied to its params.
    The ablation name goes into `varying` ("none" for the original) so run names tell them apart."""
    expanded = []
    for run in runs:
        expanded.append(RunSpec(run.config_path, run.config_name, run.params,
                                {**run.varying, "ablation": "none"}, run.overrides))
        for name, ablate in ablations:
            params = copy.deepcopy(run.params)
            ablate(params["DataParams"], params["ModelParams"], params["TrainParams"])
            expanded.append(RunSpec(run.config_path, run.config_name, params,
                                    {**run.varying, "ablation": name}, run.overrides))
    return expanded


# ---- running ----------------------------------------------------------------------------------


def describe_run(run: RunSpec) -> str:
    """One line: config file, task, swept values, --set values."""
    path = run.config_path.resolve()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    parts = [str(shown), f"task={run.params['DataParams'].dataset_name}"]
    parts += [f"{key}={format_literal(value)}" for key, value in run.varying.items()]
    overrides = {key: value for key, value in run.overrides.items() if key != "dataset_name"}  # shown as task
    if overrides:
        parts.append("(--set " + " ".join(f"{key}={format_literal(value)}" for key, value in overrides.items())
                     + ")")
    return "  ".join(parts)


def run_all(runs: Sequence[RunSpec], args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Check every run, then train them in order (or, with --dry-run, print them); returns run_training's
    results (a failed run's: {"error": message}). A run that fails does not stop the others; at the end
    the exit status is non-zero if any failed or diverged: 2 for bad input, 1 otherwise, and 130 / 143
    when Ctrl-C / SIGTERM stopped the sweep."""
    # Ablations for --ablate: (name, function editing a run's DataParams, ModelParams, TrainParams
    # in place). Every run is followed by one extra run per ablation. Add yours to this list.
    ablations: List[Tuple[str, Callable]] = [
        ("swap-layer-architecture", swap_layer_architecture),
    ]
    if args.ablate:
        try:
            runs = runs_with_ablations(runs, ablations)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    if args.dry_run:
        for i, run in enumerate(runs, start=1):
            print(f"[{i}/{len(runs)}] {describe_run(run)}", flush=True)
    check_runs(runs, args)  # exits 2 listing every bad run
    if args.dry_run:
        return []

    if args.parallel or args.slurm:  # each run in its own process or job: train/launch.py
        from train.launch import launch_runs
        namers = [Namer(run.params["DataParams"], run.params["ModelParams"], run.params["TrainParams"], args,
                        varying=run.varying, config_name=run.config_name) for run in runs]
        return launch_runs(namers, [describe_run(run) for run in runs], args)

    from train.run import run_training  # heavy (torch, lightning): imported only when training

    results: List[Dict[str, Any]] = []
    exit_code = 0
    for i, run in enumerate(runs, start=1):
        print(f"=== run {i}/{len(runs)}: {describe_run(run)}", flush=True)
        namer = Namer(run.params["DataParams"], run.params["ModelParams"], run.params["TrainParams"], args,
                      varying=run.varying, config_name=run.config_name)
        try:
            result = run_training(namer)
        except (ValueError, FileNotFoundError) as error:  # bad input found while setting up: data, params
            if os.environ.get("LM_TRACEBACK"):
                raise
            print(f"error: {error}\n({where_raised(error)}; set LM_TRACEBACK=1 for the full traceback)",
                  file=sys.stderr, flush=True)
            result, exit_code = {"error": str(error)}, max(exit_code, 2)
        except Exception as error:  # anything else: the other runs of the sweep still run
            if os.environ.get("LM_TRACEBACK"):
                raise
            print(f"error: run {i} failed: {type(error).__name__}: {error}\n({where_raised(error)}; set "
                  f"LM_TRACEBACK=1 for the full traceback)", file=sys.stderr, flush=True)
            result, exit_code = {"error": f"{type(error).__name__}: {error}"}, max(exit_code, 1)
        results.append(result)
        if result.get("diverged") or result.get("save_error"):
            exit_code = max(exit_code, 1)
        if result.get("interrupted"):
            exit_code = 143 if result.get("signal") == "SIGTERM" else 130
            if i < len(runs):
                print(f"stopped by {result.get('signal') or 'Ctrl-C'}: the remaining {len(runs) - i} run(s) were "
                      "not started", flush=True)
            break
    if len(runs) > 1:
        print_summary(runs, results)
    if exit_code:
        sys.exit(exit_code)
    return results


def check_runs(runs: Sequence[RunSpec], args: argparse.Namespace) -> None:
    """Exit 2 listing every run with bad params (train/run_checks.py) and an unusable --save-dir,
    before anything trains."""
    from train.run_checks import run_problems
    from train.save_dir import check_save_dir

    bad = []
    for i, run in enumerate(runs, start=1):
        problems = run_problems(run.params, getattr(args, "data_path", None),
                                on_this_machine=not getattr(args, "slurm", False))
        if problems:
            listed = "\n  ".join(problem.replace("\n", "\n  ") for problem in problems)
            bad.append(f"run {i}/{len(runs)} ({describe_run(run)}):\n  {listed}")
    if getattr(args, "save", False):
        try:
            check_save_dir(args.save_dir)
        except ValueError as error:
            bad.append(f"--save-dir: {error}")
    if bad:
        print("error: " + "\n".join(bad) + f"\nNothing was trained ({len(runs)} run(s) checked).", file=sys.stderr)
        sys.exit(2)


def where_raised(error: BaseException) -> str:
    """"raised at data/natural.py:114 (ptb)": the innermost frame of the error's traceback."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "raised here"
    path = Path(tb.tb_frame.f_code.co_filename)
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return f"raised at {shown}:{tb.tb_lineno} ({tb.tb_frame.f_code.co_name})"


def print_summary(runs: Sequence[RunSpec], results: Sequence[Dict[str, Any]]) -> None:
    """One line per run: its final losses, or why it failed; runs not started (after a Ctrl-C) are left out."""
    print("\n=== summary")
    for i, (run, result) in enumerate(zip(runs, results), start=1):
        losses = "  ".join(f"{k}={result[k]:.4f}" for k in ("val_loss", "test_loss")
                           if isinstance(result, dict) and isinstance(result.get(k), (int, float)))
        status = run_status(result)
        print(f"{losses}  {describe_run(run)}" + (f"\n    run {i} {status}" if status else ""))
    failed = [i for i, result in enumerate(results, start=1) if run_status(result)]
    if failed:
        print(f"{len(failed)} of {len(runs)} run(s) did not finish well: run(s) {', '.join(map(str, failed))}")
    print_comparison(runs, results)


def print_comparison(runs: Sequence[RunSpec], results: Sequence[Dict[str, Any]]) -> None:
    """The comparison table of the runs just made that trained (from memory: saved or not), as
    --compare prints it (run_comparison.py)."""
    from run_comparison import records_of_results, table_text
    trained = [(run, result) for run, result in zip(runs, results) if "error" not in result]
    if trained:
        print(f"\n=== comparison of the {len(trained)} run(s) that trained")
        print(table_text(records_of_results([run.params for run, _ in trained], [result for _, result in trained])))


def run_status(result: Dict[str, Any]) -> str:
    """"" for a run that trained and saved normally, else what went wrong (failed, diverged, ...)."""
    if "error" in result:
        return "FAILED: " + result["error"].splitlines()[0]
    notes = []
    if result.get("diverged"):
        notes.append("DIVERGED (loss not finite)")
    if result.get("interrupted"):
        notes.append(f"interrupted by {result.get('signal') or 'Ctrl-C'}")
    if result.get("save_error"):
        notes.append("NOT SAVED where asked: " + result["save_error"])
    return "; ".join(notes)


# ---- command line -----------------------------------------------------------------------------


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train small decoder-only language models from config files (configs/*.txt).",
        epilog="Example: python3 main.py --config=test-nlp --task=ptb --no-wandb")
    parser.add_argument("--config", help="NAME runs configs/NAME.txt (if it exists) and every configs/NAME-*.txt; "
                                         "a path to a .txt file runs that file")
    parser.add_argument("--task", help="dataset to train on; overrides DataParams.dataset_name "
                                       "(e.g. ptb, shakespeare, sort)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set",
                        help="override a field, e.g. --set lr=3e-4 or --set ModelParams.max_seq_len=128 "
                             "(Section.key when several sections have the name); a list sweeps; repeatable")
    parser.add_argument("--save", action="store_true", help="save each trained model under --save-dir")
    parser.add_argument("--save-dir", default=str(save_root()),
                        help="root of saved runs: {save_dir}/{config}/{task}/{run name}/{timestamp} "
                             "(default: %(default)s)")
    parser.add_argument("--resume", metavar="PATH", help="continue training the run saved in this folder")
    parser.add_argument("--data-path", metavar="PATH",
                        help="data folder (default: env LM_DATA_PATH, then data-path.txt files)")
    parser.add_argument("--no-wandb", action="store_true", help="do not log to Weights & Biases")
    parser.add_argument("--wandb-proj-name", help=f"wandb project (default: {MAIN_PROJ}-{{config}}-{{task}})")
    parser.add_argument("--wandb-entity", default=os.environ.get("WANDB_ENTITY"),
                        help="wandb user or team (default: env WANDB_ENTITY, now %(default)s)")
    parser.add_argument("--gpu-id", type=gpu_ids, default=None, metavar="N[,N...]",
                        help="CUDA device(s) to train on, e.g. 0 or 0,1 (several: one process per GPU, DDP; "
                             "with --parallel, the GPUs the runs share round robin). Default: 0 when CUDA is "
                             "present; without CUDA the run says so and uses the CPU")
    parser.add_argument("--parallel", type=positive_int, default=None, metavar="N",
                        help="run the runs N at a time, each in its own process (output in {save folder}.log); "
                             "exit code = number of runs that failed or diverged")
    parser.add_argument("--slurm", action="store_true",
                        help="submit each run as a SLURM job through submitit (without SLURM: run them here)")
    parser.add_argument("--slurm-partition", help="SLURM partition of the jobs (default: the cluster's)")
    parser.add_argument("--slurm-time", default="60", metavar="TIME",
                        help="time limit per job: minutes or HH:MM:SS (default: %(default)s minutes)")
    parser.add_argument("--slurm-gpus-per-run", type=int, default=0, metavar="N",
                        help="GPUs per job (default: %(default)s)")
    parser.add_argument("--ablate", action="store_true",
                        help="after each run, also run its ablations (defined in run_all in main.py)")
    parser.add_argument("--compare", metavar="CONFIG",
                        help="print the table of the saved runs of CONFIG (with --task, of that task only): the "
                             "params that differ, final losses, tokens/s, wall time; save their val-loss plot to "
                             "../metrics/compare-CONFIG[-TASK].png; train nothing")
    parser.add_argument("--export-hf", nargs=2, metavar=("RUN", "OUT_FOLDER"),
                        help="write the saved run RUN (its folder, or its timestamp under --save-dir) as a "
                             "transformers checkpoint folder OUT_FOLDER (AutoModelForCausalLM and AutoTokenizer "
                             "load it) and exit")
    parser.add_argument("--force", action="store_true",
                        help="--export-hf: export even a run that diverged or whose weights changed since it was "
                             "saved, and write into a non-empty OUT_FOLDER")
    parser.add_argument("--eval", metavar="RUN_OR_PRETRAINED",
                        help="score a saved run (folder or timestamp) or a transformers checkpoint (folder or hub "
                             "name) on lm-evaluation-harness tasks (--tasks), print the table, write the JSON "
                             "(beside the run: eval/{date}.json) and exit")
    parser.add_argument("--tasks", metavar="A,B", help="--eval: lm-eval task names (local: ptb_next_word, ptb_perplexity)")
    parser.add_argument("--num-fewshot", type=int, default=None, metavar="N", help="--eval: few-shot examples")
    parser.add_argument("--limit", type=float, default=None, metavar="N",
                        help="--eval: at most N documents per task (below 1: a fraction)")
    parser.add_argument("--include-path", metavar="DIR", help="--eval: a folder of more lm-eval task YAMLs")
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="N", help="--eval: batch size")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, one line each, and exit")
    parser.add_argument("--list-params", action="store_true",
                        help="list every field of DataParams, ModelParams, TrainParams and exit")
    return parser


def gpu_ids(text: str) -> List[int]:
    """--gpu-id: "0" or "0,1" -> [0] or [0, 1]."""
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give GPU numbers separated by commas, e.g. 0 or 0,1") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"{text!r}: GPU numbers must be distinct and >= 0")
    return ids


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1")
    return int(text)


def export_run(run: str, out_folder: str, save_dir: Optional[str] = None, force: bool = False) -> None:
    """--export-hf: the run folder (or timestamp under save_dir) as a transformers checkpoint folder
    (OUT_FOLDER checked before the model loads; --force: a diverged or changed run, a non-empty folder)."""
    from pretrained import check_export_folder, export_hf  # heavy (torch, transformers): only when exporting
    try:
        check_export_folder(out_folder, force)
        if Path(run).exists():
            folder = Path(run)
        else:
            from train.runs import find_run_folder
            folder = find_run_folder(run, save_dir)
        out = export_hf(folder, out_folder, force=force)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"--export-hf {run}: {error}") from error
    architecture = json.loads((out / "config.json").read_text()).get("architectures", ["?"])[0]
    auto_class = "AutoModelForMaskedLM" if architecture.endswith("ForMaskedLM") else "AutoModelForCausalLM"
    print(f"exported {folder} to {out} ({architecture}): load it with transformers.{auto_class}.from_pretrained("
          f"{str(out)!r}) and AutoTokenizer.from_pretrained({str(out)!r})")


def eval_command(args: argparse.Namespace) -> Dict[str, Any]:
    """--eval RUN_OR_PRETRAINED --tasks a,b: lm-eval's table for a saved run or a pretrained checkpoint."""
    if not args.tasks:
        raise ConfigError("--eval needs --tasks, e.g. --tasks=ptb_next_word,ptb_perplexity")
    limit = int(args.limit) if args.limit is not None and args.limit == int(args.limit) else args.limit
    from lm_eval.utils import make_table
    import torch
    from train.lm_eval_adapter import check_eval_request, check_evaluable, evaluate_full
    try:  # bad task names, include path or limit: refused before a model loads
        check_eval_request(args.tasks, limit, args.num_fewshot, args.include_path)
    except ValueError as error:
        raise ConfigError(f"--eval: {error}") from error
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(args.eval).expanduser()
    try:
        if path.is_dir() and not (path / "config.json").is_file():
            folder = path
        else:
            from train.runs import find_run_folder
            try:
                folder = None if path.exists() else find_run_folder(args.eval, args.save_dir)
            except FileNotFoundError:
                folder = None  # not a run's timestamp: a hub name
        if folder is not None:
            from train.run_folder import load_run
            lm = load_run(folder, device=device).lm
        else:
            from pretrained import get_pretrained
            lm = get_pretrained(args.eval).to(device)
            folder = path if path.is_dir() else Path(args.save_dir) / "pretrained" / args.eval.replace("/", "--")
        check_evaluable(lm)
    except (ValueError, OSError) as error:
        raise ConfigError(f"--eval {args.eval}: {error}") from error
    out = evaluate_full(lm, args.tasks, num_fewshot=args.num_fewshot, limit=limit, batch_size=args.batch_size,
                        include_path=args.include_path, save_folder=folder)
    print(make_table(out))
    if out.get("groups"):
        print(make_table(out, "groups"))
    print(f"results written to {out['saved_to']}")
    return out["results"]


def check_paths(args: argparse.Namespace) -> None:
    if args.task is not None and not args.task.strip():
        raise ConfigError("--task is empty: give a task name, e.g. --task=ptb or --task=sort.")
    for flag, path in (("--resume", args.resume), ("--data-path", args.data_path)):
        # --resume also takes the folder "saving to ..." printed while that run is still {folder}.partial
        building = flag == "--resume" and Path(f"{path}.partial").is_dir()
        if path is not None and not Path(path).exists() and not building:
            raise ConfigError(f"{flag}={path}: no such file or folder.")


def compare_saved_runs(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """--compare CONFIG [--task TASK]: the comparison table of saved runs (run_comparison.py)."""
    if args.config:
        raise ConfigError("--compare reads saved runs and trains nothing: give --compare CONFIG without --config")
    from run_comparison import compare_command  # imports torch: only when asked
    try:
        return compare_command(args.compare, args.task, save_dir=args.save_dir)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from error


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    from train.launch import launched_rank
    if launched_rank() != 0:  # one of several training processes (DDP): rank 0 alone prints; errors still show
        sys.stdout = open(os.devnull, "w")
    try:
        if args.list_params:
            print(format_params_list())
            return []
        if args.compare:
            return compare_saved_runs(args)
        if args.export_hf:
            export_run(*args.export_hf, save_dir=args.save_dir, force=args.force)
            return []
        if args.eval:
            eval_command(args)
            return []
        if not args.config:
            parser.error("--config is required, e.g. --config=test-nlp (configs/*.txt lists them)")
        check_paths(args)
        runs = load_runs(args.config, args.set, args.task)
        if args.resume and (len(runs) > 1 or args.ablate):
            raise ConfigError(f"--resume continues one run, but --config={args.config} with these flags makes "
                              f"{len(runs)} run(s){' plus ablations' if args.ablate else ''}; "
                              f"resume them one at a time.")
        if args.resume and (args.parallel or args.slurm):
            raise ConfigError("--resume continues one run in this process: drop --parallel / --slurm")
        if args.parallel and args.slurm:
            raise ConfigError("--parallel runs on this machine and --slurm submits jobs: choose one")
        if args.slurm:
            from train.launch import slurm_minutes
            try:
                slurm_minutes(args.slurm_time)
            except ValueError as error:
                raise ConfigError(str(error)) from None
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    results = run_all(runs, args)
    from train.launch import count_bad
    failed = count_bad(results)
    if failed:  # --parallel / --slurm: the exit code is the number of failed, diverged or unsaved runs
        sys.exit(min(failed, 125))
    return results


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stderr.close()
