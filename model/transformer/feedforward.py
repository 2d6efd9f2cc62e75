"""Feed-forward parts chosen by ModelParams.activation: the activation and the hidden width.

Plain activations: ff(x) = linear2(act(linear1(x))).
Gated ones (swiglu, geglu; Shazeer 2020, as Llama / Mistral / Gemma):
    ff(x) = linear2(act(gate(x)) * linear1(x))        (linear1 is the "up" projection)
The block (transformerencoderlayer.py) owns linear1, gate and linear2; this file only names things.
"""
from torch import nn

from model.model_params import ModelParams

PLAIN_ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
GATED_ACTIVATIONS = ("swiglu", "geglu")
ACTIVATIONS = PLAIN_ACTIVATIONS + GATED_ACTIVATIONS


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
