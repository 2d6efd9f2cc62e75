"""The saved-run format: one folder per run, written by `save_run`, read by `load_run`.

    {save_dir}/{config}/{task}/{run name}/{timestamp}/
        model.safetensors   the LM's weights (tied weights stored once)
        params.json         {"data_params", "model_params", "train_params": dicts; "sample_mode": the
                            layout of the training samples (model/sample_text.py); "argv": the command
                            line; "versions": packages; "git_commit", "git_dirty"; "run": names, timestamp}
        tokenizer.json      the tokenizer (the `tokenizers` library's format)
        train_stats.json    {metric: [[steps, samples, counter, value], ...]}  (see train/train_stats.py)
        final.json          {"val_loss", "val_losses" (per validation set), "test_loss", "interrupted",
                            "diverged", "steps", "samples", "elapsed_s", "tokens_per_s" (training
                            throughput), "weights_sha256"}, measured after training in eval mode
        checkpoints/last.ckpt   Lightning's training state, for `--resume` (a pickle: not read by load_run)

Nothing that `load_run` reads is a pickle. The folder is built under `{timestamp}.partial` (claimed when
the run starts, see train/save_dir.py) and renamed when complete, so a crash never leaves a folder that
looks whole. Every JSON file is strict JSON: a nan or inf is written as null, and the file's "nonfinite"
entry lists where, with the value (`[{"at": ["val_loss"], "value": "nan"}]`); the readers here put the
values back. A damaged file raises DamagedRunError naming the file and what is wrong with it.
"""
import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from safetensors.torch import load_model, save_model

from data.data_params import DataParams
from data.tokenizer import Tokenizer
from model.model_params import ModelParams
from train.runs import FILES
from train.save_dir import partial_folder
from train.train_params import TrainParams
from train.train_stats import TrainStats

PathLike = Union[str, Path]
PARAM_CLASSES = {"data_params": DataParams, "model_params": ModelParams, "train_params": TrainParams}
PACKAGES = ("torch", "lightning", "wandb", "transformers", "tokenizers", "datasets", "safetensors", "numpy")
REPO = Path(__file__).resolve().parents[1]
NONFINITE = "nonfinite"  # the key, in a JSON file, that lists where its nan / inf values were


class DamagedRunError(ValueError):
    """A saved run folder whose files are missing, truncated or not what they should be."""


class SavedRun(NamedTuple):
    lm: Any  # model.lm.LM, in eval mode
    tokenizer: Tokenizer
    train_stats: TrainStats
    params: Dict[str, Any]  # "data_params", "model_params", "train_params" (dataclasses), and the rest of params.json
    final: Dict[str, Any]


def save_run(folder: PathLike, lm: Any, data_params: DataParams, model_params: ModelParams,
             train_params: TrainParams, train_stats: TrainStats, final: Dict[str, Any],
             run_info: Optional[Dict[str, Any]] = None) -> Path:
    """Write the run folder atomically (built in `{folder}.partial`, which may already hold the
    checkpoints, then renamed). final.json gets "weights_sha256", the hash of model.safetensors.
    Returns the folder."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"run folder {folder} already exists: pick another save folder (timestamp)")
    tmp = partial_folder(folder)
    tmp.mkdir(parents=True, exist_ok=True)
    lm.tokenizer.save(tmp / "tokenizer.json")
    save_model(lm, str(tmp / "model.safetensors"))
    # safetensors creates the file readable by its owner only; give it the permissions of the other files
    os.chmod(tmp / "model.safetensors", os.stat(tmp / "tokenizer.json").st_mode & 0o777)
    params = {"data_params": dataclasses.asdict(data_params), "model_params": dataclasses.asdict(model_params),
              "train_params": dataclasses.asdict(train_params), "sample_mode": getattr(lm, "sample_mode", None),
              "run": run_info or {}, "argv": sys.argv,
              "versions": package_versions(), **git_state()}
    write_json(tmp / "params.json", params)
    write_json(tmp / "train_stats.json", {name: [list(e) for e in entries] for name, entries in train_stats.items()})
    write_json(tmp / "final.json", {**final, "weights_sha256": file_sha256(tmp / "model.safetensors")})
    os.replace(tmp, folder)
    return folder


def load_run(folder: PathLike, device: Union[str, torch.device] = "cpu") -> SavedRun:
    """(lm in eval mode, tokenizer, train_stats, params, final) of a saved run folder. Raises
    DamagedRunError naming the file when one is missing, truncated or unreadable."""
    from model.lm import LM  # here so that reading params.json alone needs no model code
    from model.decoding.sample_text import sample_mode_of_saved_run

    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        hint = " (it is still being written, or its run crashed)" if folder.name.endswith(".partial") else ""
        raise FileNotFoundError(f"{folder} is not a complete saved run{hint}: missing {', '.join(missing)}")
    params = read_params(folder)
    final = read_final(folder)
    train_stats = read_train_stats(folder)
    try:
        tokenizer = Tokenizer.load(folder / "tokenizer.json")
    except Exception as error:  # the tokenizers library raises its own exception type
        raise DamagedRunError(f"{folder / 'tokenizer.json'} is damaged: {error}") from error
    weights = folder / "model.safetensors"
    problem = safetensors_problem(weights)
    if problem:
        raise DamagedRunError(f"{weights} is damaged: {problem}")
    lm = LM(params["model_params"], tokenizer, sample_mode=sample_mode_of_saved_run(params))
    try:
        load_model(lm, str(weights), device=str(device))
    except RuntimeError as error:  # names or shapes that do not fit params.json's model
        raise DamagedRunError(f"{weights} does not fit the model params.json describes: {error}") from error
    lm.to(device).eval()
    return SavedRun(lm, tokenizer, train_stats, params, final)


def run_folder_problem(folder: PathLike, hash_up_to_bytes: int = 0) -> Optional[str]:
    """Why a run folder cannot be loaded ("params.json: not valid JSON ...", "model.safetensors is
    truncated ...", a tensor whose shape is not the one params.json's model has), or None when it looks
    sound. Quick: reads the JSON files, the tokenizer and the weights' header (not the tensors); the weights
    are hashed against final.json's weights_sha256 only when the file has at most `hash_up_to_bytes`."""
    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        params = read_params(folder, warn=False)
        final = read_final(folder)
        read_train_stats(folder)
    except DamagedRunError as error:
        return str(error).replace(f"{folder}/", "")
    try:
        tokenizer = Tokenizer.load(folder / "tokenizer.json")
    except Exception as error:  # the tokenizers library raises its own exception type
        return f"tokenizer.json is damaged: {error}"
    weights = folder / "model.safetensors"
    problem = safetensors_problem(weights)
    if problem:
        return f"model.safetensors is damaged: {problem}"
    problem = shapes_problem(weights, params, tokenizer)
    if problem:
        return problem
    return weights_hash_problem(folder, final) if weights.stat().st_size <= hash_up_to_bytes else None


def shapes_problem(weights: Path, params: Dict[str, Any], tokenizer: Tokenizer) -> Optional[str]:
    """Whether the tensors in the weights' header are those of the model params.json describes (built on
    the meta device: no memory, no init), or None. Tied tensors are stored once: one name of each is enough."""
    from safetensors import safe_open

    from model.lm import LM
    try:
        with torch.device("meta"):
            lm = LM(params["model_params"], tokenizer)
    except Exception as error:  # params.json's model params that build no model
        return f"params.json's model_params build no model: {type(error).__name__}: {error}"
    with safe_open(str(weights), framework="pt") as f:
        stored = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    groups: Dict[int, List[str]] = {}  # tensors of the model by identity (tied weights: one entry, several names)
    expected: Dict[str, List[int]] = {}
    for name, tensor in lm.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
        expected[name] = list(tensor.shape)
    problems = [f"{name} is {stored[name]} in model.safetensors, {expected[name]} in the model params.json describes"
                for name in stored if name in expected and stored[name] != expected[name]]
    problems += [f"model.safetensors has {name}, which the model params.json describes lacks"
                 for name in stored if name not in expected]
    problems += [f"model.safetensors lacks {names[0]}" for names in groups.values()
                 if not any(name in stored for name in names)]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return "model.safetensors does not fit params.json: " + "; ".join(problems[:3]) + more
    return None


def safetensors_problem(path: Path) -> Optional[str]:
    """What is wrong with a .safetensors file's layout (an 8-byte header size, a JSON header, then the
    tensor bytes it lists), or None. Catches truncated and overwritten files without reading the tensors."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if size < 8 or header_len > size - 8:
                return f"truncated or not a safetensors file ({size} bytes; its header says {header_len} + 8)"
            header = json.loads(f.read(header_len))
    except (OSError, ValueError) as error:
        return f"unreadable header ({error})"
    if not isinstance(header, dict):
        return "its header is not a table of tensors"
    ends = [info["data_offsets"][1] for name, info in header.items()
            if name != "__metadata__" and isinstance(info, dict) and "data_offsets" in info]
    data_len = size - 8 - header_len
    if ends and max(ends) != data_len:
        return (f"truncated: its header lists {max(ends)} bytes of tensors, the file holds {data_len}"
                if max(ends) > data_len else f"{data_len - max(ends)} bytes more than its header lists")
    return None


def weights_hash_problem(folder: PathLike, final: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """Why model.safetensors is not the file the run saved (its sha256 differs from final.json's
    "weights_sha256": bit flips, an overwrite), or None. Runs saved before the hash was recorded pass."""
    folder = Path(folder)
    expected = (final if final is not None else read_final(folder)).get("weights_sha256")
    if not expected:
        return None
    digest = file_sha256(folder / "model.safetensors")
    if digest == expected:
        return None
    return (f"model.safetensors (sha256 {digest[:12]}...) is not the file the run saved (final.json's "
            f"weights_sha256 {str(expected)[:12]}...): the weights were changed or damaged since")


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: PathLike) -> Any:
    """A JSON file written by write_json, with its nan / inf values put back. DamagedRunError when the
    file is not valid JSON (truncated, edited by hand)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise DamagedRunError(f"{path} is not UTF-8 text ({error})") from error
    except json.JSONDecodeError as error:
        raise DamagedRunError(f"{path} is not valid JSON: {error.msg} at line {error.lineno} column "
                              f"{error.colno} (truncated or edited?)") from error
    if isinstance(obj, dict) and isinstance(obj.get(NONFINITE), list):
        for entry in obj.pop(NONFINITE):
            try:
                _set_at(obj, entry["at"], float(entry["value"]))
            except (KeyError, IndexError, TypeError, ValueError) as error:
                raise DamagedRunError(f"{path}: its {NONFINITE!r} entry {entry!r} does not fit the file") from error
    return obj


def read_train_stats(folder: PathLike) -> TrainStats:
    """train_stats.json of a run folder: {metric: [(steps, samples, counter, value), ...]}."""
    path = Path(folder) / "train_stats.json"
    raw = read_json(path)
    try:
        return {name: [tuple(e) for e in entries] for name, entries in raw.items()}
    except (AttributeError, TypeError) as error:
        raise DamagedRunError(f"{path} is not a table of metrics ({error})") from error


def read_final(folder: PathLike) -> Dict[str, Any]:
    """final.json of a run folder: final val / test losses, interrupted, diverged, steps, samples."""
    path = Path(folder) / "final.json"
    final = read_json(path)
    if not isinstance(final, dict):
        raise DamagedRunError(f"{path} should hold a JSON object, not {type(final).__name__}")
    return final


def read_params(folder: PathLike, warn: bool = True) -> Dict[str, Any]:
    """params.json with data_params, model_params and train_params as dataclasses. New fields take their
    defaults. Fields this code does not know (saved by a newer version, or by an edited copy of the code)
    are kept in params["unknown_fields"] ({"model_params": {name: value}, ...}) and reported."""
    path = Path(folder) / "params.json"
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DamagedRunError(f"{path} should hold a JSON object, not {type(raw).__name__}")
    params = dict(raw)
    unknown_fields: Dict[str, Dict[str, Any]] = {}
    for key, cls in PARAM_CLASSES.items():
        known = {f.name for f in dataclasses.fields(cls)}
        values = raw.get(key, {})
        if not isinstance(values, dict):
            raise DamagedRunError(f"{path}: {key} should be a JSON object, not {type(values).__name__}")
        unknown = {k: v for k, v in values.items() if k not in known}
        if unknown:
            unknown_fields[key] = unknown
        params[key] = cls(**{k: v for k, v in values.items() if k in known})
    params["unknown_fields"] = unknown_fields
    if unknown_fields and warn:
        listed = "; ".join(f"{PARAM_CLASSES[key].__name__}: {', '.join(f'{k}={v!r}' for k, v in fields.items())}"
                           for key, fields in unknown_fields.items())
        warnings.warn(f"{path} has fields unknown to this version of the code (saved by a newer version, or "
                      f"by an edited copy of it), kept in params['unknown_fields'] but not applied: {listed}")
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


def write_json(path: PathLike, obj: Any) -> None:
    """Write strict JSON (no NaN / Infinity, which json.dumps writes by default and other readers
    refuse): each non-finite float becomes null, listed with its value under "nonfinite"."""
    clean, nonfinite = strict_json(obj)
    if nonfinite and isinstance(clean, dict):
        clean[NONFINITE] = nonfinite
    Path(path).write_text(json.dumps(clean, indent=1, allow_nan=False) + "\n")


def strict_json(obj: Any) -> Tuple[Any, List[Dict[str, Any]]]:
    """(obj as plain JSON values with nan / inf replaced by None, [{"at": [keys], "value": "nan"}, ...])."""
    nonfinite: List[Dict[str, Any]] = []

    def clean(value: Any, at: List[Any]) -> Any:
        if torch.is_tensor(value):
            value = value.tolist()
        if isinstance(value, float) and not math.isfinite(value):
            nonfinite.append({"at": at, "value": repr(value)})
            return None
        if isinstance(value, dict):
            return {str(k): clean(v, at + [str(k)]) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [clean(v, at + [i]) for i, v in enumerate(value)]
        if isinstance(value, Path):
            return str(value)
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        raise TypeError(f"cannot write {type(value).__name__} to JSON: {value!r}")

    return clean(obj, []), nonfinite


def _set_at(obj: Any, at: List[Any], value: Any) -> None:
    for key in at[:-1]:
        obj = obj[key]
    obj[at[-1]] = value
