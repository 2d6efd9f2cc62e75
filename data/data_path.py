"""Where the data folder and the cache folder are.

Data folder (read-only is fine; nothing is ever written there), first match wins:
  1. an explicit path (`--data-path` / `LMDataModule(data_path=...)`),
  2. the environment variable `LM_DATA_PATH`,
  3. a `data-path.txt` file at the repository root,
  4. a `data-path.txt` file at `../../data-path.txt` relative to `main.py` (the repository root),
     so several checkouts side by side can share one.
A `data-path.txt` holds one path (`~` is expanded; a relative path is relative to the file's folder).

Cache folder (tokenizers and token ids): env `LM_CACHE_DIR`, default `~/.cache/lm-scaffold`.
"""
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_PATH_ENV = "LM_DATA_PATH"
CACHE_DIR_ENV = "LM_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/lm-scaffold"
DATA_PATH_FILE = "data-path.txt"

PathLike = Union[str, Path]


def data_path_files(repo_root: Path = REPO_ROOT) -> List[Path]:
    """The `data-path.txt` locations that are consulted, in order."""
    return [repo_root / DATA_PATH_FILE, repo_root.parent.parent / DATA_PATH_FILE]


def _read_data_path_file(path: Path) -> Optional[Path]:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            folder = Path(line).expanduser()
            return folder if folder.is_absolute() else (path.parent / folder).resolve()
    return None


def data_path_candidates(explicit: Optional[PathLike] = None,
                         repo_root: Path = REPO_ROOT) -> List[Tuple[str, Optional[Path]]]:
    """Every place a data folder can come from, in precedence order, as (description, path or None)."""
    candidates: List[Tuple[str, Optional[Path]]] = [
        ("--data-path", Path(explicit).expanduser() if explicit else None),
        (f"env {DATA_PATH_ENV}", Path(os.environ[DATA_PATH_ENV]).expanduser()
         if os.environ.get(DATA_PATH_ENV) else None),
    ]
    for file in data_path_files(repo_root):
        candidates.append((str(file), _read_data_path_file(file) if file.is_file() else None))
    return candidates


def _first_source(explicit: Optional[PathLike], repo_root: Path) -> Optional[Tuple[str, Path]]:
    """(description, path) of the first source that names a data folder, or None."""
    return next(((source, path) for source, path in data_path_candidates(explicit, repo_root)
                 if path is not None), None)


def find_data_path(explicit: Optional[PathLike] = None, repo_root: Path = REPO_ROOT) -> Optional[Path]:
    """The data folder by the precedence above, or None when nothing names one.

    The first source that names a folder wins even when the folder does not exist, so a typo
    in `--data-path` shows up as "looked in <typo>" instead of silently using another folder.
    """
    found = _first_source(explicit, repo_root)
    return found[1] if found else None


def describe_data_path(explicit: Optional[PathLike] = None, repo_root: Path = REPO_ROOT) -> str:
    """One line for error messages: which data folder is used and where it came from."""
    found = _first_source(explicit, repo_root)
    if found:
        return f"data folder {found[1]} (from {found[0]})"
    files = " or ".join(str(f) for f in data_path_files(repo_root))
    return (f"no data folder is set: pass --data-path, set {DATA_PATH_ENV}, "
            f"or write the folder's path into {files}")


def cache_dir(explicit: Optional[PathLike] = None) -> Path:
    """The cache folder: explicit, else env LM_CACHE_DIR, else ~/.cache/lm-scaffold (created)."""
    folder = Path(explicit or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder
