"""ModelParams: the architecture. Plain dataclass, no torch import (configs parse without it).

Each field's trailing comment is its description (`python3 main.py --list-params`).
Add an idea's flag as one more line here; configs, `--set`, run names and saving pick it up.
"""
from dataclasses import dataclass
from typing import Optional


@dataclass
class ModelParams:
    layer_architecture: str = "torch-transformer"  # "torch-transformer" (fast, fused attention), "custom-transformer" (our editable layer), or a recurrent baseline: "lstm", "gru", "rnn" (tanh)
    n_layers: int = 2  # number of transformer blocks
    n_heads: int = 4  # attention heads per block
    dim: int = 128  # model (residual stream) width
    dim_ff: Optional[int] = None  # feed-forward hidden width; None means 4 * dim
    dropout: float = 0.0  # dropout on attention weights, residual branches and embeddings
    activation: str = "gelu"  # feed-forward activation: relu, gelu or gelu_tanh
    norm_first: bool = True  # pre-LN (GPT-2 style) when True, post-LN (original transformer) when False
    final_norm: bool = True  # LayerNorm after the last block (GPT-2's ln_f)
    positional_encoding: str = "learned"  # learned, sinusoidal or none
    max_seq_len: Optional[int] = None  # context length in tokens; None takes DataParams.max_seq_len
    tie_embeddings: bool = True  # share the input embedding with the output projection
    bias: bool = True  # biases in linear layers and LayerNorms
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon
