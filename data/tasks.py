"""get_data: the one place that maps a `dataset_name` to its samples.

To add a dataset, add one branch to `get_data` that returns a `TaskData` (lines of text, split
into train / val / test, with the task's default tokenizer and sample mode). Files in
{data folder}/{name}/ (data.txt, or train.txt + valid.txt) and functions decorated `@registered`
in `syntheticdata.py` need no branch of their own.
"""
import difflib
from pathlib import Path
from typing import List, Optional, Union

from . import natural
from .data_params import DataParams
from .data_path import cache_dir as resolve_cache_dir
from .data_path import describe_data_path, find_data_path
from .syntheticdata import TASKS as SYNTHETIC_TASKS
from .syntheticdata import synthetic_task
from .task_data import TaskData
from .tokenizer import KINDS as TOKENIZER_KINDS

NATURAL_TASKS = ("ptb", "shakespeare", "tinyshakespeare", *natural.WIKITEXT_HUB)
SAMPLE_MODES = ("auto", "lines", "stream")


def get_data(data_params: DataParams, data_path: Optional[Union[str, Path]] = None,
             cache_dir: Optional[Union[str, Path]] = None) -> TaskData:
    """The samples of task `data_params.dataset_name` as text (see `TaskData`).

    `data_path` is the `--data-path` flag; None falls back to LM_DATA_PATH, then data-path.txt.
    `cache_dir` (default LM_CACHE_DIR or ~/.cache/lm-scaffold) holds what `datasets` downloads."""
    p = data_params
    check_data_params(p)
    name = p.dataset_name
    folder = find_data_path(data_path)
    where = describe_data_path(data_path)
    if name in SYNTHETIC_TASKS:
        return synthetic_task(p)
    if name == "ptb":
        return natural.ptb(folder, where, resolve_cache_dir(cache_dir))
    if name in ("shakespeare", "tinyshakespeare"):
        return natural.shakespeare(folder, where, p.val_frac, p.test_frac)
    if name in natural.WIKITEXT_HUB:
        return natural.wikitext(name, folder, where, resolve_cache_dir(cache_dir))
    if name.startswith("hf:"):
        return natural.hf_dataset(name[len("hf:"):], p.text_column, folder, resolve_cache_dir(cache_dir))
    if folder is not None and (folder / name).is_dir():
        return natural.custom_folder(folder / name, p.val_frac, p.test_frac, p.split_seed)
    raise ValueError(unknown_task_message(name, folder, where))


def check_task_name(name: str, data_path: Optional[Union[str, Path]] = None) -> None:
    """Raise the unknown-task ValueError unless `name` is a task `get_data` knows (files are not read)."""
    if name in SYNTHETIC_TASKS or name in NATURAL_TASKS:
        return
    if name.startswith("hf:"):  # a datasets dataset: found (or not) when the run loads it
        if not name[len("hf:"):].partition(":")[0]:
            raise ValueError('dataset_name="hf:" needs a dataset: "hf:NAME" or "hf:NAME:CONFIG" (a Hub id or a folder)')
        return
    folder = find_data_path(data_path)
    if folder is None or not (folder / name).is_dir():
        raise ValueError(unknown_task_message(name, folder, describe_data_path(data_path)))


def task_names(data_folder: Optional[Path] = None) -> List[str]:
    """Every dataset_name that works: built-in corpora, synthetic tasks, folders in the data folder."""
    return [*NATURAL_TASKS, *sorted(SYNTHETIC_TASKS), *natural.custom_task_names(data_folder), "hf:NAME[:CONFIG]"]


def unknown_task_message(name: str, folder: Optional[Path], where: str) -> str:
    names = task_names(folder)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"unknown dataset_name {name!r}.{hint} Valid names: {', '.join(names)}. "
            f"A custom task is a folder {{data folder}}/{name}/ holding data.txt (one sample per line) "
            f"or train.txt + valid.txt; {where}.")


def check_data_params(p: DataParams) -> None:
    """Raise a ValueError that names every bad setting (task-independent checks)."""
    problems = []
    if p.sample_mode not in SAMPLE_MODES:
        problems.append(f"sample_mode={p.sample_mode!r}: choose one of {', '.join(SAMPLE_MODES)}")
    if p.tokenizer not in ("auto", *TOKENIZER_KINDS) and not Path(p.tokenizer).expanduser().exists():
        problems.append(f"tokenizer={p.tokenizer!r}: choose one of auto, {', '.join(TOKENIZER_KINDS)}, "
                        "or give the path of a tokenizer.json (or of a folder holding one)")
    if p.max_seq_len < 1:
        problems.append(f"max_seq_len must be >= 1, got {p.max_seq_len}")
    if not 0 < p.val_frac < 1 or not 0 <= p.test_frac < 1 or p.val_frac + p.test_frac >= 1:
        problems.append(f"need 0 < val_frac, 0 <= test_frac and val_frac + test_frac < 1 "
                        f"(got {p.val_frac}, {p.test_frac})")
    if p.vocab_size < 3:
        problems.append(f"vocab_size must be >= 3, got {p.vocab_size}")
    if p.min_count < 0:
        problems.append(f"min_count must be >= 0, got {p.min_count}")
    for field in ("max_train_samples", "max_eval_samples"):
        value = getattr(p, field)
        if value is not None and value < 1:
            problems.append(f"{field} must be None or >= 1, got {value}")
    if problems:
        raise ValueError("bad DataParams: " + "; ".join(problems))
