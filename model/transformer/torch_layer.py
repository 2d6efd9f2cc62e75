"""The "torch-transformer" block: PyTorch's own nn.TransformerEncoderLayer, the reference.

Not the default, and not the code to edit: it is the baseline an idea is compared against, with the
same weights and outputs as our editable block (transformerencoderlayer.py). Training and plain
forwards run PyTorch's code unchanged: fused scaled-dot-product attention (flash / memory-efficient
kernels on GPU) and, in eval mode under no_grad, the fused encoder-layer kernel. Hooks do not reach
inside it (model/hooks.py refuses them on this path). It reads the mask LM.forward makes (hidden_keys):
a [seq, seq] one is the causal mask (PyTorch's is_causal kernels), a [batch, 1, seq, keys] one (a
prefix, padding) goes in as PyTorch's per-head src_mask, None attends both ways. Two extras that nn.TransformerEncoderLayer
cannot do, written here with PyTorch's own attention ops (no code of the editable path runs here):
  - attention weights (`need_weights=True`): nn.MultiheadAttention asked for per-head weights;
  - sampling with a key/value cache: F.scaled_dot_product_attention over the cached keys.
"""
from contextlib import nullcontext
from functools import partial
from types import SimpleNamespace
from typing import Any, ContextManager, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from model.decoding.kv_cache import LayerKVCache
from model.model_params import ModelParams
from model.transformer.parts import ff_width


class TorchTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """nn.TransformerEncoderLayer(batch_first=True) with the block interface of our custom layer:
    forward(x, mask, attn_requests, kv_cache, need_weights) -> (x, weights or None).
    `attn_requests` is accepted and ignored: attention edits live in the custom path."""

    def __init__(self, model_params: ModelParams):
        mp = model_params
        # PyTorch knows "relu" and "gelu" by name; GPT-2's tanh-GELU is passed as a module
        activation = nn.GELU(approximate="tanh") if mp.activation == "gelu_tanh" else mp.activation
        super().__init__(d_model=mp.dim, nhead=mp.n_heads, dim_feedforward=ff_width(mp), dropout=mp.dropout,
                         activation=activation, layer_norm_eps=mp.layer_norm_eps, batch_first=True,
                         norm_first=mp.norm_first, bias=mp.bias)
        self.model_params = mp
        if mp.activation == "gelu_tanh":
            # PyTorch's fused eval kernel treats every nn.GELU as the exact GELU: keep it off that kernel
            self.activation_relu_or_gelu = 0

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, attn_requests: Any = None,
                kv_cache: Optional[LayerKVCache] = None, need_weights: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """x [batch, seq, dim] -> (x [batch, seq, dim], attention weights [batch, heads, seq, keys] or None)."""
        if kv_cache is None and not need_weights:  # the fast path: PyTorch's layer as is
            with attention_kernels(x):
                if mask is not None and mask.dim() == 2:  # the plain causal mask
                    return super().forward(x, src_mask=mask, is_causal=True), None
                return super().forward(x, src_mask=self._per_head(mask)), None
        if kv_cache is not None and need_weights:
            raise ValueError("attention weights while sampling with a kv cache are only available in the "
                             "custom-transformer path (see LM.with_layer_architecture)")
        if kv_cache is not None and not self.training:
            return self._decoding_step(x, kv_cache, mask), None
        attend = self._attend_cached if kv_cache is not None else self._attend_with_weights
        # the same sublayer order as nn.TransformerEncoderLayer.forward
        if self.norm_first:
            attn_out, weights = attend(self.norm1(x), kv_cache, mask)
            x = x + self.dropout1(attn_out)
            x = x + self._ff_block(self.norm2(x))
        else:
            attn_out, weights = attend(x, kv_cache, mask)
            x = self.norm1(x + self.dropout1(attn_out))
            x = self.norm2(x + self._ff_block(x))
        return x, weights

    def _decoding_step(self, x: Tensor, kv_cache: LayerKVCache, mask: Optional[Tensor]) -> Tensor:
        """forward's cached branch in eval mode (sampling): the same operations, on the weights gathered once
        per cache (`_step_weights`), with the (inactive) dropouts left out. A decoding step of a small model is
        mostly per-call overhead: this makes it about 25% faster (bench/bench_gpt2.py --small)."""
        w = kv_cache.layer_state
        if w is None or w.layer is not self:  # the first step of this cache (or a cache another layer filled)
            w = kv_cache.layer_state = self._step_weights()
        if self.norm_first:
            x = x + self._attend_cached(F.layer_norm(x, w.norm_shape, w.norm1_weight, w.norm1_bias, w.norm1_eps),
                                        kv_cache, mask, w)[0]
            h = F.layer_norm(x, w.norm_shape, w.norm2_weight, w.norm2_bias, w.norm2_eps)
            return x + F.linear(w.activation(F.linear(h, w.linear1_weight, w.linear1_bias)), w.linear2_weight, w.linear2_bias)
        x = F.layer_norm(x + self._attend_cached(x, kv_cache, mask, w)[0], w.norm_shape, w.norm1_weight, w.norm1_bias,
                         w.norm1_eps)
        h = F.linear(w.activation(F.linear(x, w.linear1_weight, w.linear1_bias)), w.linear2_weight, w.linear2_bias)
        return F.layer_norm(x + h, w.norm_shape, w.norm2_weight, w.norm2_bias, w.norm2_eps)

    def _step_weights(self) -> SimpleNamespace:
        """The parameters and settings a cached step reads, as plain attributes. Reading a parameter or a
        submodule through nn.Module costs about 0.5 us, and a step reads some twenty per block: a decoding
        run gathers them once, into its cache (the Parameter objects: in-place changes of their values,
        e.g. model/decoding/cpu_speedups.py's, are seen)."""
        norm1, norm2, attn = self.norm1, self.norm2, self.self_attn
        activation = self.activation
        if type(activation) is nn.GELU:  # GPT-2's tanh-GELU: its function, without the module call
            activation = partial(F.gelu, approximate=activation.approximate)
        return SimpleNamespace(
            layer=self,
            norm_shape=norm1.normalized_shape, norm1_weight=norm1.weight, norm1_bias=norm1.bias, norm1_eps=norm1.eps,
            norm2_weight=norm2.weight, norm2_bias=norm2.bias, norm2_eps=norm2.eps,
            in_proj_weight=attn.in_proj_weight, in_proj_bias=attn.in_proj_bias, n_heads=attn.num_heads,
            attn_dropout=attn.dropout, out_proj_weight=attn.out_proj.weight, out_proj_bias=attn.out_proj.bias,
            linear1_weight=self.linear1.weight, linear1_bias=self.linear1.bias,
            linear2_weight=self.linear2.weight, linear2_bias=self.linear2.bias, activation=activation)

    def _per_head(self, mask: Optional[Tensor]) -> Optional[Tensor]:
        """A [batch, 1, seq, keys] mask as PyTorch's [batch * heads, seq, keys] attn_mask ([seq, keys] and None as they are)."""
        if mask is None or mask.dim() == 2:
            return mask
        batch, _, seq, n_keys = mask.shape
        return mask.expand(batch, self.self_attn.num_heads, seq, n_keys).reshape(-1, seq, n_keys)

    def _attend_with_weights(self, x: Tensor, kv_cache: None, mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """PyTorch's multi-head attention, returning per-head weights [batch, heads, seq, seq]."""
        return self.self_attn(x, x, x, attn_mask=self._per_head(mask), need_weights=True, average_attn_weights=False)

    def _attend_cached(self, x: Tensor, kv_cache: LayerKVCache, mask: Optional[Tensor],
                       w: Optional[SimpleNamespace] = None) -> Tuple[Tensor, None]:
        """Fused attention of the new tokens x [batch, new, dim] over the cached and new keys.
        w: the layer's `_step_weights()` (gathered here when not given)."""
        w = w if w is not None else self._step_weights()
        batch, seq, dim = x.shape
        # [batch, seq, 3 * heads, head_dim] -> [batch, 3 * heads, seq, head_dim] -> q, k, v (heads each)
        q, k, v = F.linear(x, w.in_proj_weight, w.in_proj_bias).view(batch, seq, 3 * w.n_heads, -1
                                                                     ).transpose(1, 2).chunk(3, dim=1)
        k, v = kv_cache.append(k, v)
        n_keys = k.shape[2]
        # LM.forward's mask covers the cached keys too; a fresh cache's [seq, seq] mask is plain causal
        plain_causal = mask is not None and mask.dim() == 2 and seq == n_keys
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None or plain_causal else ~mask,
                                             is_causal=plain_causal,
                                             dropout_p=w.attn_dropout if self.training else 0.0)
        return F.linear(out.transpose(1, 2).reshape(batch, seq, dim), w.out_proj_weight, w.out_proj_bias), None


def attention_kernels(x: Tensor) -> ContextManager:
    """The fused attention kernels PyTorch may choose from for x: all of them, except on a CPU under
    bfloat16 autocast (precision="bf16-mixed"), where the flash kernel's backward pass takes about 4x as long
    as the plain math kernel's, and a small model's whole training step 1.35x as long (bench/bench_precision.py).
    The math kernel is the same attention, computed as softmax(q k^T / sqrt(d)) v."""
    cpu_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if x.device.type == "cpu" and cpu_bf16:
        return sdpa_kernel(SDPBackend.MATH)
    return nullcontext()

