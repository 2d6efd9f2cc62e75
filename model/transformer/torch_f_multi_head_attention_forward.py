"""Our multi-head self-attention, written out step by step: THE place to edit attention.

Every attention computation of the "custom-transformer" path runs through
`multi_head_attention_forward`: training, evaluation, sampling with a key/value cache and
attention plots. (The "torch-transformer" path runs PyTorch's fused kernels and never calls it,
so edits here need `layer_architecture="custom-transformer"`.)

The weights have the names of `nn.MultiheadAttention`'s: in_proj_weight stacks the q, k, v
projections, [(n_heads + 2 * n_kv_heads) * head_dim, dim] (with n_kv_heads == n_heads exactly
nn.MultiheadAttention's [3*dim, dim], so a model moves between the two paths as is), in_proj_bias,
out_proj. The options of ModelParams act at marked lines: qk_norm (2b), rope (2c), grouped-query
attention (3b), alibi (4b), left padding of batched prompts (5).

To try an idea, change the scores right before the softmax (the line after "Edit the scores
here"), using the static `model_params` (your ModelParams flag) or `attn_requests`, whatever
`LM.forward` decided for this batch (None unless you set it there).
"""
import math
from types import SimpleNamespace
from typing import Any, Optional, Tuple

from torch import Tensor, nn
from torch.nn.functional import dropout, softmax

from model.decoding_linear import linear  # F.linear, faster for beams and batched prompts on a CPU
from model.model_params import ModelParams
from model.transformer.kv_cache import LayerKVCache
from model.transformer.masks import hidden_keys
from model.transformer.positions import alibi_bias, apply_rope, rotary_dims, token_positions

# identities in place of the hook points when the function is called without them
NO_HOOKS = SimpleNamespace(**{name: lambda t: t for name in (
    "hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z")})


def multi_head_attention_forward(
    x: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Optional[Tensor],
    out_proj_weight: Tensor,
    out_proj_bias: Optional[Tensor],
    n_heads: int,
    dropout_p: float,
    training: bool,
    model_params: ModelParams,
    attn_requests: Any = None,
    kv_cache: Optional[LayerKVCache] = None,
    need_weights: bool = False,
    q_norm: Optional[nn.Module] = None,
    k_norm: Optional[nn.Module] = None,
    hooks: Any = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Causal self-attention of x [batch, seq, dim].

    Returns (output [batch, seq, dim], attention weights [batch, heads, seq, keys] or None), where
    keys = seq, or earlier tokens + seq when a kv_cache holds the earlier tokens (sampling).
    q_norm, k_norm: the per-head norms of qk_norm (None without it).
    hooks: the SelfAttention module, whose hook points (hook_q, ..., hook_z: model/hooks.py) mark the
    intermediates; None calls none.
    """
    mp = model_params
    batch, seq, dim = x.shape
    head_dim = dim // n_heads
    n_kv_heads = mp.n_kv_heads or n_heads
    past = kv_cache.length if kv_cache is not None else 0
    pad_left = kv_cache.pad_left if kv_cache is not None else None
    hooks = hooks if hooks is not None else NO_HOOKS

    # 1. every token's query, key and value (one matmul; in_proj_weight stacks q, k, v)
    q, k, v = linear(x, in_proj_weight, in_proj_bias).split(
        [n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim], dim=-1)
    # 2. split into heads: [batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim] (n_kv_heads for k, v)
    q = q.view(batch, seq, n_heads, head_dim).transpose(1, 2)
    k = k.view(batch, seq, n_kv_heads, head_dim).transpose(1, 2)
    v = v.view(batch, seq, n_kv_heads, head_dim).transpose(1, 2)
    # 2b. qk_norm: normalise each head's queries and keys
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    # 2c. rope: rotate q and k by their positions (absolute: after the cached tokens; per row with left padding)
    if mp.positional_encoding in ("rope", "alibi"):
        query_positions = token_positions(past, seq, pad_left, x.device)
    if mp.positional_encoding == "rope":
        q = apply_rope(q, query_positions, rotary_dims(mp), mp.rope_base)
        k = apply_rope(k, query_positions, rotary_dims(mp), mp.rope_base)
    # 2d. hook points (model/hooks.py) see [batch, seq, heads, head_dim]: q, k, v after qk_norm and rope
    q = hooks.hook_q(q.transpose(1, 2)).transpose(1, 2)
    k = hooks.hook_k(k.transpose(1, 2)).transpose(1, 2)
    v = hooks.hook_v(v.transpose(1, 2)).transpose(1, 2)
    # 3. sampling: also attend to the cached keys and values of the earlier tokens
    if kv_cache is not None:
        k, v = kv_cache.append(k, v)
    n_keys = k.shape[2]
    # 3b. grouped-query attention: each key/value head serves n_heads // n_kv_heads consecutive query heads
    if n_kv_heads != n_heads:
        k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)
        v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)

    # 4. scores: how well each query matches each key, scaled by 1/sqrt(head_dim) [batch, heads, seq, n_keys]
    attn_output_weights = (q / math.sqrt(head_dim)) @ k.transpose(-2, -1)
    # 4b. alibi: penalise each score by the head's slope times the query-key distance
    if mp.positional_encoding == "alibi":
        key_positions = token_positions(0, n_keys, pad_left, x.device)
        attn_output_weights = attn_output_weights + alibi_bias(n_heads, query_positions, key_positions)
    # 5. mask: the query at position p (p = n_keys - seq + i for query row i) sees keys 0..p only, and
    #    never a left-padding key (kv_cache.pad_left). Right-padded batches need nothing: no real token sees their padding.
    hidden = hidden_keys(seq, n_keys, pad_left, x.device)
    if hidden is not None:
        attn_output_weights = attn_output_weights.masked_fill(hidden, float("-inf"))
    # Edit the scores here (masked entries are -inf and must stay -inf, e.g. scale by a positive number).
    attn_output_weights = hooks.hook_attn_scores(attn_output_weights)
    attn_output_weights = softmax(attn_output_weights, dim=-1)
    attn_output_weights = hooks.hook_pattern(attn_output_weights)

    # 6. each query's output: the values weighted by its attention, heads merged back to [batch, seq, dim]
    attn_output = dropout(attn_output_weights, p=dropout_p, training=training) @ v
    attn_output = hooks.hook_z(attn_output.transpose(1, 2)).reshape(batch, seq, dim)
    # 7. output projection
    attn_output = linear(attn_output, out_proj_weight, out_proj_bias)
    return attn_output, (attn_output_weights if need_weights else None)
