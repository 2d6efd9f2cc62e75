"""GPT-NeoX / Pythia (EleutherAI/pythia-*, gpt-neox-20b): transformers' GPTNeoXForCausalLM <-> our LM.

Semantics: layernorm with biases, parallel residual when use_parallel_residual (Pythia):
x + attn(ln1(x)) + mlp(ln2(x)) = our parallel_block; rotary embeddings on the first
int(head_dim * rotary_pct) dims of each head (Pythia: 25%) = our rope with rotary_frac; exact gelu;
an untied head (lm_head; the hub files call it embed_out, which transformers renames).

query_key_value is fused per head: its rows are [heads, (q, k, v), head_dim], where our in_proj
stacks [(q, k, v), heads, head_dim], so it is re-stacked (and back when exporting).

    gpt_neox.embed_in.weight                        -> embedding.weight
    gpt_neox.layers.{i}.input_layernorm.{w,b}       -> decoder.layers.{i}.norm1.{w,b}
    gpt_neox.layers.{i}.post_attention_layernorm.*  -> decoder.layers.{i}.norm2.*
    gpt_neox.layers.{i}.attention.query_key_value.* -> decoder.layers.{i}.self_attn.in_proj_*   (re-stacked)
    gpt_neox.layers.{i}.attention.dense.*           -> decoder.layers.{i}.self_attn.out_proj.*
    gpt_neox.layers.{i}.mlp.dense_h_to_4h.*         -> decoder.layers.{i}.linear1.*
    gpt_neox.layers.{i}.mlp.dense_4h_to_h.*         -> decoder.layers.{i}.linear2.*
    gpt_neox.final_layer_norm.*                     -> decoder.final_norm.*
    lm_head.weight (embed_out in older files)       -> out_proj.weight  (tied to embed_in when the config says so)
"""
from typing import Any, Callable, List

from torch import Tensor

from hf_families.family import Family, refuse, rope_problems, rope_settings
from hf_families.mapping import Rule, expand
from model.model_params import ModelParams

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def model_params(config: Any) -> ModelParams:
    problems = rope_problems(config)
    if config.hidden_act not in ACTIVATIONS:
        problems.append(f"hidden_act={config.hidden_act!r} (supported: {', '.join(ACTIVATIONS)})")
    if config.hidden_size % config.num_attention_heads:
        problems.append(f"hidden_size {config.hidden_size} not divisible by {config.num_attention_heads} heads")
    refuse("GPT-NeoX", problems)
    return ModelParams(
        layer_architecture="custom-transformer",
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        dim=config.hidden_size,
        dim_ff=config.intermediate_size,
        dropout=0.0,
        activation=ACTIVATIONS[config.hidden_act],
        norm="layernorm",
        norm_first=True,
        final_norm=True,
        parallel_block=bool(config.use_parallel_residual),
        positional_encoding="rope",
        rope_base=rope_settings(config)["rope_theta"],
        rotary_frac=rope_settings(config)["partial_rotary_factor"],
        max_seq_len=config.max_position_embeddings,
        tie_embeddings=bool(config.tie_word_embeddings),
        bias=True,  # layernorms and the MLP always have biases; attention ones per attention_bias
        layer_norm_eps=config.layer_norm_eps,
    )


def restack(n_heads: int, to_ours: bool) -> Callable[[Tensor], Tensor]:
    """[heads, 3, head_dim] rows (theirs) <-> [3, heads, head_dim] rows (ours), for weights and biases."""
    def move(t: Tensor) -> Tensor:
        rest = t.shape[1:]
        grouped = t.reshape(n_heads, 3, -1, *rest) if to_ours else t.reshape(3, n_heads, -1, *rest)
        return grouped.transpose(0, 1).reshape(t.shape)
    return move


def rules(config: Any, mp: ModelParams) -> List[Rule]:
    top = [Rule("embedding.weight", ("gpt_neox.embed_in.weight",)),
           Rule("decoder.final_norm.weight", ("gpt_neox.final_layer_norm.weight",)),
           Rule("decoder.final_norm.bias", ("gpt_neox.final_layer_norm.bias",)),
           Rule("embedding.weight", ("lm_head.weight",), tied=True) if mp.tie_embeddings
           else Rule("out_proj.weight", ("lm_head.weight",))]
    layer = "gpt_neox.layers.{i}."
    ours = "decoder.layers.{i}."
    block = [Rule(ours + f"{o}.{p}", (layer + f"{t}.{p}",)) for o, t in
             (("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"),
              ("linear1", "mlp.dense_h_to_4h"), ("linear2", "mlp.dense_4h_to_h")) for p in ("weight", "bias")]
    qkv = layer + "attention.query_key_value."
    block += [Rule(ours + "self_attn.in_proj_weight", (qkv + "weight",), restack(mp.n_heads, True),
                   restack(mp.n_heads, False)),
              Rule(ours + "self_attn.out_proj.weight", (layer + "attention.dense.weight",))]
    if getattr(config, "attention_bias", True):
        block += [Rule(ours + "self_attn.in_proj_bias", (qkv + "bias",), restack(mp.n_heads, True),
                       restack(mp.n_heads, False)),
                  Rule(ours + "self_attn.out_proj.bias", (layer + "attention.dense.bias",))]
    else:  # no attention biases in the checkpoint: ours are zeros
        block += [Rule(ours + "self_attn.in_proj_bias", ()), Rule(ours + "self_attn.out_proj.bias", ())]
    return expand(top, block, mp.n_layers)


GPT_NEOX = Family(
    name="GPT-NeoX",
    model_types=("gpt_neox",),
    model_params=model_params,
    rules=rules,
    # causal-mask and rotary buffers that the hub's Pythia files store next to the weights
    ignored=(r"\.attention\.(masked_)?bias$", r"\.rotary_emb\.inv_freq$"),
)
