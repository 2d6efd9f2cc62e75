"""Where runs are saved: checked before any training, and each run's folder claimed atomically at its start.

Kept free of torch so that main.py can check `--save-dir` before the first run starts. The folder
format itself belongs to train/run_folder.py.
"""
import os
import shutil
from pathlib import Path
from typing import Union

PathLike = Union[str, Path]
PARTIAL = ".partial"  # a run folder is built under {folder}.partial and renamed when complete
MIN_FREE_BYTES = 16 * 2 ** 20  # below this the disk counts as full before the run has written anything


def partial_folder(folder: PathLike) -> Path:
    """Where a run folder is built until it is complete (checkpoints live there during training)."""
    folder = Path(folder)
    return folder.with_name(folder.name + PARTIAL)


def check_save_dir(save_dir: PathLike, need_bytes: int = MIN_FREE_BYTES) -> None:
    """Raise ValueError saying why runs cannot be saved under `save_dir`: a file in the way, a virtual file
    system (/sys, /proc), a read-only file system, no write permission, or less than `need_bytes` free.
    Creates nothing."""
    save_dir = Path(save_dir).expanduser()
    existing = save_dir
    while not existing.exists() and existing.parent != existing:  # folders are created from here down
        existing = existing.parent
    where = f"cannot save runs under {save_dir}"
    if not existing.is_dir():
        raise ValueError(f"{where}: {existing} is a file, not a folder. Give --save-dir a folder.")
    stats = os.statvfs(existing)
    if stats.f_blocks == 0:  # sysfs, procfs and the like: "writable" to root, but no file can be made there
        raise ValueError(f"{where}: {existing} is on a virtual file system (such as /sys or /proc) that holds no "
                         "saved files. Give --save-dir a folder on a disk.")
    if stats.f_flag & os.ST_RDONLY:
        raise ValueError(f"{where}: {existing} is on a read-only file system. Give --save-dir a folder you can "
                         "write to.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{where}: {existing} is not writable by this user. Give --save-dir a folder you can "
                         "write to.")
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        raise ValueError(f"{where}: the disk holding {existing} has {free / 2 ** 20:.1f} MiB free, the run needs "
                         f"about {need_bytes / 2 ** 20:.1f} MiB (weights and checkpoint). Free some space or "
                         "give another --save-dir.")


def claim(folder: PathLike) -> bool:
    """Create `{folder}.partial` if neither it nor `folder` exists. os.mkdir is atomic, so of several
    runs (processes) claiming the same name, exactly one gets True. Raises ValueError if the folder
    cannot be created (permissions, a file in the way)."""
    folder = Path(folder)
    partial = partial_folder(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(partial)
        except FileExistsError:
            return False
    except OSError as error:  # includes a file where a folder should be
        raise ValueError(f"cannot create the save folder {partial}: {error.strerror or error}. "
                         "Give --save-dir a folder you can write to.") from error
    if folder.exists():  # a run that claimed this name earlier has finished and renamed its folder
        os.rmdir(partial)
        return False
    return True


def release(folder: PathLike) -> None:
    """Remove a claimed `{folder}.partial` if nothing was written into it (a run that failed while setting up)."""
    try:
        partial_folder(folder).rmdir()
    except OSError:
        pass
