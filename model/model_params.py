"""ModelParams: the architecture. Plain dataclass, no torch import (configs parse without it).

Each field's trailing comment is its description (`python3 main.py --list-params`).
Add an idea's flag as one more line here; configs, `--set`, run names and saving pick it up.
"""
from dataclasses import dataclass
from typing import Optional


@dataclass
class ModelParams:
    layer_architecture: str = "custom-transformer"  # "custom-transformer" (our editable layer, model/transformer/), "torch-transformer" (PyTorch's nn.TransformerEncoderLayer, same weights: the reference to compare an edit against), or a recurrent baseline: "lstm", "gru", "rnn" (tanh)
    n_layers: int = 2  # number of transformer blocks
    n_heads: int = 4  # attention heads per block
    dim: int = 128  # model (residual stream) width
    n_kv_heads: Optional[int] = None  # key/value heads (grouped-query attention; 1 = multi-query); must divide n_heads; None = n_heads
    dim_ff: Optional[int] = None  # feed-forward hidden width; None means 4 * dim (8/3 * dim rounded up to a multiple of 64 for swiglu/geglu)
    dropout: float = 0.0  # dropout on attention weights, residual branches and embeddings
    activation: str = "gelu"  # feed-forward activation: relu, gelu, gelu_tanh, or gated swiglu / geglu (linear2(act(gate(x)) * linear1(x)))
    norm: str = "layernorm"  # every norm in the model (blocks, final, qk_norm): layernorm or rmsnorm, with epsilon layer_norm_eps
    norm_first: bool = True  # pre-LN (GPT-2 style) when True, post-LN (original transformer) when False
    final_norm: bool = True  # a norm after the last block (GPT-2's ln_f)
    parallel_block: bool = False  # x + attn(norm1(x)) + ff(norm2(x)): attention and feed-forward in parallel (GPT-J, GPT-NeoX, Pythia); needs norm_first
    qk_norm: bool = False  # normalise each head's queries and keys (with `norm`) before the scores
    positional_encoding: str = "learned"  # learned, sinusoidal, rope (rotary on q and k), alibi (linear score biases) or none
    rope_base: float = 10000.0  # rope: the base of the rotary frequencies (Llama 2: 10000, Llama 3: 500000)
    rotary_frac: float = 1.0  # rope: the fraction of each head's dims that rotate (GPT-NeoX / Pythia's rotary_pct)
    max_seq_len: Optional[int] = None  # context length in tokens; None takes DataParams.max_seq_len
    tie_embeddings: bool = True  # share the input embedding with the output projection
    bias: bool = True  # biases in linear layers and LayerNorms (RMSNorm has none)
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon
    embedding_norm: bool = False  # a norm (with `norm`) on the input embeddings, tokens + positions, before the first block (BERT's embeddings.LayerNorm)
    head_transform: bool = False  # before the output projection: dense (dim -> dim), the activation, a norm (BERT's MLM head transform)
    output_bias: bool = False  # a bias on the output projection's logits (BERT's MLM decoder bias)
    objective: str = "causal"  # what the model learns (model/objectives.py): "causal" (next token), "masked" (BERT's masked LM, attention both ways), "prefix" (prefix LM: both ways over a prefix, causal after it, loss after it) or "fim" (fill-in-the-middle, trained causally)
    mask_frac: float = 0.15  # masked: fraction of each sample's tokens chosen for the loss (of those 80% become <mask>, 10% a random token, 10% stay)
    fim_rate: float = 0.5  # fim: fraction of training samples rearranged as <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
