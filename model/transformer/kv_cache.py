"""Key/value cache for sampling: a new token attends to the stored keys and values of the
earlier tokens instead of recomputing them, so generating n tokens costs n one-token steps
rather than n full forward passes.

    cache = lm.new_kv_cache()
    logits = lm(prefix_ids, kv_cache=cache)        # fills the cache with the prefix
    logits = lm([[next_id]], kv_cache=cache)       # one step: reads the cache, appends to it

Batched prompts of different lengths are left-padded: `lm.new_kv_cache(batch, pad_left=counts)`
marks the first pad_left[r] positions of row r as padding, which no query attends to, and row
r's real tokens get positions 0, 1, ... (see LM.embed). `cache.reorder(rows)` keeps, repeats
or reorders batch rows in place (beam search).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor


class LayerKVCache:
    """One block's keys and values, [batch, heads, position, head_dim], in buffers preallocated
    for `max_len` positions (filled in place: no copying of the past at every step)."""

    def __init__(self, max_len: int, pad_left: Optional[Tensor] = None):
        self.max_len = max_len
        self.length = 0  # positions stored so far
        self.pad_left = pad_left  # [batch] padding positions at the start of each row, or None
        self.k: Optional[Tensor] = None
        self.v: Optional[Tensor] = None

    def append(self, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """Store the new tokens' k, v [batch, heads, new, head_dim]; return the keys and values of
        every position so far, [batch, heads, length, head_dim] (views of the buffers)."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"kv cache holds at most {self.max_len} positions (the model's context), "
                             f"asked to store {end}: start a new cache (lm.new_kv_cache())")
        if self.k is None:  # allocate on first use, with the dtype/device/shape the layer produces
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def padding_mask(self, n_queries: int) -> Optional[Tensor]:
        """[batch, 1, n_queries, length] bool, True where a query must not see a padding key (a padding
        position still sees itself, so that its row of the softmax stays finite); None without padding."""
        if self.pad_left is None:
            return None
        keys = torch.arange(self.length, device=self.pad_left.device)
        queries = keys[self.length - n_queries:, None]
        return ((keys < self.pad_left[:, None, None]) & (keys != queries)).unsqueeze(1)

    def reorder(self, rows: Tensor) -> None:
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, rows), self.v.index_select(0, rows)
        if self.pad_left is not None:
            self.pad_left = self.pad_left.index_select(0, rows)


class KVCache:
    """A LayerKVCache per transformer block (indexed by block, not counting plain modules
    inserted between blocks). `length` is the number of positions already processed."""

    def __init__(self, n_blocks: int, max_len: int, pad_left: Optional[Tensor] = None):
        self.layers: List[LayerKVCache] = [LayerKVCache(max_len, pad_left) for _ in range(n_blocks)]
        self.max_len = max_len
        self.pad_left = pad_left

    def __getitem__(self, block_index: int) -> LayerKVCache:
        return self.layers[block_index]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def reorder(self, rows: Tensor) -> None:
        """Keep, repeat or reorder batch rows: row i becomes the old row rows[i] (beam search)."""
        for layer in self.layers:
            layer.reorder(rows)
        if self.pad_left is not None:
            self.pad_left = self.pad_left.index_select(0, rows)
