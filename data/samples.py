"""Token ids -> sample tensors -> batches, with no per-sample Python work.

Every split becomes a `TokenSamples`: one int tensor [n_samples, width] of right-padded rows
plus their lengths. A batch is one fancy-index into it. Layouts (L = max_seq_len):
  stream:    the split's stream `<eos> line1 <eos> line2 <eos> ...` cut into windows of L + 1 tokens
             with stride L (consecutive windows share one token), the last window shorter;
  lines:     `<eos> line <eos>` per non-empty line, truncated to L + 1 tokens;
  synthetic: `<eos> prompt target <eos>`; target_mask marks target and final `<eos>`.
"""
import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

Batch = Dict[str, Tensor]


def mycollate(samples: Sequence[Union[Sequence[int], Tensor]], pad_id: int = 0) -> Batch:
    """Pad a list of id sequences: {"x_indices": LongTensor [B, max_len] (right-padded with pad_id),
    "mask": BoolTensor [B, max_len], True on real tokens}. Pass `pad_id=tokenizer.pad_id` (0 is the
    pad id of every tokenizer trained here; GPT-2's is 50256)."""
    rows = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in samples]
    x = pad_sequence(rows, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(r) for r in rows])
    return {"x_indices": x, "mask": torch.arange(x.shape[1]) < lengths[:, None]}


@dataclass
class Ragged:
    """Many id sequences in one flat tensor: sequence i is ids[offsets[i]:offsets[i + 1]]."""
    ids: Tensor  # int32 [total]
    offsets: Tensor  # int64 [n + 1]

    @classmethod
    def from_lists(cls, lists: List[List[int]]) -> "Ragged":
        lengths = torch.tensor([len(ids) for ids in lists], dtype=torch.long)
        offsets = torch.zeros(len(lists) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        flat = torch.tensor(list(itertools.chain.from_iterable(lists)), dtype=torch.int32)
        return cls(flat, offsets)

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return len(self.offsets) - 1


class TokenSamples(Dataset):
    """Padded sample rows; `dataset[i]` is sample i's ids, `dataset.__getitems__(indices)` a batch.

    The DataLoader calls `__getitems__` with a whole batch of indices, which returns exactly what
    `mycollate([dataset[i] for i in indices], pad_id)` would, plus "target_mask" when the samples
    have targets (synthetic tasks with loss_on_targets_only)."""

    def __init__(self, ids: Tensor, lengths: Tensor, pad_id: int, target_start: Optional[Tensor] = None):
        self.ids, self.lengths, self.pad_id, self.target_start = ids, lengths, pad_id, target_start

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> Tensor:
        return self.ids[i, :self.lengths[i]].long()

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[idx]
        width = int(lengths.max())
        positions = torch.arange(width)
        mask = positions < lengths[:, None]
        batch = {"x_indices": self.ids[idx, :width].long().masked_fill(~mask, self.pad_id), "mask": mask}
        if self.target_start is not None:
            batch["target_mask"] = mask & (positions >= self.target_start[idx][:, None])
        return batch

    def head(self, n: Optional[int]) -> "TokenSamples":
        """The first n samples (all when n is None)."""
        if n is None or n >= len(self):
            return self
        starts = None if self.target_start is None else self.target_start[:n]
        return TokenSamples(self.ids[:n], self.lengths[:n], self.pad_id, starts)


def _place_rows(out: Tensor, rows: Ragged, first_col: Tensor) -> Tensor:
    """Write row i's ids into out[i] from column first_col[i] on; ids past the width are dropped."""
    row_of = torch.repeat_interleave(torch.arange(len(rows)), rows.lengths)
    col = torch.arange(len(rows.ids)) - rows.offsets[row_of] + first_col[row_of]
    keep = col < out.shape[1]
    out[row_of[keep], col[keep]] = rows.ids[keep]
    return out


def stream_samples(lines: Ragged, eos_id: int, max_seq_len: int) -> TokenSamples:
    """Windows of max_seq_len + 1 tokens (stride max_seq_len) over `<eos> line <eos> line <eos> ...`."""
    n_tokens = len(lines.ids) + len(lines) + 1
    n_blocks = -(-(n_tokens - 1) // max_seq_len)  # ceil: the last window may be shorter
    if n_blocks == 0:  # no lines at all
        no_rows = torch.zeros(0, max_seq_len + 1, dtype=torch.int32)
        return TokenSamples(no_rows, torch.zeros(0, dtype=torch.long), eos_id)
    stream = torch.full((n_blocks * max_seq_len + 1,), eos_id, dtype=torch.int32)
    line_of = torch.repeat_interleave(torch.arange(len(lines)), lines.lengths)
    stream[torch.arange(len(lines.ids)) + line_of + 1] = lines.ids  # token k of the split sits after k's line's eos
    blocks = stream.unfold(0, max_seq_len + 1, max_seq_len)  # a view: no copy
    lengths = (n_tokens - torch.arange(n_blocks) * max_seq_len).clamp(max=max_seq_len + 1)
    return TokenSamples(blocks, lengths, eos_id)


def line_samples(lines: Ragged, eos_id: int, max_seq_len: int) -> TokenSamples:
    """`<eos> line <eos>` per non-empty line, truncated to max_seq_len + 1 tokens."""
    lengths = (lines.lengths + 2).clamp(max=max_seq_len + 1)
    ids = torch.full((len(lines), int(lengths.max()) if len(lines) else 2), eos_id, dtype=torch.int32)
    _place_rows(ids, lines, torch.ones(len(lines), dtype=torch.long))
    non_empty = lines.lengths > 0
    return TokenSamples(ids[non_empty], lengths[non_empty], eos_id)


def synthetic_samples(prompts: Ragged, targets: Ragged, eos_id: int, max_seq_len: int,
                      loss_on_targets_only: bool, split: str = "") -> TokenSamples:
    """`<eos> prompt target <eos>` per sample; target_start = index of the first target token."""
    lengths = prompts.lengths + targets.lengths + 2
    longest = int(lengths.max())
    if longest > max_seq_len + 1:
        raise ValueError(f"{split}: a synthetic sample has {longest} tokens (<eos> prompt target <eos>) but "
                         f"max_seq_len={max_seq_len} fits {max_seq_len + 1}; raise max_seq_len to at least "
                         f"{longest - 1} or lower max_len / long_len")
    target_start = prompts.lengths + 1
    ids = torch.full((len(prompts), longest), eos_id, dtype=torch.int32)
    _place_rows(ids, prompts, torch.ones(len(prompts), dtype=torch.long))
    _place_rows(ids, targets, target_start)
    return TokenSamples(ids, lengths, eos_id, target_start if loss_on_targets_only else None)
