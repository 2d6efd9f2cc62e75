"""GPT-2 (gpt2, gpt2-medium/large/xl, distilgpt2, fine-tunes): transformers' GPT2LMHeadModel <-> our LM.

GPT-2 stores its linear layers as `Conv1D` with weights shaped [in, out]; ours are nn.Linear-style
[out, in], so those are transposed (T). The q, k, v blocks of c_attn stay in that order, as in our
in_proj, and each splits into heads the same way.

    transformer.wte.weight              -> embedding.weight   (lm_head.weight is tied to it)
    transformer.wpe.weight              -> pos_embedding.weight
    transformer.h.{i}.ln_1.{w,b}        -> decoder.layers.{i}.norm1.{w,b}
    transformer.h.{i}.attn.c_attn.{w,b} -> decoder.layers.{i}.self_attn.in_proj_{weight,bias}  (T)
    transformer.h.{i}.attn.c_proj.{w,b} -> decoder.layers.{i}.self_attn.out_proj.{w,b}          (T)
    transformer.h.{i}.ln_2.{w,b}        -> decoder.layers.{i}.norm2.{w,b}
    transformer.h.{i}.mlp.c_fc.{w,b}    -> decoder.layers.{i}.linear1.{w,b}                     (T)
    transformer.h.{i}.mlp.c_proj.{w,b}  -> decoder.layers.{i}.linear2.{w,b}                     (T)
    transformer.ln_f.{w,b}              -> decoder.final_norm.{w,b}
    lm_head.weight                      -> out_proj.weight    (only when the checkpoint unties it)

Exporting: a run with learned positions, layernorm (pre-LN, final norm) and relu/gelu/gelu_tanh is
a GPT-2. Its biases are zero when it was trained with bias=False; sinusoidal positions are written
as the (fixed) values of wpe, and positional_encoding="none" as a zero wpe: the same computation.
"""
from typing import Any, List

from hf_families.family import ANY, Family, refuse
from hf_families.mapping import Rule, expand, transpose
from model.model_params import ModelParams

# transformers' activation_function name -> ours ("gelu_new" is GPT-2's tanh approximation)
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
EXPORTED_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
LINEARS = {"attn.c_attn": ("self_attn.in_proj_weight", "self_attn.in_proj_bias"),
           "attn.c_proj": ("self_attn.out_proj.weight", "self_attn.out_proj.bias"),
           "mlp.c_fc": ("linear1.weight", "linear1.bias"), "mlp.c_proj": ("linear2.weight", "linear2.bias")}
NORMS = {"ln_1": "norm1", "ln_2": "norm2"}


def model_params(config: Any) -> ModelParams:
    """Our ModelParams describing exactly GPT-2's architecture (dropout 0: for inference)."""
    problems = []
    if config.activation_function not in ACTIVATIONS:
        problems.append(f"activation_function={config.activation_function!r} (supported: {', '.join(ACTIVATIONS)})")
    if not config.scale_attn_weights:
        problems.append("scale_attn_weights=False (we always scale scores by 1/sqrt(head_dim))")
    if config.scale_attn_by_inverse_layer_idx:
        problems.append("scale_attn_by_inverse_layer_idx=True")
    if config.add_cross_attention:
        problems.append("add_cross_attention=True")
    if getattr(config, "reorder_and_upcast_attn", False):
        problems.append("reorder_and_upcast_attn=True")
    refuse("GPT-2", problems)
    return ModelParams(
        layer_architecture="custom-transformer",
        n_layers=config.n_layer,
        n_heads=config.n_head,
        dim=config.n_embd,
        dim_ff=config.n_inner or 4 * config.n_embd,
        dropout=0.0,
        activation=ACTIVATIONS[config.activation_function],
        norm_first=True,
        final_norm=True,
        positional_encoding="learned",
        max_seq_len=config.n_positions,
        tie_embeddings=config.tie_word_embeddings,
        bias=True,
        layer_norm_eps=config.layer_norm_epsilon,
    )


def rules(config: Any, mp: ModelParams) -> List[Rule]:
    """The mapping table. With mp.bias False (exporting only) GPT-2's biases are zeros."""
    top = [Rule("embedding.weight", ("transformer.wte.weight",)),
           Rule("pos_embedding.weight", ("transformer.wpe.weight",)),
           Rule("decoder.final_norm.weight", ("transformer.ln_f.weight",)),
           Rule("decoder.final_norm.bias" if mp.bias else None, ("transformer.ln_f.bias",)),
           Rule("embedding.weight", ("lm_head.weight",), tied=True) if mp.tie_embeddings
           else Rule("out_proj.weight", ("lm_head.weight",))]
    block = []
    for theirs, ours in NORMS.items():
        block.append(Rule(f"decoder.layers.{{i}}.{ours}.weight", (f"transformer.h.{{i}}.{theirs}.weight",)))
        block.append(Rule(f"decoder.layers.{{i}}.{ours}.bias" if mp.bias else None,
                          (f"transformer.h.{{i}}.{theirs}.bias",)))
    for theirs, (weight, bias) in LINEARS.items():
        block.append(Rule(f"decoder.layers.{{i}}.{weight}", (f"transformer.h.{{i}}.{theirs}.weight",), transpose))
        block.append(Rule(f"decoder.layers.{{i}}.{bias}" if mp.bias else None, (f"transformer.h.{{i}}.{theirs}.bias",)))
    return expand(top, block, mp.n_layers)


def export_config(mp: ModelParams, tokenizer: Any) -> Any:
    from transformers import GPT2Config
    return GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=mp.max_seq_len, n_embd=mp.dim, n_layer=mp.n_layers,
        n_head=mp.n_heads, n_inner=mp.dim_ff, activation_function=EXPORTED_ACTIVATIONS[mp.activation],
        resid_pdrop=mp.dropout, embd_pdrop=mp.dropout, attn_pdrop=mp.dropout, layer_norm_epsilon=mp.layer_norm_eps,
        tie_word_embeddings=mp.tie_embeddings, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id, architectures=["GPT2LMHeadModel"])


GPT2 = Family(
    name="GPT-2",
    model_types=("gpt2",),
    model_params=model_params,
    rules=rules,
    # causal-mask buffers that older checkpoints (e.g. the hub's original "gpt2") store next to the weights
    ignored=(r"(^|\.)h\.\d+\.attn\.(masked_)?bias$",),
    export_config=export_config,
    exports={
        "layer_architecture": (("torch-transformer", "custom-transformer"), "GPT-2 is a transformer"),
        "n_layers": (ANY, ""), "n_heads": (ANY, ""), "dim": (ANY, ""), "dim_ff": (ANY, ""), "dropout": (ANY, ""),
        "max_seq_len": (ANY, ""), "tie_embeddings": (ANY, ""), "bias": (ANY, ""), "layer_norm_eps": (ANY, ""),
        "activation": (tuple(EXPORTED_ACTIVATIONS), "GPT-2's activation_function has these"),
        "norm_first": ((True,), "GPT-2 is pre-LN"),
        "final_norm": ((True,), "GPT-2 always has ln_f"),
        "positional_encoding": (("learned", "sinusoidal", "none"), "GPT-2 adds a position table wpe"),
    },
)
