"""The "custom-transformer" block: our own readable transformer layer, the one to edit.

Same submodule and parameter names as `nn.TransformerEncoderLayer` (self_attn.in_proj_weight,
self_attn.out_proj, linear1, linear2, norm1, norm2), so weights trained on the fast
"torch-transformer" path load here unchanged and give the same outputs.

    norm_first (pre-LN, GPT-2):  x = x + _sa_block(norm1(x));  x = x + _ff_block(norm2(x))
    post-LN (original):          x = norm1(x + _sa_block(x));  x = norm2(x + _ff_block(x))
    parallel_block (GPT-J/NeoX): x = x + _sa_block(norm1(x)) + _ff_block(norm2(x))

ModelParams options and where they act: norm (norms.py: norm1, norm2, q/k norms), activation
(feedforward.py; swiglu/geglu add the `gate` projection used in _ff_block), n_kv_heads, qk_norm,
rope, alibi (in the attention function, torch_f_multi_head_attention_forward.py).

Hook points (model/hooks.py) are identity modules on the named intermediates (self.hook_resid_pre,
self.self_attn.hook_q, ...): keep them on the same values when you edit, and lm.run_with_cache /
lm.run_with_hooks read and patch your variant too.

Edit points: `_sa_block` (attention sublayer), `_ff_block` (feed-forward sublayer; its last
line returns the sublayer's output), and the attention function itself in
torch_f_multi_head_attention_forward.py. `self.model_params` carries your ModelParams flags.
"""
from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from model.decoding_linear import Linear  # nn.Linear, faster for beams and batched prompts on a CPU
from model.hooks import HookPoint
from model.model_params import ModelParams
from model.transformer.feedforward import ACTIVATIONS, ff_width, is_gated, make_activation  # noqa: F401 (re-exported)
from model.transformer.kv_cache import LayerKVCache
from model.transformer.norms import make_norm
from model.transformer.torch_f_multi_head_attention_forward import multi_head_attention_forward


def make_dropout(p: float) -> nn.Module:
    """nn.Dropout(p), or for p == 0 nn.Identity() (the same result at less cost per call: sampling calls
    the block's dropouts at every step)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class SelfAttention(nn.Module):
    """Holds the attention weights (named as in nn.MultiheadAttention) and calls our attention function.
    in_proj_weight: [(n_heads + 2 * n_kv_heads) * head_dim, dim], rows q, then k, then v."""

    def __init__(self, model_params: ModelParams):
        super().__init__()
        mp = self.model_params = model_params
        dim, bias = mp.dim, mp.bias
        self.n_heads = mp.n_heads
        head_dim = dim // mp.n_heads
        n_kv_heads = mp.n_kv_heads or mp.n_heads
        self.dropout = mp.dropout  # on the attention weights
        qkv_size = (mp.n_heads + 2 * n_kv_heads) * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(qkv_size, dim))  # q, k, v projections stacked
        self.in_proj_bias = nn.Parameter(torch.zeros(qkv_size)) if bias else None
        self.out_proj = Linear(dim, dim, bias=bias)
        # qk_norm: one norm over head_dim for the queries, one for the keys, shared by the heads
        self.q_norm = make_norm(head_dim, mp) if mp.qk_norm else None
        self.k_norm = make_norm(head_dim, mp) if mp.qk_norm else None
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention (LM.init_weights re-initialises)
        # identity modules on the attention function's intermediates (model/hooks.py), in forward order
        self.hook_q, self.hook_k, self.hook_v = HookPoint("attn.hook_q"), HookPoint("attn.hook_k"), HookPoint("attn.hook_v")
        self.hook_attn_scores, self.hook_pattern = HookPoint("attn.hook_attn_scores"), HookPoint("attn.hook_pattern")
        self.hook_z = HookPoint("attn.hook_z")

    def forward(self, x: Tensor, attn_requests: Any = None, kv_cache: Optional[LayerKVCache] = None,
                need_weights: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        return multi_head_attention_forward(
            x, self.in_proj_weight, self.in_proj_bias, self.out_proj.weight, self.out_proj.bias,
            n_heads=self.n_heads, dropout_p=self.dropout, training=self.training,
            model_params=self.model_params, attn_requests=attn_requests, kv_cache=kv_cache,
            need_weights=need_weights, q_norm=self.q_norm, k_norm=self.k_norm, hooks=self)


class TransformerEncoderLayer(nn.Module):
    """One causal transformer block: self-attention then feed-forward, each with a residual connection."""

    def __init__(self, model_params: ModelParams):
        super().__init__()
        mp = self.model_params = model_params
        # hook points (model/hooks.py): identity modules naming the residual stream and the sublayers' values
        self.hook_resid_pre, self.hook_ln1 = HookPoint("hook_resid_pre"), HookPoint("ln1.hook_normalized")
        self.hook_attn_out = HookPoint("hook_attn_out")
        self.hook_resid_mid = HookPoint("hook_resid_mid") if not mp.parallel_block else None  # no such stream there
        self.hook_ln2, self.hook_mlp_pre = HookPoint("ln2.hook_normalized"), HookPoint("mlp.hook_pre")
        self.hook_mlp_pre_linear = HookPoint("mlp.hook_pre_linear") if is_gated(mp) else None  # linear1's output
        self.hook_mlp_post, self.hook_mlp_out = HookPoint("mlp.hook_post"), HookPoint("hook_mlp_out")
        self.hook_resid_post = HookPoint("hook_resid_post")
        # registered in nn.TransformerEncoderLayer's order, so both paths draw the same initial weights
        self.self_attn = SelfAttention(mp)
        self.linear1 = Linear(mp.dim, ff_width(mp), bias=mp.bias)  # the "up" projection when gated
        self.linear2 = Linear(ff_width(mp), mp.dim, bias=mp.bias)
        self.norm1 = make_norm(mp.dim, mp)
        self.norm2 = make_norm(mp.dim, mp)
        self.gate = Linear(mp.dim, ff_width(mp), bias=mp.bias) if is_gated(mp) else None  # swiglu / geglu
        self.activation = make_activation(mp.activation)
        self.dropout_sa = make_dropout(mp.dropout)  # on the attention sublayer's output
        self.dropout_act = make_dropout(mp.dropout)  # inside the feed-forward, after the activation
        self.dropout_ff = make_dropout(mp.dropout)  # on the feed-forward sublayer's output

    def forward(self, x: Tensor, attn_requests: Any = None, kv_cache: Optional[LayerKVCache] = None,
                need_weights: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """x [batch, seq, dim] -> (x [batch, seq, dim], attention weights [batch, heads, seq, keys] or None)."""
        resid_pre = self.hook_resid_pre(x)
        if self.model_params.parallel_block:  # both sublayers read the block's input (GPT-J, GPT-NeoX, Pythia)
            attn_out, weights = self._sa_block(self.hook_ln1(self.norm1(resid_pre)), attn_requests, kv_cache, need_weights)
            attn_out = self.hook_attn_out(attn_out)
            mlp_out = self.hook_mlp_out(self._ff_block(self.hook_ln2(self.norm2(resid_pre))))
            resid_post = resid_pre + attn_out + mlp_out
        elif self.model_params.norm_first:
            attn_out, weights = self._sa_block(self.hook_ln1(self.norm1(resid_pre)), attn_requests, kv_cache, need_weights)
            resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(attn_out))
            mlp_out = self.hook_mlp_out(self._ff_block(self.hook_ln2(self.norm2(resid_mid))))
            resid_post = resid_mid + mlp_out
        else:  # post-LN: the norms' outputs are the residual stream (ln1 = resid_mid, ln2 = resid_post)
            attn_out, weights = self._sa_block(resid_pre, attn_requests, kv_cache, need_weights)
            resid_mid = self.hook_resid_mid(self.hook_ln1(self.norm1(resid_pre + self.hook_attn_out(attn_out))))
            mlp_out = self.hook_mlp_out(self._ff_block(resid_mid))
            resid_post = self.hook_ln2(self.norm2(resid_mid + mlp_out))
        return self.hook_resid_post(resid_post), weights

    def _sa_block(self, x: Tensor, attn_requests: Any, kv_cache: Optional[LayerKVCache],
                  need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        x, weights = self.self_attn(x, attn_requests=attn_requests, kv_cache=kv_cache, need_weights=need_weights)
        return self.dropout_sa(x), weights

    def _ff_block(self, x: Tensor) -> Tensor:
        if self.gate is not None:  # swiglu / geglu: the activated gate scales the up projection
            hidden = self.activation(self.hook_mlp_pre(self.gate(x))) * self.hook_mlp_pre_linear(self.linear1(x))
        else:
            hidden = self.activation(self.hook_mlp_pre(self.linear1(x)))
        hidden = self.hook_mlp_post(hidden)
        x = self.linear2(self.dropout_act(hidden))
        return self.dropout_ff(x)
