"""Llama and its close relatives: transformers' LlamaForCausalLM (Llama 2 / 3, TinyLlama, SmolLM),
MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM <-> our LM.

Semantics: pre-norm RMSNorm blocks and final norm, rotary embeddings on every head dim (transformers'
rotate_half layout, which ours is), SwiGLU feed-forward down(silu(gate(x)) * up(x)), grouped-query
attention (num_key_value_heads), no position table, tied or untied head. Qwen2 adds q/k/v biases,
Qwen3 per-head RMSNorms on q and k (our qk_norm); Llama may have attention_bias / mlp_bias.

    model.embed_tokens.weight                     -> embedding.weight
    model.layers.{i}.input_layernorm.weight       -> decoder.layers.{i}.norm1.weight
    model.layers.{i}.self_attn.{q,k,v}_proj.*     -> decoder.layers.{i}.self_attn.in_proj_*  (stacked q, k, v)
    model.layers.{i}.self_attn.o_proj.*           -> decoder.layers.{i}.self_attn.out_proj.*
    model.layers.{i}.self_attn.{q,k}_norm.weight  -> decoder.layers.{i}.self_attn.{q,k}_norm.weight  (Qwen3)
    model.layers.{i}.post_attention_layernorm.weight -> decoder.layers.{i}.norm2.weight
    model.layers.{i}.mlp.up_proj.*                -> decoder.layers.{i}.linear1.*
    model.layers.{i}.mlp.gate_proj.*              -> decoder.layers.{i}.gate.*
    model.layers.{i}.mlp.down_proj.*              -> decoder.layers.{i}.linear2.*
    model.norm.weight                             -> decoder.final_norm.weight
    lm_head.weight                                -> out_proj.weight  (tied to embed_tokens when the config says so)

Our `bias` flag is all or nothing: when the checkpoint has some biases (Qwen2's q/k/v), the others
(o_proj, the MLP) are zeros in our LM, which computes the same.

Mistral's sliding window only acts on sequences longer than the window: the LM's context is capped at
it (min(max_position_embeddings, sliding_window)), so every sequence it reads is computed exactly.
"""
from typing import Any, Dict, List

from hf_families.family import ANY, Family, config_value, refuse, rope_problems, rope_settings
from hf_families.mapping import Rule, concat, expand, split_rows
from model.model_params import ModelParams

# which projections have biases, per model_type: (q/k/v, o, mlp), read from the config where it says
BIASES = {
    "llama": lambda c: (bool(c.attention_bias), bool(c.attention_bias), bool(getattr(c, "mlp_bias", False))),
    "mistral": lambda c: (False, False, False),
    "qwen2": lambda c: (True, False, False),
    "qwen3": lambda c: (bool(c.attention_bias), bool(c.attention_bias), False),
}


def model_params(config: Any) -> ModelParams:
    problems = rope_problems(config)
    heads = config.num_attention_heads
    kv_heads = config_value(config, "num_key_value_heads", default=heads)
    head_dim = config_value(config, "head_dim", default=config.hidden_size // heads)
    if head_dim * heads != config.hidden_size:
        problems.append(f"head_dim={head_dim} with {heads} heads != hidden_size {config.hidden_size} "
                        f"(our heads split the model width)")
    if config.hidden_act != "silu":
        problems.append(f"hidden_act={config.hidden_act!r} (we map silu -> swiglu)")
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        problems.append(f"pretraining_tp={config.pretraining_tp}")
    if config.model_type in ("qwen2", "qwen3") and getattr(config, "use_sliding_window", False):
        problems.append("use_sliding_window=True (per-layer sliding windows)")
    refuse(config.model_type, problems)
    context = config.max_position_embeddings
    window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
    q_bias, o_bias, mlp_bias = BIASES[config.model_type](config)
    return ModelParams(
        layer_architecture="custom-transformer",
        n_layers=config.num_hidden_layers,
        n_heads=heads,
        n_kv_heads=kv_heads if kv_heads != heads else None,
        dim=config.hidden_size,
        dim_ff=config.intermediate_size,
        dropout=0.0,
        activation="swiglu",
        norm="rmsnorm",
        norm_first=True,
        final_norm=True,
        qk_norm=config.model_type == "qwen3",
        positional_encoding="rope",
        rope_base=rope_settings(config)["rope_theta"],
        rotary_frac=1.0,
        max_seq_len=min(context, window) if window else context,
        tie_embeddings=bool(config.tie_word_embeddings),
        bias=q_bias or o_bias or mlp_bias,
        layer_norm_eps=config.rms_norm_eps,
    )


def rules(config: Any, mp: ModelParams) -> List[Rule]:
    head_dim = mp.dim // mp.n_heads
    q_rows, kv_rows = mp.n_heads * head_dim, (mp.n_kv_heads or mp.n_heads) * head_dim
    q_bias, o_bias, mlp_bias = BIASES[config.model_type](config) if config is not None else (mp.bias,) * 3
    top = [Rule("embedding.weight", ("model.embed_tokens.weight",)),
           Rule("decoder.final_norm.weight", ("model.norm.weight",)),
           Rule("embedding.weight", ("lm_head.weight",), tied=True) if mp.tie_embeddings
           else Rule("out_proj.weight", ("lm_head.weight",))]
    layer, ours = "model.layers.{i}.", "decoder.layers.{i}."
    qkv = tuple(layer + f"self_attn.{p}_proj." for p in "qkv")
    block = [Rule(ours + "norm1.weight", (layer + "input_layernorm.weight",)),
             Rule(ours + "norm2.weight", (layer + "post_attention_layernorm.weight",)),
             Rule(ours + "self_attn.in_proj_weight", tuple(p + "weight" for p in qkv), concat,
                  split_rows(q_rows, kv_rows, kv_rows)),
             Rule(ours + "self_attn.out_proj.weight", (layer + "self_attn.o_proj.weight",))]
    linears: Dict[str, str] = {"linear1": "mlp.up_proj", "gate": "mlp.gate_proj", "linear2": "mlp.down_proj"}
    block += [Rule(ours + f"{o}.weight", (layer + f"{t}.weight",)) for o, t in linears.items()]
    if mp.bias:  # each bias from the checkpoint, or zeros where this family has none
        block.append(Rule(ours + "self_attn.in_proj_bias",
                          tuple(p + "bias" for p in qkv) if q_bias else (), concat, split_rows(q_rows, kv_rows, kv_rows)))
        block.append(Rule(ours + "self_attn.out_proj.bias", (layer + "self_attn.o_proj.bias",) if o_bias else ()))
        block += [Rule(ours + f"{o}.bias", (layer + f"{t}.bias",) if mlp_bias else ()) for o, t in linears.items()]
    if mp.qk_norm:
        block += [Rule(ours + f"self_attn.{p}_norm.weight", (layer + f"self_attn.{p}_norm.weight",)) for p in "qk"]
    return expand(top, block, mp.n_layers)


def export_config(mp: ModelParams, tokenizer: Any) -> Any:
    """A LlamaConfig (Qwen3Config with qk_norm) describing `mp` (whose dim_ff is resolved)."""
    from transformers import LlamaConfig, Qwen3Config
    config_class = Qwen3Config if mp.qk_norm else LlamaConfig
    extra = {} if mp.qk_norm else {"mlp_bias": mp.bias}
    return config_class(
        vocab_size=tokenizer.vocab_size, hidden_size=mp.dim, intermediate_size=mp.dim_ff,
        num_hidden_layers=mp.n_layers, num_attention_heads=mp.n_heads, num_key_value_heads=mp.n_kv_heads or mp.n_heads,
        head_dim=mp.dim // mp.n_heads, hidden_act="silu", max_position_embeddings=mp.max_seq_len,
        rms_norm_eps=mp.layer_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": mp.rope_base},
        attention_bias=mp.bias, attention_dropout=mp.dropout, tie_word_embeddings=mp.tie_embeddings,
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, **extra,
        architectures=["Qwen3ForCausalLM" if mp.qk_norm else "LlamaForCausalLM"])


def export_combinations(mp: ModelParams) -> List[str]:
    if mp.qk_norm and mp.bias:
        return ["qk_norm=True with bias=True (written as Qwen3, which has no feed-forward biases)"]
    return []


LLAMA = Family(
    name="Llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    model_params=model_params,
    rules=rules,
    ignored=(r"\.rotary_emb\.inv_freq$",),
    export_config=export_config,
    export_combinations=export_combinations,
    exports={
        "layer_architecture": (("torch-transformer", "custom-transformer"), "Llama is a transformer"),
        "n_layers": (ANY, ""), "n_heads": (ANY, ""), "n_kv_heads": (ANY, ""), "dim": (ANY, ""), "dim_ff": (ANY, ""),
        "dropout": (ANY, ""), "max_seq_len": (ANY, ""), "tie_embeddings": (ANY, ""), "layer_norm_eps": (ANY, ""),
        "rope_base": (ANY, ""), "qk_norm": (ANY, "written as Qwen3, Llama with q/k norms"),
        "bias": ((False, True), "attention_bias and mlp_bias"),
        "activation": (("swiglu",), "Llama's MLP is SwiGLU"),
        "norm": (("rmsnorm",), "Llama normalises with RMSNorm"),
        "norm_first": ((True,), "Llama is pre-norm"),
        "final_norm": ((True,), "Llama always has a final norm"),
        "positional_encoding": (("rope",), "Llama's positions are rotary"),
        "rotary_frac": ((1.0,), "Llama rotates every head dim"),
    },
)
