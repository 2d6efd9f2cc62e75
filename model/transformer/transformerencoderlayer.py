"""The transformer block of the default "custom-transformer" path: our own readable layer, the one to edit.

Same submodule and parameter names as `nn.TransformerEncoderLayer` (self_attn.in_proj_weight,
self_attn.out_proj, linear1, linear2, norm1, norm2), so weights move between this layer and
PyTorch's (the "torch-transformer" reference, torch_layer.py) unchanged and give the same outputs.

Edit points: `forward` (the residual wiring, a few lines per block kind), `_sa_block` (attention
sublayer), `_ff_block` (feed-forward sublayer; its last line returns the sublayer's output), and the
attention itself (SelfAttention.forward in torch_f_multi_head_attention_forward.py).
`self.model_params` carries your ModelParams flags.

ModelParams options and where they act: norm_first and parallel_block (forward), activation
(_ff_block; swiglu/geglu add the `gate` projection), norm (parts.py: norm1, norm2, q/k norms),
n_kv_heads, qk_norm, rope, alibi (in the attention).

Hook points (model/hooks.py) are identity modules on the named intermediates (self.hook_resid_pre,
self.self_attn.hook_q, ...): keep them on the same values when you edit, and lm.run_with_cache /
lm.run_with_hooks read and patch your variant too.
"""
from typing import Any, Optional, Tuple

from torch import Tensor, nn

from model.hook_point import HookPoint
from model.model_params import ModelParams
from model.transformer.parts import ff_width, is_gated, make_activation, make_dropout, make_norm
from model.transformer.torch_f_multi_head_attention_forward import SelfAttention


class TransformerBlock(nn.Module):
    """One transformer block: self-attention then feed-forward, each with a residual connection."""

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
        self.linear1 = nn.Linear(mp.dim, ff_width(mp), bias=mp.bias)  # the "up" projection when gated
        self.linear2 = nn.Linear(ff_width(mp), mp.dim, bias=mp.bias)
        self.norm1 = make_norm(mp.dim, mp)
        self.norm2 = make_norm(mp.dim, mp)
        self.gate = nn.Linear(mp.dim, ff_width(mp), bias=mp.bias) if is_gated(mp) else None  # swiglu / geglu
        self.activation = make_activation(mp.activation)
        self.dropout_sa = make_dropout(mp.dropout)  # on the attention sublayer's output
        self.dropout_act = make_dropout(mp.dropout)  # inside the feed-forward, after the activation
        self.dropout_ff = make_dropout(mp.dropout)  # on the feed-forward sublayer's output

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, attn_requests: Any = None, kv_cache: Any = None,
                need_weights: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """x [batch, seq, dim] -> (x [batch, seq, dim], attention weights [batch, heads, seq, keys] or None).
        mask: the keys each query may not see (SelfAttention.forward).

        The residual wiring, an edit point:
            pre-LN (norm_first, GPT-2):   x = x + attn(norm1(x));  x = x + ff(norm2(x))
            post-LN (original, BERT):     x = norm1(x + attn(x));  x = norm2(x + ff(x))
            parallel (GPT-J, NeoX):       x = x + attn(norm1(x)) + ff(norm2(x))
        """
        resid_pre = self.hook_resid_pre(x)
        if self.model_params.parallel_block:  # both sublayers read the block's input
            attn_out, weights = self._sa_block(self.hook_ln1(self.norm1(resid_pre)), mask, attn_requests, kv_cache, need_weights)
            attn_out = self.hook_attn_out(attn_out)
            mlp_out = self.hook_mlp_out(self._ff_block(self.hook_ln2(self.norm2(resid_pre))))
            resid_post = resid_pre + attn_out + mlp_out
        elif self.model_params.norm_first:
            attn_out, weights = self._sa_block(self.hook_ln1(self.norm1(resid_pre)), mask, attn_requests, kv_cache, need_weights)
            resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(attn_out))
            mlp_out = self.hook_mlp_out(self._ff_block(self.hook_ln2(self.norm2(resid_mid))))
            resid_post = resid_mid + mlp_out
        else:  # post-LN: the norms' outputs are the residual stream (ln1 = resid_mid, ln2 = resid_post)
            attn_out, weights = self._sa_block(resid_pre, mask, attn_requests, kv_cache, need_weights)
            resid_mid = self.hook_resid_mid(self.hook_ln1(self.norm1(resid_pre + self.hook_attn_out(attn_out))))
            mlp_out = self.hook_mlp_out(self._ff_block(resid_mid))
            resid_post = self.hook_ln2(self.norm2(resid_mid + mlp_out))
        return self.hook_resid_post(resid_post), weights

    def _sa_block(self, x: Tensor, mask: Optional[Tensor], attn_requests: Any, kv_cache: Any,
                  need_weights: bool) -> Tuple[Tensor, Optional[Tensor]]:
        x, weights = self.self_attn(x, mask=mask, attn_requests=attn_requests, kv_cache=kv_cache,
                                    need_weights=need_weights)
        return self.dropout_sa(x), weights

    def _ff_block(self, x: Tensor) -> Tensor:
        """x [batch, seq, dim] -> [batch, seq, dim], through a hidden layer [batch, seq, dim_ff]."""
        if self.gate is not None:  # swiglu / geglu: the activated gate scales the up projection
            hidden = self.activation(self.hook_mlp_pre(self.gate(x))) * self.hook_mlp_pre_linear(self.linear1(x))
        else:
            hidden = self.activation(self.hook_mlp_pre(self.linear1(x)))
        hidden = self.hook_mlp_post(hidden)
        x = self.linear2(self.dropout_act(hidden))
        return self.dropout_ff(x)
