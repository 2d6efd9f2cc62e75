"""OPT (facebook/opt-125m, -1.3b, ... except opt-350m): transformers' OPTForCausalLM <-> our LM.

Semantics: GPT-2-like pre-LN blocks (layernorm with biases, ReLU MLP, final layernorm), separate
q/k/v projections (stacked into our in_proj), learned positions and a tied head. OPT's position
table has two extra leading rows (transformers' `offset = 2`): position p reads row p + 2, so rows
0 and 1 (never read for unpadded text) are left out. opt-350m (project_in/out, post-LN) is refused.

    model.decoder.embed_tokens.weight              -> embedding.weight
    model.decoder.embed_positions.weight[2:]       -> pos_embedding.weight
    model.decoder.layers.{i}.self_attn_layer_norm.* -> decoder.layers.{i}.norm1.*
    model.decoder.layers.{i}.self_attn.{q,k,v}_proj.* -> decoder.layers.{i}.self_attn.in_proj_*  (stacked)
    model.decoder.layers.{i}.self_attn.out_proj.*  -> decoder.layers.{i}.self_attn.out_proj.*
    model.decoder.layers.{i}.final_layer_norm.*    -> decoder.layers.{i}.norm2.*
    model.decoder.layers.{i}.fc1.*, fc2.*          -> decoder.layers.{i}.linear1.*, linear2.*
    model.decoder.final_layer_norm.*               -> decoder.final_norm.*
    lm_head.weight                                 -> (tied to embed_tokens)
"""
from typing import Any, List

from torch import Tensor

from hf_families.family import Family, refuse
from hf_families.mapping import Rule, concat, expand
from model.model_params import ModelParams

ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh"}
POSITION_OFFSET = 2


def model_params(config: Any) -> ModelParams:
    problems = []
    if config.word_embed_proj_dim != config.hidden_size:
        problems.append(f"word_embed_proj_dim={config.word_embed_proj_dim} != hidden_size (project_in/project_out)")
    if not config.do_layer_norm_before or getattr(config, "_remove_final_layer_norm", False):
        problems.append("do_layer_norm_before=False or _remove_final_layer_norm (opt-350m's post-LN)")
    if not config.enable_bias or not config.layer_norm_elementwise_affine:
        problems.append("enable_bias=False or layer_norm_elementwise_affine=False")
    if config.activation_function not in ACTIVATIONS:
        problems.append(f"activation_function={config.activation_function!r} (supported: {', '.join(ACTIVATIONS)})")
    refuse("OPT", problems)
    return ModelParams(
        layer_architecture="custom-transformer", n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads, dim=config.hidden_size, dim_ff=config.ffn_dim, dropout=0.0,
        activation=ACTIVATIONS[config.activation_function], norm_first=True, final_norm=True,
        positional_encoding="learned", max_seq_len=config.max_position_embeddings,
        tie_embeddings=bool(config.tie_word_embeddings), bias=True, layer_norm_eps=1e-5)


def skip_offset_rows(table: Tensor) -> Tensor:
    return table[POSITION_OFFSET:]


def rules(config: Any, mp: ModelParams) -> List[Rule]:
    top = [Rule("embedding.weight", ("model.decoder.embed_tokens.weight",)),
           Rule("pos_embedding.weight", ("model.decoder.embed_positions.weight",), skip_offset_rows),
           Rule("decoder.final_norm.weight", ("model.decoder.final_layer_norm.weight",)),
           Rule("decoder.final_norm.bias", ("model.decoder.final_layer_norm.bias",)),
           Rule("embedding.weight", ("lm_head.weight",), tied=True) if mp.tie_embeddings
           else Rule("out_proj.weight", ("lm_head.weight",))]
    layer, ours = "model.decoder.layers.{i}.", "decoder.layers.{i}."
    block = [Rule(ours + f"self_attn.in_proj_{p}", tuple(layer + f"self_attn.{x}_proj.{p}" for x in "qkv"), concat)
             for p in ("weight", "bias")]
    block += [Rule(ours + f"{o}.{p}", (layer + f"{t}.{p}",)) for o, t in
              (("self_attn.out_proj", "self_attn.out_proj"), ("norm1", "self_attn_layer_norm"),
               ("norm2", "final_layer_norm"), ("linear1", "fc1"), ("linear2", "fc2")) for p in ("weight", "bias")]
    return expand(top, block, mp.n_layers)


OPT = Family(name="OPT", model_types=("opt",), model_params=model_params, rules=rules)
