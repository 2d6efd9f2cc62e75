"""Open saved runs in Jupyter: find and load them by timestamp, verify them, plot metrics and attention.

    from model_explorer import get_model_by_timestamp, list_runs, verify_stable_load, plot_metrics, show_lm_attns
    runs = list_runs()
    lm, dataset, train_stats, params = get_model_by_timestamp("2024-04-22--16-17-00")
    verify_stable_load("2024-04-22--16-17-00")
    fig = plot_metrics("2024-04-22--16-17-00", ["stat/train_loss", "stat/val_loss:main"], filename="run")
    out_embeds, attns = show_lm_attns(lm, "the company said", folder_name="run")

Runs live under the save root (`--save-dir`, else $LM_SAVE_DIR, else
`../saved-models` next to the repo; train/runs.py) as `{config}/{task}/{run name}/{timestamp}/`; the folder
format belongs to train/run_folder.py, which this module calls. Plots go to METRICS_DIR and
ATTENTIONS_DIR (`../metrics` (or $LM_METRICS_DIR), `../attentions` next to the repo); reassign them to
write elsewhere. compare_runs (a sweep's runs side by side) lives in run_comparison.py.
"""
import functools
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from data.dataloader import LMDataModule
from model.eval_mode import evaluating
from model.lm import LM
from run_comparison import compare_records, record_of_folder, select_run_folders
from train import figures
from train.figures import ATTENTIONS_DIR, METRICS_DIR, finish_figure, pyplot
from train.run_folder import (DamagedRunError, file_sha256, load_run, read_final, run_folder_problem,
                              weights_hash_problem)
from train.runs import find_run_folder, run_folders, save_root  # noqa: F401 (find_run_folder: part of the API)
from train.train_stats import TrainStats


PathLike = Union[str, Path]
Loaded = Tuple[LM, LMDataModule, TrainStats, Dict[str, Any]]
LIST_HASH_UP_TO_BYTES = 2 ** 27  # list_runs hashes weights up to 128 MiB (bigger ones: get_model_by_timestamp does)


# ---- finding and loading runs ------------------------------------------------------------------
def get_model_by_path(folder: PathLike, device: str = "cpu", data_path: Optional[PathLike] = None) -> Loaded:
    """Load a run folder -> (lm in eval mode, dataset, train_stats, params).

    `params` holds "data_params", "model_params", "train_params" as dataclasses (and the rest of
    params.json: "run", "argv", "versions", ...). `dataset` is the LMDataModule rebuilt from the
    saved data params and the saved tokenizer (data_path: the data folder, if it is not the default)."""
    run = load_run(folder, device=device)
    where = Path(folder).resolve().parts
    run.lm.name = f"{'/'.join(where[-4:-2])} {where[-1]}"  # "test-nlp/ptb 2024-04-22--16-17-00", for plot titles
    dataset = LMDataModule(run.params["data_params"], batch_size=run.params["train_params"].batch_size,
                           tokenizer=run.tokenizer, data_path=data_path)
    return run.lm, dataset, run.train_stats, run.params


def get_model_by_timestamp(timestamp: str, save_dir: Optional[PathLike] = None, device: str = "cpu",
                           data_path: Optional[PathLike] = None) -> Loaded:
    """Find the run saved at `timestamp` (e.g. "2024-04-22--16-17-00") and load it (see get_model_by_path),
    after checking that model.safetensors is the file the run saved (final.json's weights_sha256):
    DamagedRunError when it is not."""
    folder = find_run_folder(timestamp, save_dir)
    problem = weights_hash_problem(folder)
    if problem:
        raise DamagedRunError(f"{folder}: {problem}. Load it anyway with get_model_by_path(folder).")
    return get_model_by_path(folder, device=device, data_path=data_path)


def list_runs(save_dir: Optional[PathLike] = None, show: bool = True) -> List[Dict[str, Any]]:
    """The saved runs, oldest first, as rows {timestamp, config, task, run_name, val_loss, interrupted,
    diverged, damaged, folder}; `show` prints them as a table. `diverged`: the loss stopped being finite;
    `damaged`: None, or why the folder cannot be loaded (a missing, truncated, unparseable or corrupt file,
    tensors whose shapes do not fit params.json, weights whose sha256 is not final.json's: checked for
    weights up to LIST_HASH_UP_TO_BYTES, larger ones when loaded)."""
    root = save_root(save_dir)
    rows = []
    for folder in run_folders(root, complete=False):
        damaged = run_folder_problem(folder, hash_up_to_bytes=LIST_HASH_UP_TO_BYTES)
        final = {} if damaged else read_final(folder)
        where = folder.relative_to(root).parts[:-1]  # (config, task, run name) as main.Namer lays them out
        config, task, run_name = where if len(where) == 3 else ("/".join(where), "?", "?")
        rows.append({"timestamp": folder.name, "config": config, "task": task, "run_name": run_name,
                     "val_loss": final.get("val_loss"), "interrupted": bool(final.get("interrupted")),
                     "diverged": bool(final.get("diverged")), "damaged": damaged, "folder": str(folder)})
    rows.sort(key=lambda r: r["timestamp"])
    if show:
        print(format_runs(rows))
    return rows


def format_runs(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return "no saved runs"
    cols = ["timestamp", "config", "task", "run_name", "val_loss"]
    cells = [cols] + [[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    for row, r in zip(cells[1:], rows):
        if r.get("damaged"):
            row[-1] = f"DAMAGED, cannot load: {r['damaged']}"
            continue
        row[-1] += " (interrupted)" if r["interrupted"] else ""
        row[-1] += " (DIVERGED: loss not finite)" if r.get("diverged") else ""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells)


# ---- verification --------------------------------------------------------------------------------
class VerificationError(AssertionError):
    """A saved run does not load back to what was saved."""


def verify_stable_load(timestamp_or_folder: PathLike, save_dir: Optional[PathLike] = None,
                       rtol: float = 1e-5, device: str = "cpu", data_path: Optional[PathLike] = None) -> Dict[str, Any]:
    """Load a saved run twice and check: model.safetensors has the sha256 final.json recorded (the weights
    were not changed since); finite parameters and outputs (NaN reported as NaN); identical parameters;
    identical eval-mode outputs (two passes of one model, and the two loads); each validation loss
    recomputed over the whole set (token-weighted mean cross-entropy, as the trainer's final
    evaluation) equal to final.json's within `rtol`.
    Prints each check; raises VerificationError on a mismatch. Returns the recomputed losses.

    A run trained on CUDA had its final losses measured with TF32 matmuls (train/run.py sets
    float32 matmul precision "high"): recompute on device="cuda", or allow a larger rtol on the CPU.
    data_path: where the run's data lives, when not the default (a run trained with --data-path)."""
    folder = Path(timestamp_or_folder)
    if not folder.is_dir():
        folder = find_run_folder(str(timestamp_or_folder), save_dir)
    print(f"verifying {folder}")
    saved = read_final(folder)
    if saved.get("weights_sha256"):  # runs saved before the hash was recorded have none
        digest = file_sha256(folder / "model.safetensors")
        _check(digest == saved["weights_sha256"], f"model.safetensors (sha256 {digest[:12]}...) is not the file the "
               f"run saved (final.json's weights_sha256 {saved['weights_sha256'][:12]}...): the weights were changed")
        print("ok: model.safetensors has the hash final.json recorded")
    lm1, dataset, _, _ = get_model_by_path(folder, device=device, data_path=data_path)
    lm2 = load_run(folder, device=device).lm

    p1, p2 = dict(lm1.named_parameters()), dict(lm2.named_parameters())
    diverged = " (final.json: the run diverged)" if saved.get("diverged") else ""
    nonfinite = [name for name, p in p1.items() if not torch.isfinite(p).all()]
    _check(not nonfinite, f"the weights hold NaN / inf values, in {len(nonfinite)} of {len(p1)} tensors "
           f"({', '.join(nonfinite[:3])}{', ...' if len(nonfinite) > 3 else ''}){diverged}")
    _check(p1.keys() == p2.keys(), f"the two loads have different parameter names: {sorted(p1.keys() ^ p2.keys())}")
    different = [name for name in p1 if not torch.equal(p1[name], p2[name])]
    _check(not different, f"parameters differ between two loads: {different[:5]}")
    print(f"ok: two loads have identical parameters ({len(p1)} tensors)")

    x = next(iter(dataset.val_dataloader()[0]))["x_indices"][:, :-1]  # what the model reads of a batch
    with torch.no_grad():
        a, b, c = lm1(x), lm1(x), lm2(x)
    bad = int((~torch.isfinite(a)).sum())
    _check(not bad, f"the outputs hold {bad} NaN / inf values of {a.numel()}{diverged}")
    _check(torch.equal(a, b), "eval-mode outputs differ between two forward passes of one model")
    _check(torch.equal(a, c), "eval-mode outputs differ between the two loads")
    print(f"ok: eval-mode outputs are deterministic (a batch of {x.shape[0]} x {x.shape[1]} tokens)")

    wanted = [(f"val_losses[{name!r}]", name, value) for name, value in (saved.get("val_losses") or {}).items()]
    wanted.append(("val_loss", dataset.val_names[0], saved.get("val_loss")))  # the headline: val:main
    _check(all(value is not None for _, _, value in wanted),
           "final.json has no validation loss (the run was stopped by a second Ctrl-C): nothing to compare")
    unknown = [name for _, name, _ in wanted if name not in dataset.val_names]
    _check(not unknown, f"final.json has losses of validation sets {unknown} the dataset lacks ({dataset.val_names})")
    loaders = dict(zip(dataset.val_names, dataset.val_dataloader()))
    recomputed: Dict[str, float] = {}
    for key, name, want in wanted:
        if name not in recomputed:
            # a masked model's validation loss is over its fixed masks, not the pseudo-perplexity
            recomputed[name] = lm1.perplexities(loaders[name], before_exp=True, pseudo_perplexity=False)[0]
        loss = recomputed[name]
        _check(abs(loss - want) <= rtol * max(1.0, abs(want)),
               f"recomputed val:{name} loss {loss:.7f} != final.json's {key} {want:.7f} "
               f"(difference {loss - want:.2e}, allowed {rtol:g} relative)")
        print(f"ok: recomputed val:{name} loss {loss:.6f} equals final.json's {key}")
    return {"folder": str(folder), "val_losses": recomputed}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise VerificationError(f"verify_stable_load: {message}")


# ---- metric plots --------------------------------------------------------------------------------
@functools.wraps(figures.plot_metrics)
def plot_metrics(*args: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("metrics_dir", METRICS_DIR)  # this module's, so that reassigning it takes effect
    return figures.plot_metrics(*args, **kwargs)


def compare_runs(selector: Any, metrics: Union[str, Sequence[str]] = ("stat/val_loss:main",),
                 save_dir: Optional[PathLike] = None, aggregate_seeds: bool = False, x: str = "n",
                 filename: Optional[str] = None, show: bool = True) -> Any:
    """Compare saved runs: a table with one row per run (a pandas DataFrame when pandas is installed,
    else a list of dicts that prints aligned): its timestamp, the parameters that differ between the runs,
    final val/test losses and perplexities, tokens/s and wall time (s); and a plot_metrics overlay of
    `metrics`, one line per run labelled by its differing parameters (e.g. "n_layers=2 lr=0.003"),
    saved to METRICS_DIR/{filename}.png when `filename` is given.

    selector: a config name (its runs of every task; "test" also takes test-nlp, test-synth as --config
    does), a (config, task) pair or "config/task", a list of timestamps or run folders, or the list
    list_runs() returns. aggregate_seeds: one row (and one line, in a band of ± one std) per setting of
    the other parameters, with each metric's mean and its std over the seeds (columns metric_std).
    See run_comparison.py."""
    records = [record_of_folder(folder) for folder in select_run_folders(selector, save_dir)]
    return compare_records(records, metrics, aggregate_seeds=aggregate_seeds, x=x, filename=filename, show=show,
                           metrics_dir=METRICS_DIR)


# ---- attention plots -----------------------------------------------------------------------------
def show_lm_attns(lm: LM, seq: Union[str, Sequence[int], torch.Tensor], layers: Optional[Sequence[int]] = None,
                  heads: Optional[Sequence[int]] = None, folder_name: Optional[str] = None,
                  show: bool = True, model_name: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run `seq` (text or ids, read as given: no bos is added) through `lm` in eval mode and draw the
    attention of the chosen layers x heads (default: all) as a grid of heatmaps, query tokens down,
    key tokens across, with a colour bar and a title naming the model (`model_name`, default
    model_label(lm)), layer and head. With `folder_name`, saves grid.png and one layer{l}-head{h}.png
    per drawn head to ATTENTIONS_DIR/{folder_name}/ (../attentions next to the repo).

    Returns (out_embeds: the logits [1, seq, vocab], attns [1, n_layers, n_heads, seq, seq])."""
    x = lm.as_batch(seq)
    if x.shape[0] != 1:
        raise ValueError(f"show_lm_attns draws one sequence, got a batch of {x.shape[0]}: pass one of them")
    with evaluating(lm):
        out = lm(x, get_attn=True)
    out_embeds, attns = out["logits"], out["attns"].float().cpu()
    layers = _indices("layers", layers, attns.shape[1])
    heads = _indices("heads", heads, attns.shape[2])
    labels = token_labels(lm, x[0].tolist())
    name = model_name or model_label(lm)

    plt = pyplot()
    folder = ATTENTIONS_DIR / folder_name if folder_name else None
    fig = attention_figure(attns[0], labels, layers, heads, name)
    finish_figure(plt, fig, folder / "grid.png" if folder else None, show)
    if folder:
        for layer in layers:
            for head in heads:
                one = attention_figure(attns[0], labels, [layer], [head], name)
                finish_figure(plt, one, folder / f"layer{layer}-head{head}.png", show=False)
    return out_embeds, out["attns"]


def attention_figure(attns: torch.Tensor, labels: List[str], layers: Sequence[int], heads: Sequence[int],
                     model_name: str) -> Any:
    """A figure of heatmaps, one per (layer, head) of attns [n_layers, n_heads, seq, seq], one colour bar
    (attention weight, 0 to 1) and titles naming the model, layer and head."""
    plt = pyplot()
    cell = min(8.0, max(2.5, 0.22 * len(labels)))
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(cell * len(heads) + 1.2, cell * len(layers) + 0.4),
                             squeeze=False, layout="constrained")
    single = len(layers) * len(heads) == 1
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            title = f"{model_name}\nlayer {layer} head {head}" if single else f"layer {layer} head {head}"
            image = _draw_head(axes[r][c], attns[layer, head], labels, title)
    if not single:
        fig.suptitle(f"{model_name}: attention", fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="attention weight", shrink=0.8)
    return fig


def model_label(lm: LM) -> str:
    """A short name for plot titles: `lm.name` when set (get_model_by_path sets config/task timestamp),
    else the architecture in a few words."""
    name = getattr(lm, "name", None)
    if name:
        return str(name)
    mp = lm.model_params
    return f"{mp.layer_architecture} {mp.n_layers}x{mp.dim}"


def _indices(what: str, chosen: Optional[Sequence[int]], n: int) -> List[int]:
    if chosen is None:
        return list(range(n))
    chosen = [chosen] if isinstance(chosen, int) else list(chosen)
    bad = [i for i in chosen if not isinstance(i, int) or not 0 <= i < n]
    if bad or not chosen:
        raise ValueError(f"{what} must be a non-empty list of indices in 0..{n - 1} (the model has {n}), got {chosen}")
    return chosen


def token_labels(lm: LM, ids: List[int]) -> List[str]:
    """Readable token strings for axis labels: each token decoded alone (spaces as "␣", newlines as
    "\\n"); the raw vocabulary entry for a byte piece that does not decode alone."""
    raw = lm.tokenizer.tokens(ids)
    labels = []
    for i, token in zip(ids, raw):
        text = lm.tokenizer.decode([i])
        labels.append(token if "\ufffd" in text or not text else text.replace(" ", "␣").replace("\n", "\\n"))
    return labels


def _draw_head(ax: Any, weights: torch.Tensor, labels: List[str], title: str) -> Any:
    image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=9)
    return image


# ---- lm-evaluation-harness ----------------------------------------------------------------------
def evaluate(lm_or_run: Union[LM, PathLike], tasks: Union[str, Sequence[str]], num_fewshot: Optional[int] = None,
             limit: Optional[Union[int, float]] = None, batch_size: Optional[int] = None,
             include_path: Optional[PathLike] = None, seed: int = 0) -> Dict[str, Dict[str, Any]]:
    """lm-eval's tasks on an LM, a run folder or a run's timestamp: {task: {metric: value}}
    (train/lm_eval_adapter.py). For a run, the whole results JSON is also written beside it
    (run folder/eval/{date}.json). Local tasks (eval_tasks/: ptb_next_word, ptb_perplexity) need no network."""
    from train.lm_eval_adapter import check_eval_request
    from train.lm_eval_adapter import evaluate as run_tasks
    check_eval_request(tasks, limit, num_fewshot, include_path)  # bad names or limits: before loading anything
    folder = None
    if not isinstance(lm_or_run, LM):
        folder = Path(lm_or_run).expanduser()
        folder = folder if folder.exists() else find_run_folder(str(lm_or_run))
        lm_or_run = get_model_by_path(folder, device="cuda" if torch.cuda.is_available() else "cpu")[0]
    return run_tasks(lm_or_run, tasks, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                     include_path=include_path, seed=seed, save_folder=folder)
