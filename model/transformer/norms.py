"""The norm chosen by ModelParams.norm, used for every norm of the model (norm1, norm2,
decoder.final_norm, and self_attn.q_norm / k_norm with qk_norm)."""
from torch import nn

from model.model_params import ModelParams

NORMS = ("layernorm", "rmsnorm")


def make_norm(size: int, model_params: ModelParams) -> nn.Module:
    """nn.LayerNorm (with a bias when model_params.bias) or nn.RMSNorm (x / rms(x) * weight, no bias,
    as Llama) over the last `size` features, with model_params.layer_norm_eps."""
    mp = model_params
    if mp.norm == "layernorm":
        return nn.LayerNorm(size, eps=mp.layer_norm_eps, bias=mp.bias)
    if mp.norm == "rmsnorm":
        return nn.RMSNorm(size, eps=mp.layer_norm_eps)
    raise ValueError(f"unknown norm {mp.norm!r}: choose one of {', '.join(NORMS)}")
