"""Trained tokenizers and token ids cached on disk, so the second run trains and tokenizes nothing.

Everything lives in the cache folder (env LM_CACHE_DIR, default ~/.cache/lm-scaffold), never in
the data folder:
  tokenizers/{task}-{kind}-{key}.json   key: hash of the training text + tokenizer settings
  tokens/{task}-{key}/                  key: hash of every split's text + the tokenizer itself;
                                        one memory-mapped token file per split (data/token_file.py)
Keys hash content, not file names or dates, so an edited data file or a changed split gets new
entries, and an unchanged one is found again. Deleting the folder is always safe.
"""
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable

import numpy as np
from lightning.fabric.utilities.rank_zero import rank_zero_only

from .line_sources import lines_fingerprint
from .token_file import TokenFile, token_dtype, write_token_file
from .tokenizer import Tokenizer

CACHE_VERSION = 2  # bump when the cached layout or the meaning of cached ids changes


def texts_fingerprint(texts: Dict[str, Iterable[str]]) -> str:
    """sha256 of named splits of lines (lists or lazy sources, see data/line_sources.py)."""
    h = hashlib.sha256()
    for name in sorted(texts):
        h.update(f"{name}\0{lines_fingerprint(texts[name])}\0".encode())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's full definition (its tokenizer.json)."""
    return hashlib.sha256(tokenizer.hf.to_str().encode()).hexdigest()


def _key(**parts) -> str:
    return hashlib.sha256(json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True).encode()).hexdigest()[:20]


def cache_label(name: str) -> str:
    """A task name as the start of a cache file name ("hf:user/set:cfg" -> "hf_user_set_cfg")."""
    return re.sub(r"[^\w.\-]", "_", name)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file, so a crash or a parallel run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@rank_zero_only
def say(message: str) -> None:
    """Print, in the process of global rank 0 only: under DDP every rank tokenizes a cold cache (the first
    to finish stores it), and one report is enough. Lightning reads the rank from the launcher's
    environment (RANK, LOCAL_RANK, SLURM_PROCID) when it is imported, before any process group exists."""
    print(message, flush=True)


def cached_tokenizer(train: Callable[[], Tokenizer], train_texts: Dict[str, Iterable[str]], settings: dict,
                     label: str, cache_dir: Path) -> Tokenizer:
    """Load the tokenizer that `train()` would build from `train_texts` with `settings`, or build
    and store it."""
    key = _key(texts=texts_fingerprint(train_texts), **settings)
    path = cache_dir / "tokenizers" / f"{cache_label(label)}-{settings.get('kind', 'tok')}-{key}.json"
    if path.is_file():
        try:
            return Tokenizer.load(path)
        except Exception as e:  # a damaged cache entry: rebuild it
            print(f"ignoring unreadable cached tokenizer {path}: {e}")
    tokenizer = train()
    _atomic_write(path, lambda tmp: tokenizer.hf.save(tmp))
    return tokenizer


def cached_token_files(texts: Dict[str, Iterable[str]], tokenizer: Tokenizer, label: str,
                       cache_dir: Path) -> Dict[str, TokenFile]:
    """The memory-mapped token file of every named split, from the cache or tokenized once (streamed,
    a chunk at a time) and stored. The folder is written under a temporary name and renamed when
    complete, so a crash or a parallel run never leaves a half-written entry."""
    key = _key(texts=texts_fingerprint(texts), tokenizer=tokenizer_fingerprint(tokenizer))
    folder = cache_dir / "tokens" / f"{cache_label(label)}-{key}"
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            files = {name: TokenFile(folder, name, np.dtype(meta["dtype"])) for name in texts}
            if all(len(f.tokens) == meta["n_tokens"][name] for name, f in files.items()):
                return files
            print(f"ignoring incomplete token cache {folder}")
        except Exception as e:
            print(f"ignoring unreadable token cache {folder}: {e}")
        shutil.rmtree(folder, ignore_errors=True)  # the damaged entry; a complete one replaces it below
    say(f"tokenizing {label} ({', '.join(texts)}); caching the ids in {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        start, n_tokens, summary, dtype = time.perf_counter(), {}, [], token_dtype(tokenizer.vocab_size)
        for name, lines in texts.items():
            token_file, n_lines = write_token_file(tmp, name, lines, tokenizer)
            n_tokens[name] = len(token_file.tokens)
            summary.append(f"{name}: {n_lines} lines, {n_tokens[name]} tokens")
        (tmp / "meta.json").write_text(json.dumps({"task": label, "dtype": dtype.name, "n_tokens": n_tokens}))
        try:
            os.replace(tmp, folder)
        except OSError:  # a parallel run (another DDP rank, a sweep) stored the same entry first: keep
            pass  # it, never delete it, as that run may be reading it right now
        say(f"tokenized {'; '.join(summary)} in {time.perf_counter() - start:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: TokenFile(folder, name, dtype) for name in texts}
