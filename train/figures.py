"""Figures on disk and in Jupyter: where plots go, matplotlib without a display, and showing a figure.

Plots go to METRICS_DIR (`../metrics` next to the repo, or $LM_METRICS_DIR) and ATTENTIONS_DIR
(`../attentions`); model_explorer.py re-exports both (reassign model_explorer.METRICS_DIR to write
elsewhere). matplotlib is imported only when a figure is drawn.
"""
import difflib
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

from train.run_folder import read_train_stats
from train.runs import PathLike, find_run_folder
from train.train_stats import TrainStats

REPO = Path(__file__).resolve().parents[1]
METRICS_DIR = Path(os.environ.get("LM_METRICS_DIR") or REPO.parent / "metrics")
ATTENTIONS_DIR = REPO.parent / "attentions"
# x axes of metric plots: the column of a train_stats entry [steps, samples, counter, value], and its label
X_AXES = {"n": (1, "samples trained"), "s": (0, "optimizer steps"), "c": (2, "values recorded (counter)")}


def pyplot() -> Any:
    """matplotlib.pyplot, on the Agg backend when Linux has no display (plots are then only saved)."""
    import matplotlib
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless and "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def finish_figure(plt: Any, fig: Any, path: Optional[Path], show: bool) -> None:
    """Save `fig` to `path` (folders created), then show it: in Jupyter, displayed at once, in order
    with the cell's printed output; with a desktop window backend, left open for plt.show(). Otherwise
    (headless, or show=False) closed, so figures never pile up and nothing warns about plt.show()."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    if show and in_jupyter():
        from IPython.display import display
        display(fig)
        plt.close(fig)
    elif not show or plt.get_backend().lower() == "agg":
        plt.close(fig)


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (ipykernel), where figures are displayed inline."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and hasattr(shell, "kernel")




def plot_metrics(timestamp_or_train_stats: Union[str, TrainStats, Sequence[Union[str, TrainStats]]],
                 metric: Union[str, Sequence[str]] = "stat/val_loss:main", x: str = "n",
                 filename: Optional[str] = None, save_dir: Optional[PathLike] = None,
                 labels: Optional[Sequence[str]] = None, logy: bool = False, title: Optional[str] = None,
                 show: bool = True, metrics_dir: Optional[Path] = None) -> Any:
    """Plot metric(s) of one or several runs over samples trained (x="n") or optimizer steps (x="s").

    timestamp_or_train_stats: a timestamp, a run folder, a train_stats dict, or a list of them
    (several runs on one figure, labelled by timestamp or by `labels`). metric: a name such as
    "stat/val_loss:main" (the "stat/" may be left out) or a list of names. With `filename`, the figure
    is saved to {metrics_dir or METRICS_DIR}/{filename}.png (../metrics next to the repo). Returns the figure."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)} (n = samples, s = steps, c = counter), not {x!r}")
    single = isinstance(timestamp_or_train_stats, (str, Path, dict))
    runs = [timestamp_or_train_stats] if single else list(timestamp_or_train_stats)
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not runs or not metrics:
        raise ValueError("plot_metrics needs at least one run and one metric")
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"got {len(labels)} labels for {len(runs)} runs")
    column, xlabel = X_AXES[x]
    series = []  # (label, xs, ys), gathered first so that a missing metric raises before any figure exists
    for i, run in enumerate(runs):
        stats, run_label = _train_stats_of(run, save_dir, default_label=f"run {i}")
        run_label = labels[i] if labels is not None else run_label
        for name in metrics:
            entries = stats.get(name) or stats.get(f"stat/{name}")
            if not entries:
                close = difflib.get_close_matches(name, list(stats), n=3, cutoff=0.3)
                raise ValueError(f"metric {name!r} is not recorded in {run_label}; closest: {close}; "
                                 f"recorded: {sorted(stats)}")
            label = name if len(runs) == 1 else (run_label if len(metrics) == 1 else f"{run_label} {name}")
            series.append((label, [e[column] for e in entries], [e[3] for e in entries]))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, xs, ys in series:
        ax.plot(xs, ys, label=label, marker="." if len(xs) < 30 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metrics[0] if len(metrics) == 1 else "value")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title or ", ".join(metrics))
    ax.legend()
    fig.tight_layout()
    finish_figure(plt, fig, Path(metrics_dir or METRICS_DIR) / f"{filename}.png" if filename else None, show)
    return fig


def _train_stats_of(run: Union[str, Path, TrainStats], save_dir: Optional[PathLike],
                    default_label: str) -> Tuple[TrainStats, str]:
    if isinstance(run, dict):
        return run, default_label
    folder = Path(run) if Path(run).is_dir() else find_run_folder(str(run), save_dir)
    return read_train_stats(folder), folder.name
