"""Which keys a query may not attend to: the future (causal), and left padding of batched prompts."""
from typing import Optional

import torch
from torch import Tensor


def hidden_keys(seq: int, n_keys: int, pad_left: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
    """True where query row i (at key index n_keys - seq + i) may not see key j: [seq, n_keys], or
    [batch, 1, seq, n_keys] with pad_left [batch]; None when nothing is hidden (one new token, no padding).

    Causal: keys after the query. Padding (key j < pad_left[row]): hidden from every query but
    itself, so a padding query's softmax stays finite and real tokens never read padding.
    Right-padded batches need nothing: padding comes after every real token, causality hides it."""
    if seq == 1 and pad_left is None:
        return None
    if seq == 1:  # one new token per row (a sampling step), the last key: the same in fewer steps
        key_index = torch.arange(n_keys, device=device)
        return (key_index < pad_left.to(device).view(-1, 1, 1, 1)) & (key_index != n_keys - 1)
    query_index = torch.arange(n_keys - seq, n_keys, device=device).unsqueeze(1)
    key_index = torch.arange(n_keys, device=device).unsqueeze(0)
    hidden = key_index > query_index
    if pad_left is not None:
        padding = key_index < pad_left.to(device).view(-1, 1, 1)  # [batch, 1, n_keys]
        hidden = (hidden | (padding & (key_index != query_index))).unsqueeze(1)
    return hidden
