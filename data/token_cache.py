"""Trained tokenizers and token ids cached on disk, so the second run trains and tokenizes nothing.

Everything lives in the cache folder (env LM_CACHE_DIR, default ~/.cache/lm-scaffold), never in
the data folder:
  tokenizers/{task}-{kind}-{key}.json   key: hash of the training text + tokenizer settings
  tokens/{task}-{key}.safetensors       key: hash of every split's text + the tokenizer itself
Keys hash content, not file names or dates, so an edited data file or a changed split gets new
entries, and an unchanged one is found again. Deleting the folder is always safe.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Dict, List

from safetensors.torch import load_file, save_file

from .samples import Ragged
from .tokenizer import Tokenizer

CACHE_VERSION = 1  # bump when the cached layout or the meaning of cached ids changes


def texts_fingerprint(texts: Dict[str, List[str]]) -> str:
    """sha256 of named lists of lines (names, counts and contents)."""
    h = hashlib.sha256()
    for name in sorted(texts):
        h.update(f"{name}\0{len(texts[name])}\0".encode())
        h.update("\n".join(texts[name]).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's full definition (its tokenizer.json)."""
    return hashlib.sha256(tokenizer.hf.to_str().encode()).hexdigest()


def _key(**parts) -> str:
    return hashlib.sha256(json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True).encode()).hexdigest()[:20]


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file, so a crash or a parallel run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def encode_ragged(tokenizer: Tokenizer, lines: List[str]) -> Ragged:
    """Tokenize lines (batched, in Rust) into one flat tensor. The only tokenization of split data."""
    return Ragged.from_lists(tokenizer(list(lines)) if lines else [])


def cached_tokenizer(train: Callable[[], Tokenizer], train_texts: Dict[str, List[str]], settings: dict,
                     label: str, cache_dir: Path) -> Tokenizer:
    """Load the tokenizer that `train()` would build from `train_texts` with `settings`, or build
    and store it."""
    key = _key(texts=texts_fingerprint(train_texts), **settings)
    path = cache_dir / "tokenizers" / f"{label}-{settings.get('kind', 'tok')}-{key}.json"
    if path.is_file():
        try:
            return Tokenizer.load(path)
        except Exception as e:  # a damaged cache entry: rebuild it
            print(f"ignoring unreadable cached tokenizer {path}: {e}")
    tokenizer = train()
    _atomic_write(path, lambda tmp: tokenizer.hf.save(tmp))
    return tokenizer


def cached_token_ids(texts: Dict[str, List[str]], tokenizer: Tokenizer, label: str,
                     cache_dir: Path) -> Dict[str, Ragged]:
    """The token ids of every named list of lines, from the cache or tokenized once and stored."""
    key = _key(texts=texts_fingerprint(texts), tokenizer=tokenizer_fingerprint(tokenizer))
    path = cache_dir / "tokens" / f"{label}-{key}.safetensors"
    if path.is_file():
        try:
            tensors = load_file(str(path))
            return {name: Ragged(tensors[f"{name}/ids"], tensors[f"{name}/offsets"]) for name in texts}
        except Exception as e:
            print(f"ignoring unreadable token cache {path}: {e}")
    print(f"tokenizing {label} ({', '.join(f'{n}: {len(t)} lines' for n, t in texts.items())}); "
          f"caching the ids in {path}")
    ragged = {name: encode_ragged(tokenizer, lines) for name, lines in texts.items()}
    tensors = {f"{name}/{field}": getattr(r, field).contiguous()
               for name, r in ragged.items() for field in ("ids", "offsets")}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"task": label}))
    return ragged
