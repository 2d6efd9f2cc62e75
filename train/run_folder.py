"""The saved-run format: one folder per run, written by `save_run`, read by `load_run`.

    {save_dir}/{config}/{task}/{run name}/{timestamp}/
        model.safetensors   the LM's weights (tied weights stored once)
        params.json         {"data_params", "model_params", "train_params": dicts; "sample_mode": the
                            layout of the training samples (model/sample_text.py); "argv": the command
                            line; "versions": packages; "git_commit", "git_dirty"; "run": names, timestamp}
        tokenizer.json      the tokenizer (the `tokenizers` library's format)
        train_stats.json    {metric: [[steps, samples, counter, value], ...]}  (see train/train_stats.py)
        final.json          {"val_loss", "val_losses" (per validation set), "test_loss", "interrupted",
                            "steps", "samples", "elapsed_s", "tokens_per_s" (training throughput)},
                            measured after training in eval mode
        checkpoints/last.ckpt   Lightning's training state, for `--resume` (a pickle: not read by load_run)

Nothing that `load_run` reads is a pickle. The folder is built under `{timestamp}.partial` and renamed
when complete, so a crash never leaves a folder that looks whole.
"""
import dataclasses
import json
import os
import platform
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Union

import torch
from safetensors.torch import load_model, save_model

from data.data_params import DataParams
from data.tokenizer import Tokenizer
from model.model_params import ModelParams
from train.train_params import TrainParams
from train.train_stats import TrainStats

PathLike = Union[str, Path]
FILES = ("model.safetensors", "params.json", "tokenizer.json", "train_stats.json", "final.json")
PARAM_CLASSES = {"data_params": DataParams, "model_params": ModelParams, "train_params": TrainParams}
PACKAGES = ("torch", "lightning", "wandb", "transformers", "tokenizers", "datasets", "safetensors", "numpy")
REPO = Path(__file__).resolve().parents[1]


class SavedRun(NamedTuple):
    lm: Any  # model.lm.LM, in eval mode
    tokenizer: Tokenizer
    train_stats: TrainStats
    params: Dict[str, Any]  # "data_params", "model_params", "train_params" (dataclasses), and the rest of params.json
    final: Dict[str, Any]


def partial_folder(folder: PathLike) -> Path:
    """Where a run folder is built until it is complete (checkpoints live there during training)."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".partial")


def save_run(folder: PathLike, lm: Any, data_params: DataParams, model_params: ModelParams,
             train_params: TrainParams, train_stats: TrainStats, final: Dict[str, Any],
             run_info: Optional[Dict[str, Any]] = None) -> Path:
    """Write the run folder atomically (built in `{folder}.partial`, which may already hold the
    checkpoints, then renamed). Returns the folder."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"run folder {folder} already exists: pick another save folder (timestamp)")
    tmp = partial_folder(folder)
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(lm, str(tmp / "model.safetensors"))
    lm.tokenizer.save(tmp / "tokenizer.json")
    params = {"data_params": dataclasses.asdict(data_params), "model_params": dataclasses.asdict(model_params),
              "train_params": dataclasses.asdict(train_params), "sample_mode": getattr(lm, "sample_mode", None),
              "run": run_info or {}, "argv": sys.argv,
              "versions": package_versions(), **git_state()}
    _write_json(tmp / "params.json", params)
    _write_json(tmp / "train_stats.json", {name: [list(e) for e in entries] for name, entries in train_stats.items()})
    _write_json(tmp / "final.json", final)
    os.replace(tmp, folder)
    return folder


def load_run(folder: PathLike, device: Union[str, torch.device] = "cpu") -> SavedRun:
    """(lm in eval mode, tokenizer, train_stats, params, final) of a saved run folder."""
    from model.lm import LM  # here so that reading params.json alone needs no model code
    from model.sample_text import sample_mode_of_saved_run

    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        hint = " (it is still being written, or its run crashed)" if folder.name.endswith(".partial") else ""
        raise FileNotFoundError(f"{folder} is not a complete saved run{hint}: missing {', '.join(missing)}")
    params = read_params(folder)
    tokenizer = Tokenizer.load(folder / "tokenizer.json")
    lm = LM(params["model_params"], tokenizer, sample_mode=sample_mode_of_saved_run(params))
    load_model(lm, str(folder / "model.safetensors"), device=str(device))
    lm.to(device).eval()
    return SavedRun(lm, tokenizer, read_train_stats(folder), params, read_final(folder))


def read_train_stats(folder: PathLike) -> TrainStats:
    """train_stats.json of a run folder: {metric: [(steps, samples, counter, value), ...]}."""
    raw = json.loads((Path(folder) / "train_stats.json").read_text())
    return {name: [tuple(e) for e in entries] for name, entries in raw.items()}


def read_final(folder: PathLike) -> Dict[str, Any]:
    """final.json of a run folder: final val / test losses, interrupted, steps, samples."""
    return json.loads((Path(folder) / "final.json").read_text())


def read_params(folder: PathLike) -> Dict[str, Any]:
    """params.json with data_params, model_params and train_params as dataclasses. Fields saved by an
    older version that no longer exist are dropped (with a warning); new fields take their defaults."""
    raw = json.loads((Path(folder) / "params.json").read_text())
    params = dict(raw)
    for key, cls in PARAM_CLASSES.items():
        known = {f.name for f in dataclasses.fields(cls)}
        values = raw.get(key, {})
        unknown = sorted(set(values) - known)
        if unknown:
            warnings.warn(f"{folder}: params.json has {cls.__name__} fields this code no longer knows, ignored: "
                          f"{', '.join(unknown)}")
        params[key] = cls(**{k: v for k, v in values.items() if k in known})
    return params


def find_checkpoint(path: PathLike) -> Path:
    """The checkpoint to resume from: a .ckpt file, or the last.ckpt inside a run folder."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / "checkpoints" / "last.ckpt", partial_folder(path) / "checkpoints" / "last.ckpt",
                      path / "last.ckpt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"--resume {path}: no checkpoint found (looked for {path}/checkpoints/last.ckpt and "
                            f"{path}/last.ckpt). Runs keep a checkpoint only when trained with --save.")


def package_versions() -> Dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_state() -> Dict[str, Any]:
    """{"git_commit": hash or None, "git_dirty": uncommitted changes?} of the repository."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if torch.is_tensor(obj):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")
