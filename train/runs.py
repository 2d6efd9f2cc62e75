"""Where runs live and what they are called: ONE place for the save root, run names, timestamps and
finding run folders. main.py names runs with it, train/ saves under it, model_explorer.py,
run_comparison.py and pretrained.py find runs with it.

    {save root}/{config}/{task}/{run name or "default"}/{timestamp}/     (timestamp: TIMESTAMP_FORMAT)

The save root: `--save-dir`, else $LM_SAVE_DIR (read at each call, so a notebook may set it after the
import), else `../saved-models` next to the repo (DEFAULT_SAVE_DIR).
"""
import argparse
import difflib
import hashlib
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from train.save_dir import claim

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SAVE_DIR = REPO.parent / "saved-models"  # when neither --save-dir nor $LM_SAVE_DIR says otherwise
MAIN_PROJ = "base"  # wandb projects are named f"{MAIN_PROJ}-{config}-{task}"
TIMESTAMP_FORMAT = "%Y-%m-%d--%H-%M-%S"  # a "-1", "-2" suffix may follow (runs started in the same second)
TIMESTAMP_LEN = len("2024-04-22--16-17-00")

PathLike = Union[str, Path]
# the files of a complete run folder (their format: train/run_folder.py)
FILES = ("model.safetensors", "params.json", "tokenizer.json", "train_stats.json", "final.json")


def save_root(save_dir: Optional[PathLike] = None) -> Path:
    """save_dir, else $LM_SAVE_DIR (read now), else DEFAULT_SAVE_DIR."""
    return Path(save_dir or os.environ.get("LM_SAVE_DIR") or DEFAULT_SAVE_DIR).expanduser()


def parse_timestamp(stamp: str) -> Optional[datetime]:
    """The time a run's timestamp names (its -1, -2 suffix ignored), or None when it is not one."""
    try:
        return datetime.strptime(stamp[:TIMESTAMP_LEN], TIMESTAMP_FORMAT)
    except ValueError:
        return None


# ---- naming runs ------------------------------------------------------------------------------
class Namer:
    """Names one run: its wandb project, its wandb run name and its save folder.

    Holds the run's params, the command-line args, `config_name` (the run's config file without
    .txt: with --config=test, "test-nlp" or "test-synth"), `timestamp` (its start, unique in the
    process) and `varying` (the fields swept in this run's config, plus "ablation" with --ablate
    -> their values here). Edit `run_name` to name runs your way.
    """

    _timestamps_taken: set = set()  # timestamps given out in this process, so each run gets its own

    def __init__(self, data_params: Any, model_params: Any, train_params: Any, args: argparse.Namespace,
                 varying: Optional[Dict[str, Any]] = None, config_name: Optional[str] = None):
        self.data_params = data_params
        self.model_params = model_params
        self.train_params = train_params
        self.args = args
        self.varying: Dict[str, Any] = dict(varying or {})
        self.config_name: str = config_name or Path(str(getattr(args, "config", None) or "no-config")).stem
        self.timestamp: str = self._new_timestamp()
        self._save_folder: Optional[str] = None
        self._claimed = False  # claim_save_folder has created this run's {folder}.partial

    def wandb_proj_name(self) -> str:
        return (getattr(self.args, "wandb_proj_name", None)
                or safe_name(f"{MAIN_PROJ}-{self.config_name}-{self.data_params.dataset_name}"))

    def run_name(self) -> Optional[str]:
        """The wandb run name and the run part of the save folder. None (nothing swept) lets wandb
        pick a random name and saves under "default". To name runs your way, replace the return
        line, e.g. with: return f"relu-{self.model_params.relu_after_first}"
        """
        return name_from_varying(self.varying)

    def save_dir(self) -> Path:
        return save_root(getattr(self.args, "save_dir", None))

    def save_folder_name(self) -> str:
        """`{save_dir}/{config}/{task}/{run name or "default"}/{timestamp}`. Decided on the first call.
        Timestamps identify runs (model_explorer loads by timestamp), so if a run under the save dir
        already has this one, it gets a -1, -2, ... suffix (self.timestamp changes with it). A run that
        saves makes the name its own with claim_save_folder(), which may move to the next suffix."""
        if self._save_folder is None:
            save_dir = self.save_dir()
            if timestamp_on_disk(save_dir, self.timestamp):
                self.timestamp = self._claim_timestamp(self.timestamp[:TIMESTAMP_LEN], save_dir)
            run_name = self.run_name()
            run_folder = safe_name(run_name) if run_name else "default"
            task = safe_name(self.data_params.dataset_name)
            folder = save_dir / safe_name(self.config_name) / task / run_folder / self.timestamp
            self._save_folder = str(folder)
        return self._save_folder

    def claim_save_folder(self) -> str:
        """Claim the save folder when the run starts: create `{folder}.partial` exclusively (atomic), so
        that of several runs started in the same second, even in different processes, each keeps its
        own folder; while the name is taken, the next -1, -2, ... suffix. Returns the folder."""
        if self._claimed:
            return self.save_folder_name()
        while not claim(self.save_folder_name()):
            self._save_folder = None
            self.timestamp = self._claim_timestamp(self.timestamp[:TIMESTAMP_LEN], self.save_dir())
        self._claimed = True
        return self.save_folder_name()

    def finish_in(self, folder: PathLike) -> None:
        """Save into `folder`, the run folder of a killed run that this one resumes (its `{folder}.partial`
        already holds the checkpoint): the timestamp becomes that folder's, and nothing new is claimed."""
        self._save_folder, self.timestamp, self._claimed = str(folder), Path(folder).name, True

    @classmethod
    def _new_timestamp(cls) -> str:
        return cls._claim_timestamp(datetime.now().strftime(TIMESTAMP_FORMAT))

    @classmethod
    def _claim_timestamp(cls, base: str, save_dir: Optional[Path] = None) -> str:
        """`base`, or `base-1`, `base-2`, ... if this process gave it to another run or a saved run has it."""
        stamp, n = base, 0
        while stamp in cls._timestamps_taken or (save_dir and timestamp_on_disk(save_dir, stamp)):
            n += 1
            stamp = f"{base}-{n}"
        cls._timestamps_taken.add(stamp)
        return stamp


def timestamp_on_disk(save_dir: Path, timestamp: str) -> bool:
    return any(save_dir.glob(f"*/*/*/{timestamp}")) or any(save_dir.glob(f"*/*/*/{timestamp}.partial"))


def name_from_varying(varying: Dict[str, Any]) -> Optional[str]:
    """"n_layers=4,lr=0.0003" from the swept fields and their values; None when nothing is swept."""
    if not varying:
        return None
    return safe_name(",".join(f"{key}={format_value(value)}" for key, value in varying.items()))


def format_value(value: Any) -> str:
    """Short text for a value in a run name: 3e-4 -> "0.0003", "custom-transformer" as is, [64, 32] -> "64-32"."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(format_value(v) for v in value)
    return str(value)


def safe_name(name: str, max_len: int = 120) -> str:
    """Keep a run name usable as a folder name everywhere: no slashes, spaces or odd characters, not too long."""
    name = re.sub(r"[^\w.=,+\-]", "_", name)
    if len(name) > max_len:
        name = name[:max_len - 9] + "-" + hashlib.md5(name.encode()).hexdigest()[:8]
    return name


# ---- finding runs -----------------------------------------------------------------------------
def run_folders(save_dir: Optional[PathLike] = None, complete: bool = True) -> List[Path]:
    """Every run folder under the save root (folders still being written, `.partial`, are skipped);
    with complete=False also those that lack some of their files (damaged)."""
    root = save_root(save_dir)
    if not root.is_dir():
        return []
    found = {p.parent for name in ("final.json", "params.json") for p in root.rglob(name)}
    return sorted(f for f in found
                  if not f.name.endswith(".partial") and (not complete or all((f / name).is_file() for name in FILES)))


def find_run_folder(timestamp: str, save_dir: Optional[PathLike] = None) -> Path:
    """The one run folder named `timestamp` under the save root, whatever config/task/run name it is under."""
    root = save_root(save_dir)
    folders = run_folders(root)
    matches = [f for f in folders if f.name == timestamp]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = "\n  ".join(str(m) for m in matches)
        raise ValueError(f"timestamp {timestamp!r} is ambiguous: {len(matches)} runs under {root} have it:\n  "
                         f"{listed}\nLoad one with get_model_by_path(folder).")
    incomplete = [f for f in run_folders(root, complete=False) if f.name == timestamp]
    if incomplete:
        missing = [name for name in FILES if not (incomplete[0] / name).is_file()]
        raise FileNotFoundError(f"the run {incomplete[0]} cannot be loaded: it lacks {', '.join(missing)} "
                                f"(deleted or never written)")
    if not folders:
        raise FileNotFoundError(f"no saved run with timestamp {timestamp!r}: there are no saved runs under {root} "
                                f"(train with --save, or pass save_dir= the --save-dir you trained with)")
    by_name = {f.name: f for f in folders}
    nearest = "\n  ".join(f"{stamp}  ({by_name[stamp].relative_to(root).parent})"
                          for stamp in nearest_timestamps(timestamp, list(by_name)))
    raise FileNotFoundError(f"no saved run with timestamp {timestamp!r} under {root} ({len(folders)} runs there). "
                            f"Nearest:\n  {nearest}\nlist_runs() shows them all.")


def nearest_timestamps(timestamp: str, stamps: Sequence[str], n: int = 5) -> List[str]:
    """The `n` stamps closest in time to `timestamp` (closest in spelling when it is not a timestamp)."""
    target = parse_timestamp(timestamp)
    if target is None:
        return difflib.get_close_matches(timestamp, stamps, n=n, cutoff=0.0)
    dated = [(abs((t - target).total_seconds()), s) for s in stamps if (t := parse_timestamp(s)) is not None]
    return [s for _, s in sorted(dated)[:n]]
