"""Our multi-head self-attention, written out step by step: THE place to edit attention.

Every attention computation of the "custom-transformer" path runs through
`multi_head_attention_forward`: training, evaluation, sampling with a key/value cache and
attention plots. (The "torch-transformer" path runs PyTorch's fused kernels and never calls it,
so edits here need `layer_architecture="custom-transformer"`.)

The weights have the names and shapes of `nn.MultiheadAttention`'s (in_proj_weight [3*dim, dim]
holding q, k, v stacked, in_proj_bias, out_proj), so a model moves between the two paths as is.

To try an idea, change the scores right before the softmax (the line after "Edit the scores
here"), using the static `model_params` (your ModelParams flag) or `attn_requests`, whatever
`LM.forward` decided for this batch (None unless you set it there).
"""
import math
from types import SimpleNamespace
from typing import Any, Optional, Tuple

import torch
from torch import Tensor
from torch.nn.functional import dropout, linear, softmax

from model.model_params import ModelParams
from model.transformer.kv_cache import LayerKVCache

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
    hooks: Any = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Causal self-attention of x [batch, seq, dim].

    hooks: the SelfAttention module, whose hook points (hook_q, ..., hook_z: model/hooks.py) mark the
    intermediates; None calls none.
    Returns (output [batch, seq, dim], attention weights [batch, heads, seq, keys] or None), where
    keys = seq, or earlier tokens + seq when a kv_cache holds the earlier tokens (sampling).
    """
    batch, seq, dim = x.shape
    head_dim = dim // n_heads
    hooks = hooks if hooks is not None else NO_HOOKS

    # 1. every token's query, key and value (one matmul; in_proj_weight stacks q, k, v)
    q, k, v = linear(x, in_proj_weight, in_proj_bias).split(dim, dim=-1)
    # 2. split into heads: [batch, seq, dim] -> [batch, seq, heads, head_dim] -> [batch, heads, seq, head_dim]
    q, k, v = (t.view(batch, seq, n_heads, head_dim) for t in (q, k, v))
    q, k, v = hooks.hook_q(q), hooks.hook_k(k), hooks.hook_v(v)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    # 3. sampling: also attend to the cached keys and values of the earlier tokens
    if kv_cache is not None:
        k, v = kv_cache.append(k, v)
    n_keys = k.shape[2]

    # 4. scores: how well each query matches each key, scaled by 1/sqrt(head_dim) [batch, heads, seq, n_keys]
    attn_output_weights = (q / math.sqrt(head_dim)) @ k.transpose(-2, -1)
    # 5. causal mask: the query at position p (p = n_keys - seq + i for query row i) sees keys 0..p only.
    #    Batches are right-padded, so padding comes after every real token and no real token sees it.
    if seq > 1:
        future = torch.ones(seq, n_keys, dtype=torch.bool, device=x.device).triu(n_keys - seq + 1)
        attn_output_weights.masked_fill_(future, float("-inf"))
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
