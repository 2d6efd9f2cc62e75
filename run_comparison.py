"""Compare the runs of a sweep: one row per run, the parameters that differ as columns, final losses.

    from model_explorer import compare_runs
    table = compare_runs("sweep-example")                  # every saved run of configs/sweep-example.txt
    table = compare_runs(("sweep-example", "ptb"))         # or "sweep-example/ptb": one task only
    table = compare_runs(["2024-04-22--16-17-00", ...])    # timestamps, or the rows list_runs() returns
    table = compare_runs("seeds", aggregate_seeds=True)    # mean and std over the runs that differ by seed only

A table is a pandas DataFrame when pandas is installed, else a `RunTable` (a list of dicts that
prints aligned). `python3 main.py --compare CONFIG [--task TASK]` prints it and saves the plot, and a
sweep ends by printing it for the runs it just made. Runs are read from their folders' params.json,
final.json and train_stats.json (no model is loaded), or taken from memory (`records_of_results`).
"""
import dataclasses
import json
import math
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from config_parser import SECTIONS
from train import figures
from train.run_folder import read_final, read_params, read_train_stats, run_folder_problem
from train.runs import find_run_folder, format_value, parse_timestamp, run_folders, safe_name, save_root
from train.train_stats import TrainStats

PathLike = Union[str, Path]
Selector = Union[str, Tuple[str, str], Sequence[Union[str, Path, Dict[str, Any]]]]
FLAGS = ("interrupted", "diverged")  # final.json marks shown as columns when a run has them
SEED = "seed"  # TrainParams.seed: the field aggregate_seeds averages over
_FIELDS = {section: {f.name for f in dataclasses.fields(cls)} for section, cls in SECTIONS.items()}
_SHARED_NAMES = {name for names in _FIELDS.values() for name in names  # written Section.field, as with --set
                 if sum(name in other for other in _FIELDS.values()) > 1}
_SAVED_KEYS = {"DataParams": "data_params", "ModelParams": "model_params", "TrainParams": "train_params"}


@dataclass
class RunRecord:
    """What the comparison needs of one run, saved or still in memory."""
    name: str  # its timestamp (or "run i")
    params: Dict[str, Any]  # column name -> value, every field of every section (see flat_params)
    final: Dict[str, Any]  # final.json's content
    train_stats: TrainStats
    folder: Optional[Path] = None


def flat_params(sections: Dict[str, Any]) -> Dict[str, Any]:
    """{"DataParams": dataclass or dict, ...} -> {field: value}, `Section.field` for a name several
    sections share. ModelParams.max_seq_len None takes DataParams.max_seq_len, as training does."""
    out: Dict[str, Any] = {}
    for section in SECTIONS:
        values = sections.get(section) or sections.get(_SAVED_KEYS[section]) or {}
        values = dataclasses.asdict(values) if dataclasses.is_dataclass(values) else dict(values)
        for name, value in values.items():
            out[f"{section}.{name}" if name in _SHARED_NAMES else name] = value
    if out.get("ModelParams.max_seq_len") is None and "DataParams.max_seq_len" in out:
        out["ModelParams.max_seq_len"] = out["DataParams.max_seq_len"]
    return out


# ---- choosing runs ---------------------------------------------------------------------------------
def select_run_folders(selector: Selector, save_dir: Optional[PathLike] = None) -> List[Path]:
    """The run folders a selector names: a config name (all its tasks; "test" also takes test-* as
    --config does) or a (config, task) pair or "config/task", oldest first; or a list of timestamps,
    run folders or list_runs() rows, in the order given."""
    root = save_root(save_dir)
    is_stamp = parse_timestamp
    if isinstance(selector, tuple) and len(selector) == 2 and all(isinstance(s, str) for s in selector) \
            and is_stamp(selector[0]) is None:
        return _config_folders(selector[0], selector[1], root)
    if isinstance(selector, (str, Path)):
        if (Path(selector) / "final.json").is_file():  # one run folder
            return [Path(selector)]
        if is_stamp(str(selector)) is not None:
            return [find_run_folder(str(selector), root)]
        config, _, task = str(selector).partition("/")
        return _config_folders(config, task or None, root)
    folders = []
    for item in selector:
        if isinstance(item, dict):
            if "folder" not in item:
                raise ValueError(f"a run given as a dict needs its 'folder' (as list_runs() rows have), got {item}")
            folders.append(Path(item["folder"]))
        elif isinstance(item, (str, Path)) and Path(item).is_dir():
            folders.append(Path(item))
        elif isinstance(item, str):
            folders.append(find_run_folder(item, root))
        else:
            raise TypeError(f"compare_runs takes timestamps, run folders or list_runs() rows, got {item!r}")
    if not folders:
        raise ValueError("compare_runs got an empty list of runs")
    return folders


def _config_folders(config: str, task: Optional[str], root: Path) -> List[Path]:
    folders = run_folders(root)
    configs = sorted({f.relative_to(root).parts[0] for f in folders if len(f.relative_to(root).parts) == 4})
    chosen = [c for c in configs if c == config or c.startswith(f"{config}-")]
    if not chosen:
        import difflib
        close = difflib.get_close_matches(config, configs, n=3, cutoff=0.4)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise FileNotFoundError(f"no saved runs of config {config!r} under {root}.{hint} Configs with saved runs: "
                                f"{', '.join(configs) or 'none (train with --save)'}")
    picked = [f for f in folders if f.relative_to(root).parts[0] in chosen and len(f.relative_to(root).parts) == 4]
    for folder in list(picked):
        problem = run_folder_problem(folder)
        if problem:
            warnings.warn(f"left out of the comparison, damaged: {folder} ({problem})")
            picked.remove(folder)
    if task is not None:
        tasks = sorted({f.relative_to(root).parts[1] for f in picked})
        picked = [f for f in picked if f.relative_to(root).parts[1] == safe_name(task)]
        if not picked:
            raise FileNotFoundError(f"config {config!r} has no saved runs of task {task!r} under {root}; "
                                    f"its tasks: {', '.join(tasks)}")
    return sorted(picked, key=lambda f: f.name)


def record_of_folder(folder: PathLike) -> RunRecord:
    folder = Path(folder)
    return RunRecord(folder.name, flat_params(read_params(folder)), read_final(folder), read_train_stats(folder),
                     folder)


def records_of_results(run_params: Sequence[Dict[str, Any]], results: Sequence[Dict[str, Any]]) -> List[RunRecord]:
    """Records of runs still in memory: each run's {"DataParams": dp, ...} and what run_training returned."""
    records = []
    for i, (params, result) in enumerate(zip(run_params, results), start=1):
        folder = Path(result["save_folder"]) if result.get("save_folder") else None
        name = result.get("timestamp") or (folder.name if folder else f"run {i}")
        records.append(RunRecord(name, flat_params(params), dict(result.get("final") or result),
                                 result.get("train_stats") or {}, folder))
    return records


# ---- the table -------------------------------------------------------------------------------------
def differing_params(records: Sequence[RunRecord], exclude: Iterable[str] = ()) -> List[str]:
    """The parameter columns whose value is not the same in every run (in section and field order)."""
    exclude = set(exclude)
    names = list(records[0].params) if records else []
    for r in records[1:]:
        names += [n for n in r.params if n not in names]
    return [n for n in names if n not in exclude and len({_key(r.params.get(n)) for r in records}) > 1]


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def run_label(params: Dict[str, Any], columns: Sequence[str], fallback: str) -> str:
    """"n_layers=4 lr=0.001" from the differing columns' values; `fallback` when there are none."""
    return " ".join(f"{c}={format_value(params.get(c))}" for c in columns) or fallback


def perplexity(loss: Optional[float]) -> Optional[float]:
    return None if loss is None else math.exp(min(loss, 50.0))


def metric_values(record: RunRecord) -> Dict[str, Optional[float]]:
    """Final val losses and perplexities (val:main as val_loss / val_ppl, another set as val_loss:long),
    test loss and perplexity, training throughput (final.json's tokens_per_s; for runs saved before it was
    there, the median of the recorded stat/tokens_per_s) and wall time (training, s)."""
    final = record.final
    out: Dict[str, Optional[float]] = {"val_loss": final.get("val_loss"), "val_ppl": perplexity(final.get("val_loss"))}
    for name, loss in list((final.get("val_losses") or {}).items())[1:]:
        out[f"val_loss:{name}"], out[f"val_ppl:{name}"] = loss, perplexity(loss)
    out["test_loss"], out["test_ppl"] = final.get("test_loss"), perplexity(final.get("test_loss"))
    rates = [e[3] for e in record.train_stats.get("stat/tokens_per_s", []) if e[3] > 0]
    out["tokens_per_s"] = final.get("tokens_per_s") or (statistics.median(rates) if rates else None)
    out["wall_s"] = final.get("elapsed_s")
    return out


def comparison_rows(records: Sequence[RunRecord], aggregate_seeds: bool = False) -> List[Dict[str, Any]]:
    """One dict per run: timestamp, the differing params, the metrics (metric_values); with
    aggregate_seeds, one per setting of the other params: n_seeds, seeds, each metric's mean and
    its standard deviation over seeds (metric_std; sample std, NaN for a single seed)."""
    if not records:
        raise ValueError("no runs to compare")
    columns = differing_params(records, exclude=[SEED] if aggregate_seeds else [])
    rows = []
    for r in records:
        rows.append({"timestamp": r.name, **{c: r.params.get(c) for c in columns}, **metric_values(r)})
    for flag in FLAGS:  # a column only when some run has it
        if any(r.final.get(flag) for r in records):
            for r, row in zip(records, rows):
                row[flag] = bool(r.final.get(flag))
    if not aggregate_seeds:
        return rows
    groups: Dict[str, List[Tuple[RunRecord, Dict[str, Any]]]] = {}
    for r, row in zip(records, rows):
        groups.setdefault(_key([row[c] for c in columns]), []).append((r, row))
    out = []
    for members in groups.values():
        first = members[0][1]
        seeds = [r.params.get(SEED) for r, _ in members]
        agg: Dict[str, Any] = {c: first[c] for c in columns}
        agg["n_seeds"], agg["seeds"] = len(members), ",".join(str(s) for s in seeds)
        for metric in metric_values(members[0][0]):
            values = [row[metric] for _, row in members if row.get(metric) is not None]
            agg[metric] = statistics.fmean(values) if values else None
            agg[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else float("nan")
        out.append(agg)
    return out


class RunTable(list):
    """The comparison table without pandas: a list of row dicts whose repr is an aligned text table
    (a metric and its metric_std are shown together as "mean ± std")."""

    def __repr__(self) -> str:
        return format_table(self)

    __str__ = __repr__


def as_table(rows: List[Dict[str, Any]]) -> Any:
    """A pandas DataFrame of the rows when pandas is installed, else a RunTable."""
    try:
        import pandas
    except ImportError:
        return RunTable(rows)
    return pandas.DataFrame(rows)


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Rows as aligned text: params as written in configs, losses to 4 decimals, ppl to 2."""
    if not len(rows):
        return "no runs"
    columns = [c for c in rows[0] if not c.endswith("_std")]
    cells = [columns] + [[_cell(c, row) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = [all(isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool) for row in rows)
               for c in columns]
    return "\n".join("  ".join(cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(line, widths, numeric))
                     .rstrip() for line in cells)


def _cell(column: str, row: Dict[str, Any]) -> str:
    value = row.get(column)
    text = _number(column, value)
    std = row.get(f"{column}_std")
    if isinstance(std, float) and not math.isnan(std):
        text += f" ± {_number(column, std)}"
    return text


def _number(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return format_value(value)
    if "loss" in column:
        return f"{value:.4f}"
    if column == "tokens_per_s":
        return f"{value:.0f}"
    if "ppl" in column or column == "wall_s":
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return format_value(value)


def best_line(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> str:
    """"best val_loss: 5.1234 (n_layers=2 lr=0.003)": the row with the lowest final validation loss."""
    scored = [row for row in rows if isinstance(row.get("val_loss"), float) and not math.isnan(row["val_loss"])]
    if not scored:
        return "best val_loss: none (no run has a final validation loss)"
    best = min(scored, key=lambda row: row["val_loss"])
    return f"best val_loss: {best['val_loss']:.4f} ({run_label(best, columns, best.get('timestamp', '?'))})"


def table_text(records: Sequence[RunRecord], aggregate_seeds: bool = False) -> str:
    """The aligned table and the best run, as main.py prints them."""
    rows = comparison_rows(records, aggregate_seeds)
    columns = differing_params(records, exclude=[SEED] if aggregate_seeds else [])
    return f"{format_table(rows)}\n{best_line(rows, columns)}"


# ---- the plot --------------------------------------------------------------------------------------
def plot_comparison(records: Sequence[RunRecord], metrics: Sequence[str] = ("stat/val_loss:main",),
                    x: str = "n", filename: Optional[str] = None, aggregate_seeds: bool = False,
                    title: Optional[str] = None, show: bool = True, metrics_dir: Optional[PathLike] = None) -> Any:
    """figures.plot_metrics of the runs, one line per run labelled by its differing params;
    with aggregate_seeds, one line per setting (the mean over seeds) in a band of ± one std."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    columns = differing_params(records, exclude=[SEED] if aggregate_seeds else [])
    labels = [run_label(r.params, columns, r.name) for r in records]
    if not aggregate_seeds:
        return figures.plot_metrics([r.train_stats for r in records], metrics, x=x, filename=filename,
                                           labels=labels, title=title, show=show, metrics_dir=metrics_dir)
    groups: Dict[str, List[RunRecord]] = {}
    for label, r in zip(labels, records):
        groups.setdefault(label, []).append(r)
    column, xlabel = figures.X_AXES[x]
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, members in groups.items():
        for name in metrics:
            xs, mean, std = seed_band([_entries(r, name) for r in members], column)
            shown = f"{label} (n={len(members)})" if len(metrics) == 1 else f"{label} (n={len(members)}) {name}"
            line, = ax.plot(xs, mean, label=shown, marker="." if len(xs) < 30 else None)
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metrics[0] if len(metrics) == 1 else "value")
    ax.set_title(title or f"{', '.join(metrics)}: mean ± std over seeds")
    ax.legend()
    fig.tight_layout()
    figures.finish_figure(plt, fig, Path(metrics_dir or figures.METRICS_DIR) / f"{filename}.png" if filename else None, show)
    return fig


def _entries(record: RunRecord, name: str) -> List[Tuple[int, int, int, float]]:
    entries = record.train_stats.get(name) or record.train_stats.get(f"stat/{name}")
    if not entries:
        raise ValueError(f"metric {name!r} is not recorded in run {record.name}; recorded: {sorted(record.train_stats)}")
    return entries


def seed_band(runs: Sequence[Sequence[Tuple[int, int, int, float]]], column: int
              ) -> Tuple[List[float], List[float], List[float]]:
    """(xs, mean, std) over runs at the x values every run recorded (std 0 for a single run)."""
    by_x = [{e[column]: e[3] for e in entries} for entries in runs]
    xs = sorted(set.intersection(*(set(d) for d in by_x)))
    if not xs:
        raise ValueError("the runs of one setting share no x value to average at: plot them with "
                         "aggregate_seeds=False, or use another x (x='s' for steps, 'n' for samples)")
    mean = [statistics.fmean(d[v] for d in by_x) for v in xs]
    std = [statistics.stdev(d[v] for d in by_x) if len(by_x) > 1 else 0.0 for v in xs]
    return xs, mean, std


def compare_records(records: Sequence[RunRecord], metrics: Sequence[str] = ("stat/val_loss:main",),
                    aggregate_seeds: bool = False, x: str = "n", filename: Optional[str] = None,
                    show: bool = True, plot: bool = True, metrics_dir: Optional[PathLike] = None) -> Any:
    """The table of `records` (see comparison_rows), after drawing (and with filename saving) their plot."""
    table = as_table(comparison_rows(records, aggregate_seeds))
    if plot:
        plot_comparison(records, metrics, x=x, filename=filename, aggregate_seeds=aggregate_seeds, show=show,
                        metrics_dir=metrics_dir)
    return table


# ---- the command line --------------------------------------------------------------------------------
def compare_command(config: str, task: Optional[str] = None, save_dir: Optional[PathLike] = None,
                    aggregate_seeds: bool = False) -> List[Dict[str, Any]]:
    """`main.py --compare CONFIG [--task TASK]`: print the table of the saved runs and the best one,
    and save the val-loss plot to METRICS_DIR/compare-{config}[-{task}].png. Returns the rows."""
    folders = select_run_folders((config, task) if task else config, save_dir)
    records = [record_of_folder(folder) for folder in folders]
    print(f"{len(records)} saved run(s) of {config}{f' on {task}' if task else ''} under "
          f"{save_root(save_dir)}:")
    print(table_text(records, aggregate_seeds))
    filename = safe_name(f"compare-{config}" + (f"-{task}" if task else ""))
    plot_comparison(records, filename=filename, aggregate_seeds=aggregate_seeds, show=False)
    print(f"plot: {figures.METRICS_DIR / filename}.png")
    return comparison_rows(records, aggregate_seeds)
