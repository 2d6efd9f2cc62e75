"""Key/value cache for sampling: a new token attends to the stored keys and values of the
earlier tokens instead of recomputing them, so generating n tokens costs n one-token steps
rather than n full forward passes.

    cache = lm.new_kv_cache()
    logits = lm(prefix_ids, kv_cache=cache)        # fills the cache with the prefix
    logits = lm([[next_id]], kv_cache=cache)       # one step: reads the cache, appends to it

Batches of prompts of different lengths: left-pad them and say by how much,
    cache = lm.new_kv_cache(batch_size=3, pad_left=torch.tensor([2, 0, 5]))
then row r's real tokens get positions 0, 1, ... and no query attends to its padding, so each row's
logits are those of its prompt run alone. `cache.reorder(indices)` keeps / repeats rows (beam search).
With grouped-query attention the cache stores the n_kv_heads key/value heads (RoPE already applied).
"""
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor


class LayerKVCache:
    """One block's keys and values, [batch, kv heads, position, head_dim], in buffers filled in place
    (no copying of the past at every step) that grow as positions are added, doubling up to `max_len`
    (the model's context): a cache holds memory for about the positions used, not for the whole
    context (GPT-2, 16 rows: 1.2 GB for 1024 positions), and each position is copied about once more.
    `pad_left`: None or [batch] left-padding counts, shared with the KVCache that holds this layer."""

    MIN_POSITIONS = 64  # the first buffers hold at least this many positions

    def __init__(self, max_len: int, pad_left: Optional[Tensor] = None):
        self.max_len = max_len
        self.pad_left = pad_left
        self.length = 0  # positions stored so far
        self.k: Optional[Tensor] = None
        self.v: Optional[Tensor] = None
        # what the block keeps for the length of a decoding run (torch_layer.py: its weights, read once)
        self.layer_state: Any = None

    def append(self, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """Store the new tokens' k, v [batch, heads, new, head_dim]; return the keys and values of
        every position so far, [batch, heads, length, head_dim] (views of the buffers)."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"kv cache holds at most {self.max_len} positions (the model's context), "
                             f"asked to store {end}: start a new cache (lm.new_kv_cache())")
        if self.k is None or end > self.k.shape[2]:
            self._grow(k, v, end)
        self.k.narrow(2, start, end - start).copy_(k)  # narrow: the same as [:, :, start:end], fewer Python steps
        self.v.narrow(2, start, end - start).copy_(v)
        self.length = end
        return self.k.narrow(2, 0, end), self.v.narrow(2, 0, end)

    def _grow(self, k: Tensor, v: Tensor, needed: int) -> None:
        """New buffers (dtype, device and shape as the layer produces them) for at least `needed` positions,
        the filled ones copied over."""
        held = self.k.shape[2] if self.k is not None else 0
        positions = min(self.max_len, max(needed, 2 * held, self.MIN_POSITIONS))
        shape = (k.shape[0], k.shape[1], positions, k.shape[3])
        new_k, new_v = k.new_empty(shape), v.new_empty(shape)
        if self.length:
            new_k.narrow(2, 0, self.length).copy_(self.k.narrow(2, 0, self.length))
            new_v.narrow(2, 0, self.length).copy_(self.v.narrow(2, 0, self.length))
        self.k, self.v = new_k, new_v

    def reorder(self, indices: Tensor, pad_left: Optional[Tensor]) -> None:
        """Keep / repeat batch rows: row i becomes old row indices[i]. Copies only the filled positions
        (beam search reorders every step), and into the same buffers when the batch does not grow
        (batched sampling drops the rows that are done: fresh buffers would cost page faults each time)."""
        if self.k is not None:
            indices = indices.to(self.k.device)
            n, filled = indices.numel(), slice(0, self.length)
            if n <= self.k.shape[0]:  # in place, into the first n rows (index_select copies out first)
                self.k[:n, :, filled] = self.k[:, :, filled].index_select(0, indices)
                self.v[:n, :, filled] = self.v[:, :, filled].index_select(0, indices)
                self.k, self.v = self.k[:n], self.v[:n]
            else:
                k, v = self.k, self.v
                self.k = k.new_empty((n,) + k.shape[1:])
                self.v = v.new_empty((n,) + v.shape[1:])
                self.k[:, :, filled] = k[:, :, filled].index_select(0, indices)
                self.v[:, :, filled] = v[:, :, filled].index_select(0, indices)
        self.pad_left = pad_left


class KVCache:
    """A LayerKVCache per transformer block (indexed by block, not counting plain modules
    inserted between blocks). `length` is the number of positions already processed (padding
    included, the same for every row); `batch_size` the rows it serves; `pad_left` None or a
    LongTensor [batch_size] of left-padding counts."""

    def __init__(self, n_blocks: int, max_len: int, batch_size: int = 1,
                 pad_left: Union[None, Tensor, Sequence[int]] = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.max_len = max_len
        pad_left = check_pad_left(pad_left, batch_size, max_len)
        self.layers: List[LayerKVCache] = [LayerKVCache(max_len, pad_left) for _ in range(n_blocks)]
        self._pad_left = pad_left

    def __getitem__(self, block_index: int) -> LayerKVCache:
        return self.layers[block_index]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    @property
    def pad_left(self) -> Optional[Tensor]:
        return self._pad_left

    def reorder(self, indices: Union[Tensor, Sequence[int]]) -> None:
        """Keep / repeat batch rows in place (beam search): row i becomes old row indices[i]; the
        batch size becomes len(indices)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        if indices.dim() != 1 or indices.numel() == 0:
            raise ValueError(f"reorder takes a non-empty 1-D tensor of row indices, got shape {tuple(indices.shape)}")
        if indices.min() < 0 or indices.max() >= self.batch_size:
            raise ValueError(f"reorder indices must be in [0, {self.batch_size - 1}] (the cache's rows), "
                             f"got {indices.min().item()} to {indices.max().item()}")
        pad_left = self._pad_left[indices.to(self._pad_left.device)] if self._pad_left is not None else None
        for layer in self.layers:
            layer.reorder(indices, pad_left)
        self._pad_left = pad_left
        self.batch_size = indices.numel()


def check_pad_left(pad_left: Union[None, Tensor, Sequence[int]], batch_size: int, max_len: int) -> Optional[Tensor]:
    """pad_left as a LongTensor [batch_size] of counts in [0, max_len), or None; a clear error otherwise."""
    if pad_left is None:
        return None
    pad_left = torch.as_tensor(pad_left)
    if pad_left.is_floating_point() or pad_left.dtype == torch.bool:
        raise ValueError(f"pad_left must hold whole numbers of padding positions, got dtype {pad_left.dtype}")
    if pad_left.shape != (batch_size,):
        raise ValueError(f"pad_left must give one padding count per row: shape ({batch_size},) for "
                         f"batch_size={batch_size}, got shape {tuple(pad_left.shape)}")
    if pad_left.min() < 0 or pad_left.max() >= max_len:
        raise ValueError(f"pad_left counts must be in [0, {max_len - 1}] (the model's context), "
                         f"got {pad_left.min().item()} to {pad_left.max().item()}")
    return pad_left.long()
