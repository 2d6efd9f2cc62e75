"""Where a token is, for the positional encodings of ModelParams.positional_encoding.

  learned, sinusoidal: a vector added to the token embedding (LM.embed; the table is
      `sinusoidal_positions` or the trained lm.pos_embedding);
  rope: q and k of each head are rotated by angles proportional to the position (`apply_rope`,
      in the attention function), so the score q_i . k_j depends on i - j only;
  alibi: each head's scores get -slope * (query position - key position) (`alibi_bias`).

Positions are absolute token indices 0, 1, ... (past the cached tokens while sampling). When a
kv cache has `pad_left` (batched prompts of different lengths, left-padded), row r's positions
count from its first real token: padding gets negative positions and is masked as a key.
"""
import math
from typing import List, Optional

import torch
from torch import Tensor

from model.model_params import ModelParams


def token_positions(past: int, seq: int, pad_left: Optional[Tensor], device: torch.device) -> Tensor:
    """Positions of the tokens at indices past .. past + seq - 1: [1, seq], or [batch, seq] with
    pad_left [batch] (each row counted from its first real token; padding is negative)."""
    positions = torch.arange(past, past + seq, device=device).unsqueeze(0)
    if pad_left is not None:
        positions = positions - pad_left.to(device).unsqueeze(1)
    return positions


def sinusoidal_positions(n_positions: int, dim: int) -> Tensor:
    """The fixed encodings of "Attention is all you need": [n_positions, dim], sin on even and cos on
    odd features, wavelengths from 2*pi to 10000*2*pi."""
    position = torch.arange(n_positions, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    encoding = torch.zeros(n_positions, dim)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return encoding


# ---- RoPE (Su et al. 2021), in the rotate_half layout of transformers' Llama and GPT-NeoX ----------
def rotary_dims(model_params: ModelParams) -> int:
    """How many of each head's dims rotate: int(head_dim * rotary_frac) (the first ones)."""
    return int(model_params.dim // model_params.n_heads * model_params.rotary_frac)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: dim i pairs with dim i + r/2."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, positions: Tensor, n_rotary: int, base: float) -> Tensor:
    """Rotate the first n_rotary dims of x [batch, heads, seq, head_dim] (queries or keys) by the
    angles position * base ** (-2i / n_rotary); positions [1 or batch, seq]. The rest pass as they are."""
    inv_freq = 1.0 / base ** (torch.arange(0, n_rotary, 2, device=x.device, dtype=torch.float32) / n_rotary)
    angles = positions.float().unsqueeze(-1) * inv_freq  # [1 or batch, seq, n_rotary / 2]
    angles = torch.cat((angles, angles), dim=-1).unsqueeze(1)  # [1 or batch, 1, seq, n_rotary]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    rotating, passing = x[..., :n_rotary], x[..., n_rotary:]
    rotated = rotating * cos + rotate_half(rotating) * sin
    return torch.cat((rotated, passing), dim=-1) if passing.shape[-1] else rotated


# ---- ALiBi (Press et al. 2022, "Train short, test long") ------------------------------------------
def alibi_slopes(n_heads: int) -> List[float]:
    """The paper's per-head slopes: for n a power of two, the geometric sequence starting at and
    multiplying by 2 ** (-8 / n); otherwise the slopes of the closest smaller power of two p, then
    every other slope of 2p, up to n heads."""
    def power_of_two_slopes(n: int) -> List[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_two_slopes(closest) + power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]


def alibi_bias(n_heads: int, query_positions: Tensor, key_positions: Tensor) -> Tensor:
    """-slope_h * (query position - key position): [1 or batch, heads, seq, keys], added to the scores."""
    slopes = torch.tensor(alibi_slopes(n_heads), device=query_positions.device)
    distance = query_positions.unsqueeze(-1) - key_positions.unsqueeze(-2)  # [1 or batch, seq, keys]
    return -slopes.view(1, n_heads, 1, 1) * distance.unsqueeze(1)
