"""Samples read straight from a memory-mapped token file: corpora larger than RAM, flat memory.

`TokenWindows` gives exactly the samples and batches of the in-memory `TokenSamples` built by
`stream_samples` / `line_samples` (data/samples.py) from the same ids, but each batch reads only its
own rows from the map: stream samples are computed from their index (no per-sample array at all),
lines samples keep two int64 numbers per non-empty line.
"""
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .samples import Batch
from .token_file import TokenFile


class TokenWindows(Dataset):
    """Sample i is `tokens[start_i : start_i + length_i]` of a `TokenFile`.

    Stream mode (`starts is None`): start_i = i * max_seq_len, length_i = max_seq_len + 1 (the last
    window shorter). Lines mode: `starts` / `lengths` arrays (`<eos> line <eos>`, truncated)."""

    def __init__(self, token_file: TokenFile, pad_id: int, max_seq_len: int, n_samples: int,
                 starts: Optional[np.ndarray] = None, lengths: Optional[np.ndarray] = None):
        self.token_file, self.pad_id, self.max_seq_len, self.n_samples = token_file, pad_id, max_seq_len, n_samples
        self._starts, self._lengths = starts, lengths
        self.n_tokens = len(token_file.tokens)

    @classmethod
    def stream(cls, token_file: TokenFile, eos_id: int, max_seq_len: int) -> "TokenWindows":
        """Windows of max_seq_len + 1 tokens with stride max_seq_len over the whole split."""
        n_tokens = len(token_file.tokens)
        n_blocks = -(-(n_tokens - 1) // max_seq_len)  # ceil: the last window may be shorter
        return cls(token_file, eos_id, max_seq_len, n_blocks)

    @classmethod
    def lines(cls, token_file: TokenFile, eos_id: int, max_seq_len: int) -> "TokenWindows":
        """`<eos> line <eos>` for every non-empty line, truncated to max_seq_len + 1 tokens."""
        line_lengths = np.asarray(token_file.line_lengths, dtype=np.int64)
        non_empty = line_lengths > 0
        starts = (token_file.line_starts() - 1)[non_empty]
        lengths = np.minimum(line_lengths[non_empty] + 2, max_seq_len + 1)
        return cls(token_file, eos_id, max_seq_len, len(starts), starts, lengths)

    def _starts_and_lengths(self, idx: np.ndarray):
        if self._starts is None:
            starts = idx * self.max_seq_len
            return starts, np.minimum(self.n_tokens - starts, self.max_seq_len + 1)
        return self._starts[idx], self._lengths[idx]

    @property
    def lengths(self) -> Tensor:
        """The length of every sample (computed on demand: n_samples int64s)."""
        return torch.from_numpy(np.ascontiguousarray(self._starts_and_lengths(np.arange(self.n_samples))[1]))

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, i: int) -> Tensor:
        if not -self.n_samples <= i < self.n_samples:
            raise IndexError(f"sample {i} of {self.n_samples}")
        start, length = self._starts_and_lengths(np.array([i % self.n_samples]))
        return torch.from_numpy(self.token_file.tokens[start[0]:start[0] + length[0]].astype(np.int64))

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """The padded batch, as TokenSamples gives it: {"x_indices", "mask"}."""
        idx = np.asarray(indices, dtype=np.int64)
        starts, lengths = self._starts_and_lengths(idx)
        width = int(lengths.max())
        positions = np.minimum(starts[:, None] + np.arange(width), self.n_tokens - 1)
        x = torch.from_numpy(self.token_file.tokens[positions].astype(np.int64))
        mask = torch.arange(width) < torch.from_numpy(lengths)[:, None]
        return {"x_indices": x.masked_fill(~mask, self.pad_id), "mask": mask}

    def head(self, n: Optional[int]) -> "TokenWindows":
        """The first n samples (all when n is None)."""
        if n is None or n >= len(self):
            return self
        starts = None if self._starts is None else self._starts[:n]
        lengths = None if self._lengths is None else self._lengths[:n]
        return TokenWindows(self.token_file, self.pad_id, self.max_seq_len, n, starts, lengths)
