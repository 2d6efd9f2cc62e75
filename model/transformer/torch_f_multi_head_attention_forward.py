"""Our multi-head self-attention, written out step by step: THE place to edit attention.

Every attention computation of the default "custom-transformer" path runs through
`SelfAttention.forward`: training, evaluation, sampling with a key/value cache, attention plots and
hooks. ("torch-transformer", PyTorch's own layer kept as the reference to compare an idea against,
never calls it.)

The weights have the names of `nn.MultiheadAttention`'s: in_proj_weight stacks the q, k, v
projections, [(n_heads + 2 * n_kv_heads) * head_dim, dim] (with n_kv_heads == n_heads exactly
nn.MultiheadAttention's [3*dim, dim], so a model moves between the two paths as is), in_proj_bias,
out_proj. The options of ModelParams act at marked lines: qk_norm (2b), rope (2c), grouped-query
attention (3b), alibi (4b); which keys a query sees (5) is `hidden_keys` below: causal, a prefix read
both ways (objective "prefix"), no causal mask at all (objective "masked"), padding.

To try an idea, change the scores right before the softmax (the line after "Edit the scores
here"), using the static `self.model_params` (your ModelParams flag) or `attn_requests`, whatever
`LM.forward` decided for this batch (None unless you set it there).
"""
import math
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.functional import dropout, softmax

from model.hook_point import HookPoint
from model.model_params import ModelParams
from model.transformer.parts import make_norm


class SelfAttention(nn.Module):
    def __init__(self, model_params: ModelParams):
        super().__init__()
        mp = self.model_params = model_params
        self.n_heads, self.head_dim = mp.n_heads, mp.dim // mp.n_heads
        self.n_kv_heads = mp.n_kv_heads or mp.n_heads
        qkv_size = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(qkv_size, mp.dim))  # q, k, v projections stacked
        self.in_proj_bias = nn.Parameter(torch.zeros(qkv_size)) if mp.bias else None
        self.out_proj = nn.Linear(mp.dim, mp.dim, bias=mp.bias)
        # qk_norm: one norm over head_dim for the queries, one for the keys, shared by the heads
        self.q_norm = make_norm(self.head_dim, mp) if mp.qk_norm else nn.Identity()
        self.k_norm = make_norm(self.head_dim, mp) if mp.qk_norm else nn.Identity()
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention (LM.init_weights re-initialises)
        # identity modules on the intermediates (model/hooks.py), in forward order
        self.hook_q, self.hook_k, self.hook_v = HookPoint("attn.hook_q"), HookPoint("attn.hook_k"), HookPoint("attn.hook_v")
        self.hook_attn_scores, self.hook_pattern = HookPoint("attn.hook_attn_scores"), HookPoint("attn.hook_pattern")
        self.hook_z = HookPoint("attn.hook_z")

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, attn_requests: Any = None, kv_cache: Any = None,
                need_weights: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """x [batch, seq, dim] -> (output [batch, seq, dim], attention weights [batch, heads, seq, keys] or None),
        where keys = seq, or the earlier tokens + seq when a kv_cache (model/decoding/kv_cache.py) holds them.
        mask: True where a query may not see a key, [seq, keys] or [batch, 1, seq, keys], or None (every key
        is seen); LM.forward makes it once per forward with hidden_keys (below)."""
        model_params, n_heads, n_kv_heads, head_dim = self.model_params, self.n_heads, self.n_kv_heads, self.head_dim
        batch, seq, dim = x.shape
        past = kv_cache.length if kv_cache is not None else 0
        pad_left = kv_cache.pad_left if kv_cache is not None else None

        # 1. every token's query, key and value (one matmul; in_proj_weight stacks q, k, v)
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(
            [n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim], dim=-1)
        # 2. split into heads: [batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim] (n_kv_heads for k, v)
        q = q.view(batch, seq, n_heads, head_dim).transpose(1, 2)
        k = k.view(batch, seq, n_kv_heads, head_dim).transpose(1, 2)
        v = v.view(batch, seq, n_kv_heads, head_dim).transpose(1, 2)
        # 2b. qk_norm: normalise each head's queries and keys (nn.Identity without it)
        q, k = self.q_norm(q), self.k_norm(k)
        # 2c. rope: rotate q and k by their positions (absolute: after the cached tokens; per row with left padding)
        if model_params.positional_encoding in ("rope", "alibi"):
            query_positions = token_positions(past, seq, pad_left, x.device)  # [1 or batch, seq]
        if model_params.positional_encoding == "rope":
            q = apply_rope(q, query_positions, rotary_dims(model_params), model_params.rope_base)
            k = apply_rope(k, query_positions, rotary_dims(model_params), model_params.rope_base)
        # 2d. hook points see [batch, seq, heads, head_dim]: q, k, v after qk_norm and rope
        q = self.hook_q(q.transpose(1, 2)).transpose(1, 2)
        k = self.hook_k(k.transpose(1, 2)).transpose(1, 2)
        v = self.hook_v(v.transpose(1, 2)).transpose(1, 2)
        # 3. sampling: also attend to the cached keys and values of the earlier tokens
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # [batch, n_kv_heads, n_keys, head_dim]
        n_keys = k.shape[2]
        # 3b. grouped-query attention: each key/value head serves n_heads // n_kv_heads consecutive query heads
        if n_kv_heads != n_heads:
            k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)
            v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)

        # 4. scores: how well each query matches each key, scaled by 1/sqrt(head_dim) [batch, heads, seq, n_keys]
        attn_output_weights = (q / math.sqrt(head_dim)) @ k.transpose(-2, -1)
        # 4b. alibi: penalise each score by the head's slope times the query-key distance
        if model_params.positional_encoding == "alibi":
            key_positions = token_positions(0, n_keys, pad_left, x.device)
            attn_output_weights = attn_output_weights + alibi_bias(n_heads, query_positions, key_positions)
        # 5. mask: causal, the query at position p (p = n_keys - seq + i for query row i) sees keys 0..p only
        #    (and the whole prefix, objective "prefix"; every key, objective "masked"); never a padding key
        if mask is not None:  # in place: the scores are a new tensor (one copy fewer per block)
            attn_output_weights = attn_output_weights.masked_fill_(mask, float("-inf"))
        # Edit the scores here (masked entries are -inf and must stay -inf, e.g. scale by a positive number).
        attn_output_weights = self.hook_attn_scores(attn_output_weights)
        attn_output_weights = softmax(attn_output_weights, dim=-1)
        attn_output_weights = self.hook_pattern(attn_output_weights)

        # 6. each query's output: the values weighted by its attention, heads merged back to [batch, seq, dim]
        attn_output = dropout(attn_output_weights, p=model_params.dropout, training=self.training) @ v
        attn_output = self.hook_z(attn_output.transpose(1, 2)).reshape(batch, seq, dim)
        # 7. output projection
        return self.out_proj(attn_output), (attn_output_weights if need_weights else None)


# ---- the mask: which keys a query may not see ---------------------------------------------------
def hidden_keys(seq: int, n_keys: int, pad_left: Optional[Tensor], device: torch.device, causal: bool = True,
                prefix_len: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None) -> Optional[Tensor]:
    """True where query row i (at key index n_keys - seq + i) may not see key j: [seq, n_keys] for a plain
    causal read, else [batch, 1, seq, n_keys]; None when nothing is hidden (one new token, no padding; or
    a bidirectional read without padding).

    causal: keys after the query are hidden, except the first prefix_len[row] keys ([batch]: a prefix LM's
    prefix, which every query sees). causal=False (a masked LM): no key is hidden for where it is.
    Padding: left (key j < pad_left[row], batched prompts) or marked (attention_mask [batch, n_keys], False on
    padding): hidden from every query but itself, so a padding query's softmax stays finite. Right padding
    of a causal read needs no mark: no real token comes after it."""
    if not causal and pad_left is None and attention_mask is None:
        return None
    if seq == 1 and causal and pad_left is None and prefix_len is None and attention_mask is None:
        return None
    query_index = torch.arange(n_keys - seq, n_keys, device=device).unsqueeze(1)  # [seq, 1]
    key_index = torch.arange(n_keys, device=device).unsqueeze(0)  # [1, n_keys]
    hidden = key_index > query_index if causal else torch.zeros(seq, n_keys, dtype=torch.bool, device=device)
    if prefix_len is None and pad_left is None and attention_mask is None:
        return hidden
    if prefix_len is not None:  # [batch, seq, n_keys]: the prefix is seen from everywhere
        hidden = hidden & (key_index >= prefix_len.to(device).view(-1, 1, 1))
    padding = torch.zeros(1, 1, n_keys, dtype=torch.bool, device=device)
    if pad_left is not None:
        padding = padding | (key_index < pad_left.to(device).view(-1, 1, 1))  # [batch, 1, n_keys]
    if attention_mask is not None:
        padding = padding | ~attention_mask.to(device=device, dtype=torch.bool).unsqueeze(1)
    hidden = hidden | (padding & (key_index != query_index))
    return hidden.unsqueeze(1)


# ---- positions: rope and alibi act here; learned and sinusoidal ones are added in LM.embed ----------
def token_positions(past: int, seq: int, pad_left: Optional[Tensor], device: torch.device) -> Tensor:
    """Positions of the tokens at indices past .. past + seq - 1: [1, seq], or [batch, seq] with
    pad_left [batch] (each row counted from its first real token; padding is negative)."""
    positions = torch.arange(past, past + seq, device=device).unsqueeze(0)
    if pad_left is not None:
        positions = positions - pad_left.to(device).unsqueeze(1)
    return positions


def rotary_dims(model_params: ModelParams) -> int:
    """rope: how many of each head's dims rotate, int(head_dim * rotary_frac) (the first ones)."""
    return int(model_params.dim // model_params.n_heads * model_params.rotary_frac)


def apply_rope(x: Tensor, positions: Tensor, n_rotary: int, base: float) -> Tensor:
    """RoPE (Su et al. 2021) in the rotate_half layout of transformers' Llama and GPT-NeoX: rotate the first
    n_rotary dims of x [batch, heads, seq, head_dim] by the angles position * base ** (-2i / n_rotary); dim i
    pairs with dim i + n_rotary / 2. positions [1 or batch, seq]. The other dims pass as they are."""
    inv_freq = 1.0 / base ** (torch.arange(0, n_rotary, 2, device=x.device, dtype=torch.float32) / n_rotary)
    angles = positions.float().unsqueeze(-1) * inv_freq  # [1 or batch, seq, n_rotary / 2]
    angles = torch.cat((angles, angles), dim=-1).unsqueeze(1)  # [1 or batch, 1, seq, n_rotary]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    rotating, passing = x[..., :n_rotary], x[..., n_rotary:]
    first, second = rotating.chunk(2, dim=-1)
    rotated = rotating * cos + torch.cat((-second, first), dim=-1) * sin
    return torch.cat((rotated, passing), dim=-1) if passing.shape[-1] else rotated


def alibi_slopes(n_heads: int) -> List[float]:
    """ALiBi (Press et al. 2022): for n a power of two, the geometric sequence starting at and multiplying
    by 2 ** (-8 / n); otherwise the slopes of the closest smaller power of two p, then every other slope
    of 2p, up to n heads."""
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
