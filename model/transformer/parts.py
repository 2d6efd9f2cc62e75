"""Small parts of the transformer, each chosen by one ModelParams field: the norm, the feed-forward
activation and width, dropout, and the fixed sinusoidal positions.

Feed-forward: plain activations give ff(x) = linear2(act(linear1(x))); gated ones (swiglu, geglu;
Shazeer 2020, as Llama / Mistral / Gemma) give ff(x) = linear2(act(gate(x)) * linear1(x)), linear1
being the "up" projection. The block (transformerencoderlayer.py) owns linear1, gate and linear2.
"""
import math

import torch
from torch import Tensor, nn

from model.model_params import ModelParams

NORMS = ("layernorm", "rmsnorm")
PLAIN_ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
GATED_ACTIVATIONS = ("swiglu", "geglu")
ACTIVATIONS = PLAIN_ACTIVATIONS + GATED_ACTIVATIONS


def make_norm(size: int, model_params: ModelParams) -> nn.Module:
    """ModelParams.norm over the last `size` features, used for every norm of the model (norm1, norm2,
    decoder.final_norm, q/k norms): nn.LayerNorm (with a bias when model_params.bias) or nn.RMSNorm
    (x / rms(x) * weight, no bias, as Llama), with model_params.layer_norm_eps."""
    mp = model_params
    if mp.norm == "layernorm":
        return nn.LayerNorm(size, eps=mp.layer_norm_eps, bias=mp.bias)
    if mp.norm == "rmsnorm":
        return nn.RMSNorm(size, eps=mp.layer_norm_eps)
    raise ValueError(f"unknown norm {mp.norm!r}: choose one of {', '.join(NORMS)}")


def is_gated(model_params: ModelParams) -> bool:
    """True when the feed-forward has a gate projection (swiglu, geglu)."""
    return model_params.activation in GATED_ACTIVATIONS


def make_activation(name: str) -> nn.Module:
    """The feed-forward activation by ModelParams.activation name (for gated ones: what acts on the gate)."""
    if name == "relu":
        return nn.ReLU()
    if name in ("gelu", "geglu"):
        return nn.GELU()
    if name == "gelu_tanh":  # GPT-2's tanh approximation of GELU
        return nn.GELU(approximate="tanh")
    if name == "swiglu":  # Swish-1 = SiLU
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")


def ff_width(model_params: ModelParams) -> int:
    """Feed-forward hidden width: ModelParams.dim_ff, or when it is None 4 * dim, and for gated
    activations 8/3 * dim rounded up to a multiple of 64 (about the parameters of a 4 * dim plain MLP)."""
    mp = model_params
    if mp.dim_ff is not None:
        return mp.dim_ff
    if is_gated(mp):
        return -(-8 * mp.dim // (3 * 64)) * 64
    return 4 * mp.dim


class HeadTransform(nn.Module):
    """BERT's MLM head transform (ModelParams.head_transform), between the last block and the output
    projection: norm(act(dense(x))), [batch, seq, dim] -> [batch, seq, dim]."""

    def __init__(self, model_params: ModelParams):
        super().__init__()
        self.dense = nn.Linear(model_params.dim, model_params.dim, bias=model_params.bias)
        self.act = make_activation(model_params.activation)
        self.norm = make_norm(model_params.dim, model_params)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.act(self.dense(x)))


def make_dropout(p: float) -> nn.Module:
    """nn.Dropout(p), or for p == 0 nn.Identity() (the same result)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def sinusoidal_positions(n_positions: int, dim: int) -> Tensor:
    """The fixed encodings of "Attention is all you need": [n_positions, dim], sin on even and cos on
    odd features, wavelengths from 2*pi to 10000*2*pi."""
    position = torch.arange(n_positions, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    encoding = torch.zeros(n_positions, dim)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return encoding
