"""The architecture checks of ModelParams: every problem listed at once, with the fix, before any model is built."""
from typing import List

from model.model_params import ModelParams
from model.objectives import BIDIRECTIONAL, OBJECTIVES
from model.recurrent import RECURRENT_ARCHITECTURES, is_recurrent
from model.transformer.parts import ACTIVATIONS, NORMS
from model.transformer.torch_f_multi_head_attention_forward import rotary_dims
from model.transformer.transformer import LAYER_ARCHITECTURES

POSITIONAL_ENCODINGS = ("learned", "sinusoidal", "rope", "alibi", "none")


def check_model_params(mp: ModelParams) -> None:
    """Raise ValueError listing every problem with the architecture settings."""
    problems = []
    if not isinstance(mp.max_seq_len, int) or mp.max_seq_len < 1:
        problems.append(f"max_seq_len must be a positive int, got {mp.max_seq_len!r} "
                        "(the run code copies DataParams.max_seq_len into it when it is None)")
    if mp.n_layers < 1 or mp.n_heads < 1 or mp.dim < 1:
        problems.append(f"need n_layers >= 1, n_heads >= 1, dim >= 1 (got {mp.n_layers}, {mp.n_heads}, {mp.dim})")
    elif is_recurrent(mp):
        pass  # no heads, no attention: n_heads and the transformer options are unused
    elif mp.dim % mp.n_heads:
        problems.append(f"dim ({mp.dim}) must be divisible by n_heads ({mp.n_heads})")
    else:
        problems += transformer_option_problems(mp)
    if mp.dim_ff is not None and mp.dim_ff < 1:
        problems.append(f"dim_ff must be positive or None (= 4 * dim), got {mp.dim_ff}")
    if not 0 <= mp.dropout < 1:
        problems.append(f"dropout must be in [0, 1), got {mp.dropout}")
    if not mp.layer_norm_eps > 0:  # also catches nan
        problems.append(f"layer_norm_eps must be > 0, got {mp.layer_norm_eps}")
    problems += objective_problems(mp)
    for field, value, options in (("activation", mp.activation, ACTIVATIONS),
                                  ("positional_encoding", mp.positional_encoding, POSITIONAL_ENCODINGS),
                                  ("norm", mp.norm, NORMS),
                                  ("layer_architecture", mp.layer_architecture,
                                   LAYER_ARCHITECTURES + RECURRENT_ARCHITECTURES)):
        if value not in options:
            problems.append(f"unknown {field} {value!r}: choose one of {', '.join(options)}")
    if problems:
        raise ValueError("invalid ModelParams:\n  " + "\n  ".join(problems))


def objective_problems(mp: ModelParams) -> List[str]:
    """Problems with objective, mask_frac and fim_rate (model/objectives.py)."""
    if mp.objective not in OBJECTIVES:
        return [f"unknown objective {mp.objective!r}: choose one of {', '.join(OBJECTIVES)}"]
    problems = []
    if mp.objective in BIDIRECTIONAL and is_recurrent(mp):
        problems.append(f"objective={mp.objective!r} attends both ways, which a recurrent model "
                        f"(layer_architecture={mp.layer_architecture!r}) cannot: it reads left to right. Use "
                        f"objective 'causal' or 'fim' with it, or a transformer (layer_architecture='custom-transformer')")
    if mp.objective == "masked" and not 0 < mp.mask_frac <= 1:
        problems.append(f"mask_frac is the fraction of tokens chosen for the masked loss: give 0 < mask_frac <= 1, "
                        f"got {mp.mask_frac}")
    if mp.objective == "fim" and not 0 <= mp.fim_rate <= 1:
        problems.append(f"fim_rate is the fraction of training samples rearranged for fill-in-the-middle: give "
                        f"0 <= fim_rate <= 1, got {mp.fim_rate}")
    return problems


def transformer_option_problems(mp: ModelParams) -> List[str]:
    """Problems with the transformer options (n_kv_heads, rope, parallel_block, ...), and the options
    the torch-transformer path (nn.TransformerEncoderLayer) cannot honour. Needs dim % n_heads == 0."""
    problems = []
    n_kv = mp.n_kv_heads
    if n_kv is not None and (isinstance(n_kv, bool) or not isinstance(n_kv, int) or n_kv < 1 or mp.n_heads % n_kv):
        problems.append(f"n_kv_heads must be a positive divisor of n_heads ({mp.n_heads}) or None (= n_heads), "
                        f"got {n_kv!r}")
    if mp.positional_encoding == "rope":
        n_rotary = rotary_dims(mp)
        if not 0 < mp.rotary_frac <= 1 or n_rotary < 2 or n_rotary % 2:
            problems.append(f"rotary_frac ({mp.rotary_frac}) must be in (0, 1] and rotate an even number >= 2 of "
                            f"each head's {mp.dim // mp.n_heads} dims (int(head_dim * rotary_frac) = {n_rotary})")
        if not mp.rope_base > 0:
            problems.append(f"rope_base must be positive, got {mp.rope_base}")
    if mp.parallel_block and not mp.norm_first:
        problems.append("parallel_block=True needs norm_first=True (attention and feed-forward both read the "
                        "normed block input, as GPT-J / GPT-NeoX); a post-LN parallel block is not defined")
    if mp.layer_architecture == "torch-transformer":
        torch_cannot = [("positional_encoding", mp.positional_encoding, mp.positional_encoding in ("rope", "alibi")),
                        ("norm", mp.norm, mp.norm != "layernorm"),
                        ("activation", mp.activation, mp.activation in ("swiglu", "geglu")),
                        ("n_kv_heads", mp.n_kv_heads, mp.n_kv_heads not in (None, mp.n_heads)),
                        ("qk_norm", mp.qk_norm, mp.qk_norm),
                        ("parallel_block", mp.parallel_block, mp.parallel_block)]
        for field, value, unsupported in torch_cannot:
            if unsupported:
                problems.append(f"{field}={value!r} is not supported by layer_architecture='torch-transformer' "
                                f"(PyTorch's nn.TransformerEncoderLayer cannot do it): use "
                                f"layer_architecture='custom-transformer', which supports it")
    return problems
