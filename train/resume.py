"""--resume: find the checkpoint, and refuse one that cannot continue this run, before any training.

A checkpoint is read with torch.load(weights_only=True): plain tensors and containers only, so a
file from elsewhere cannot run code while it loads. Lightning reads it again the same way
(`trainer.fit(..., weights_only=True)` in train/run.py).
"""
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from data.data_params import DataParams
from data.tokenizer import Tokenizer
from model.model_params import ModelParams
from train.run_folder import find_checkpoint
from train.save_dir import PARTIAL, partial_folder

PathLike = Union[str, Path]


def tokenizer_sha256(tokenizer: Tokenizer) -> str:
    """A fingerprint of the vocabulary (token -> id): equal for tokenizers that give the same ids."""
    vocab = sorted(tokenizer.hf.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


def run_identity(data_params: DataParams, tokenizer: Tokenizer) -> Dict[str, Any]:
    """What a checkpoint must share with a run that resumes from it (stored in the checkpoint)."""
    return {"task": data_params.dataset_name, "data_params": dataclasses.asdict(data_params),
            "tokenizer_sha256": tokenizer_sha256(tokenizer), "vocab_size": tokenizer.vocab_size}


def unfinished_run_folder(path: PathLike) -> Optional[Path]:
    """The folder of a killed run that `--resume path` continues, when that run was never finished: path
    is its `{folder}.partial`, a checkpoint in it, or the `{folder}` "saving to ..." printed while only
    `{folder}.partial` exists. The resumed run then finishes into that folder (train/run.py), so no
    `.partial` is left behind. None for a finished run's folder or a checkpoint elsewhere."""
    path = Path(path)
    if path.is_file() and path.parent.name == "checkpoints":
        path = path.parent.parent
    if path.name.endswith(PARTIAL) and path.is_dir():
        folder = path.with_name(path.name[:-len(PARTIAL)])
    elif not path.exists() and partial_folder(path).is_dir():
        folder = path
    else:
        return None
    return None if folder.exists() else folder


def checked_checkpoint(path: PathLike, data_params: DataParams, model_params: ModelParams,
                       tokenizer: Tokenizer) -> Path:
    """The checkpoint `--resume path` names (a run folder, the folder "saving to ..." printed, or a .ckpt),
    after checking that it is a checkpoint of this project whose task, data params, tokenizer and model
    match this run's. Raises ValueError saying what differs."""
    ckpt = find_checkpoint(path)
    flag = f"--resume {path}"
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # not a zip / pickle, truncated, or holding objects other than tensors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{flag}: {ckpt} is not a Lightning checkpoint this project can read ({reason}). Give the "
                         "run folder that \"saving to ...\" printed, or its checkpoints/last.ckpt.") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "lm_trainer" not in checkpoint:
        raise ValueError(f"{flag}: {ckpt} is not a checkpoint of a run of this project (no training state in it). "
                         "Give the run folder that \"saving to ...\" printed, or its checkpoints/last.ckpt.")
    state = checkpoint["lm_trainer"]
    differences: List[str] = []
    saved_model, model = state.get("model_params", {}), dataclasses.asdict(model_params)
    differences += [f"ModelParams.{k}: checkpoint {saved_model.get(k)!r}, this run {v!r}"
                    for k, v in model.items() if k in saved_model and saved_model[k] != v]
    saved_run, current = state.get("run"), run_identity(data_params, tokenizer)
    if saved_run is not None:
        if saved_run["task"] != current["task"]:
            differences.append(f"task: checkpoint {saved_run['task']!r}, this run {current['task']!r}")
        saved_data = saved_run["data_params"]
        differences += [f"DataParams.{k}: checkpoint {saved_data.get(k)!r}, this run {v!r}"
                        for k, v in current["data_params"].items()
                        if k != "dataset_name" and k in saved_data and saved_data[k] != v]
        if saved_run["tokenizer_sha256"] != current["tokenizer_sha256"]:
            differences.append(f"tokenizer: the checkpoint's vocabulary ({saved_run['vocab_size']} ids) is not this "
                               f"run's ({current['vocab_size']} ids)")
    else:  # written before checkpoints recorded the run: the vocabulary size is all there is to compare
        embedding = checkpoint["state_dict"].get("model.embedding.weight")
        if embedding is not None and embedding.shape[0] != tokenizer.vocab_size:
            differences.append(f"tokenizer: the checkpoint's vocabulary has {embedding.shape[0]} ids, this run's "
                               f"{tokenizer.vocab_size}")
    if differences:
        raise ValueError(f"{flag}: the checkpoint {ckpt} cannot continue this run:\n  " + "\n  ".join(differences)
                         + "\nResume with the config (and --task, --set) the checkpoint was trained with.")
    return ckpt
