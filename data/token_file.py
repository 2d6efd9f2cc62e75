"""One split's token ids on disk, memory-mapped: the cache format that lets corpora exceed RAM.

    {name}.bin          `<eos> line1 <eos> line2 <eos> ...` as one flat array of uint16 (when every
                        id fits, i.e. vocab_size <= 65536) or uint32
    {name}.lengths.bin  int64 [n_lines]: the number of tokens of each line (its <eos> not counted)

Stream samples are windows of the .bin file as it is; a lines-mode sample `<eos> line <eos>` is one
contiguous stretch of it too, so batches are read straight from the map (data/token_windows.py) and
the split never has to be in memory. Writing streams the lines through the `tokenizers` batch
encoder (parallel in Rust) a chunk at a time.
"""
import itertools
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .samples import Ragged
from .tokenizer import Tokenizer

CHUNK_CHARS = 1 << 20  # characters of text tokenized per encoder call (1 Mi): bounds the memory used


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class TokenFile:
    """A tokenized split in the cache folder (see the module docstring). The map is opened on first
    use and not pickled, so datasets built on it are cheap to send to other processes."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype):
        self.folder, self.name, self.dtype = Path(folder), name, np.dtype(dtype)
        self._tokens: Optional[np.memmap] = None
        self._lengths: Optional[np.ndarray] = None

    @property
    def bin_path(self) -> Path:
        return self.folder / f"{file_stem(self.name)}.bin"

    @property
    def lengths_path(self) -> Path:
        return self.folder / f"{file_stem(self.name)}.lengths.bin"

    @property
    def tokens(self) -> np.ndarray:
        """The whole `<eos> line <eos> ...` array, memory-mapped read-only."""
        if self._tokens is None:
            self._tokens = np.memmap(self.bin_path, dtype=self.dtype, mode="r")
        return self._tokens

    @property
    def line_lengths(self) -> np.ndarray:
        if self._lengths is None:
            self._lengths = (np.memmap(self.lengths_path, dtype=np.int64, mode="r")
                             if self.lengths_path.stat().st_size else np.zeros(0, dtype=np.int64))
        return self._lengths

    def __len__(self) -> int:
        """Number of lines."""
        return len(self.line_lengths)

    def line_starts(self) -> np.ndarray:
        """int64 [n_lines]: where each line's first token sits in `tokens` (after its leading <eos>)."""
        lengths = np.asarray(self.line_lengths, dtype=np.int64)
        return np.cumsum(lengths + 1) - lengths

    def ragged(self) -> Ragged:
        """The lines' ids in memory (without the <eos> separators), for the in-memory sample builders."""
        lengths = torch.from_numpy(np.array(self.line_lengths, dtype=np.int64))
        line_of = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        positions = torch.arange(int(offsets[-1])) + line_of + 1  # token k sits after k's line's eos
        ids = torch.from_numpy(np.asarray(self.tokens[positions.numpy()], dtype=np.int32))
        return Ragged(ids, offsets)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None, "_lengths": None}

    def __repr__(self) -> str:
        return f"TokenFile({self.bin_path}, {len(self.tokens)} tokens as {self.dtype.name})"


def file_stem(name: str) -> str:
    """A split name such as "val:main" as a file name."""
    return name.replace(":", "-")


def chunks_of_text(lines: Iterable[str], max_chars: int = CHUNK_CHARS) -> Iterator[List[str]]:
    """Consecutive lists of lines of about `max_chars` characters each."""
    chunk: List[str] = []
    size = 0
    for line in lines:
        chunk.append(line)
        size += len(line) + 1
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def encode_chunk(tokenizer: Tokenizer, lines: List[str]) -> Tuple[np.ndarray, np.ndarray]:
    """(ids of all lines, each followed by <eos>, as int64; the lines' lengths without their <eos>).
    The one place where split text is tokenized: `encode_batch_fast` runs on all cores."""
    encodings = tokenizer.hf.encode_batch_fast(lines, add_special_tokens=False)
    lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(lines))
    eos = [tokenizer.eos_id]
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain(e.ids, eos) for e in encodings),
                       dtype=np.int64, count=int(lengths.sum()) + len(lines))
    return flat, lengths


def write_token_file(folder: Path, name: str, lines: Iterable[str], tokenizer: Tokenizer) -> Tuple[TokenFile, int]:
    """Tokenize `lines` a chunk at a time into `{folder}/{name}.bin` + `.lengths.bin` (memory use:
    one chunk). Returns the TokenFile and the number of lines."""
    dtype = token_dtype(tokenizer.vocab_size)
    token_file = TokenFile(folder, name, dtype)
    n_lines = 0
    with open(token_file.bin_path, "wb") as out, open(token_file.lengths_path, "wb") as out_lengths:
        np.array([tokenizer.eos_id], dtype=dtype).tofile(out)
        for chunk in chunks_of_text(lines):
            flat, lengths = encode_chunk(tokenizer, chunk)
            flat.astype(dtype).tofile(out)
            lengths.tofile(out_lengths)
            n_lines += len(lengths)
    return token_file, n_lines
