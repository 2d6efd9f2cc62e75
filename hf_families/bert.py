"""BERT and RoBERTa (bert-base/large, cased/uncased, small BERTs; roberta-base/large and checkpoints of that
model_type): transformers' BertForMaskedLM / RobertaForMaskedLM <-> our LM with objective "masked".

Semantics, each a ModelParams option: post-LN blocks (norm_first=False, no final norm), a LayerNorm on the
input embeddings (embedding_norm), exact GELU, learned positions, and the MLM head's transform (dense, the
activation, LayerNorm: head_transform) before the tied decoder with its bias (output_bias).

Two parts need no option, being exact rewrites of the position table:
- the token-type embedding: our LM reads every token as type 0 (as transformers does without
  token_type_ids), and a vector added at every position is a shift of every position's embedding, so
  row 0 of token_type_embeddings is added into our position table (row 1, type B, is never read);
- RoBERTa's position offset: position p reads row p + padding_idx + 1 of its table (create_position_ids_from_
  input_ids), so the rows before that (never read by a real token) are left out, as for OPT.

    {bert,roberta}.embeddings.word_embeddings.weight          -> embedding.weight
    ...embeddings.position_embeddings.weight[offset:] + token_type_embeddings.weight[0] -> pos_embedding.weight
    ...embeddings.LayerNorm.*                                 -> embedding_norm.*
    ...encoder.layer.{i}.attention.self.{query,key,value}.*  -> decoder.layers.{i}.self_attn.in_proj_*  (stacked)
    ...encoder.layer.{i}.attention.output.dense.*             -> decoder.layers.{i}.self_attn.out_proj.*
    ...encoder.layer.{i}.attention.output.LayerNorm.*         -> decoder.layers.{i}.norm1.*
    ...encoder.layer.{i}.intermediate.dense.*                 -> decoder.layers.{i}.linear1.*
    ...encoder.layer.{i}.output.dense.*                       -> decoder.layers.{i}.linear2.*
    ...encoder.layer.{i}.output.LayerNorm.*                   -> decoder.layers.{i}.norm2.*
    cls.predictions.transform.{dense,LayerNorm}.* (RoBERTa: lm_head.{dense,layer_norm}.*) -> head_transform.{dense,norm}.*
    cls.predictions.bias (lm_head.bias)                       -> out_proj.bias  (decoder.bias is the same tensor)
    cls.predictions.decoder.weight (lm_head.decoder.weight)   -> (tied to word_embeddings)

Exporting: a masked run with post-LN, learned positions, embedding_norm, head_transform, output_bias and
a relu/gelu/gelu_tanh activation is a BertForMaskedLM (its token-type table zero, so type 0 adds nothing).
"""
from typing import Any, Callable, List, Tuple

import torch
from torch import Tensor

from hf_families.family import ANY, Family, config_value, refuse
from hf_families.mapping import Rule, concat, expand, split_rows
from model.model_params import ModelParams

ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
EXPORTED_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_new"}


def position_offset(config: Any) -> int:
    """Rows of the position table before position 0: RoBERTa's padding_idx + 1, none for BERT."""
    return config.pad_token_id + 1 if config.model_type == "roberta" else 0


def model_params(config: Any) -> ModelParams:
    """Our ModelParams describing exactly BERT's (or RoBERTa's) architecture (dropout 0: for inference)."""
    name = "RoBERTa" if config.model_type == "roberta" else "BERT"
    problems = []
    position_type = config_value(config, "position_embedding_type", default="absolute")
    if position_type != "absolute":
        problems.append(f"position_embedding_type={position_type!r} (relative position scores; we add absolute "
                        f"positions to the input only)")
    if config.hidden_act not in ACTIVATIONS:
        problems.append(f"hidden_act={config.hidden_act!r} (supported: {', '.join(ACTIVATIONS)})")
    if config.is_decoder or config.add_cross_attention:
        problems.append("is_decoder=True or add_cross_attention=True (an encoder-decoder part)")
    if not config.tie_word_embeddings:
        problems.append("tie_word_embeddings=False (the MLM decoder has its own weight)")
    refuse(name, problems)
    return ModelParams(
        layer_architecture="custom-transformer", n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads, dim=config.hidden_size, dim_ff=config.intermediate_size, dropout=0.0,
        activation=ACTIVATIONS[config.hidden_act], norm_first=False, final_norm=False, positional_encoding="learned",
        max_seq_len=config.max_position_embeddings - position_offset(config), tie_embeddings=True, bias=True,
        layer_norm_eps=config.layer_norm_eps, embedding_norm=True, head_transform=True, output_bias=True,
        objective="masked")


def position_table(offset: int, type_vocab_size: int) -> Tuple[Callable[..., Tensor], Callable[[Tensor], tuple]]:
    """(theirs -> ours, ours -> theirs) for the position table with the token-type embedding folded in."""
    def to_ours(positions: Tensor, token_types: Tensor) -> Tensor:
        return positions[offset:] + token_types[0]

    def to_theirs(table: Tensor) -> tuple:  # exporting (BERT: offset 0): type 0 adds nothing
        return table, torch.zeros(type_vocab_size, table.shape[1], dtype=table.dtype)
    return to_ours, to_theirs


def rules(config: Any, mp: ModelParams) -> List[Rule]:
    roberta = config.model_type == "roberta"
    model, emb = ("roberta", "roberta.embeddings.") if roberta else ("bert", "bert.embeddings.")
    head = ("lm_head.", "lm_head.dense.", "lm_head.layer_norm.") if roberta else \
        ("cls.predictions.", "cls.predictions.transform.dense.", "cls.predictions.transform.LayerNorm.")
    to_ours, to_theirs = position_table(position_offset(config), config.type_vocab_size)
    top = [Rule("embedding.weight", (emb + "word_embeddings.weight",)),
           Rule("pos_embedding.weight", (emb + "position_embeddings.weight", emb + "token_type_embeddings.weight"),
                to_ours, to_theirs),
           Rule("embedding_norm.weight", (emb + "LayerNorm.weight",)),
           Rule("embedding_norm.bias", (emb + "LayerNorm.bias",)),
           Rule("head_transform.dense.weight", (head[1] + "weight",)),
           Rule("head_transform.dense.bias", (head[1] + "bias",)),
           Rule("head_transform.norm.weight", (head[2] + "weight",)),
           Rule("head_transform.norm.bias", (head[2] + "bias",)),
           Rule("out_proj.bias", (head[0] + "bias",)),
           Rule("out_proj.bias", (head[0] + "decoder.bias",), tied=True),
           Rule("embedding.weight", (head[0] + "decoder.weight",), tied=True)]
    layer, ours = f"{model}.encoder.layer.{{i}}.", "decoder.layers.{i}."
    block = [Rule(ours + f"self_attn.in_proj_{p}", tuple(layer + f"attention.self.{x}.{p}" for x in ("query", "key", "value")),
                  concat, split_rows(mp.dim, mp.dim, mp.dim)) for p in ("weight", "bias")]
    block += [Rule(ours + f"{o}.{p}", (layer + f"{t}.{p}",)) for o, t in
              (("self_attn.out_proj", "attention.output.dense"), ("norm1", "attention.output.LayerNorm"),
               ("linear1", "intermediate.dense"), ("linear2", "output.dense"), ("norm2", "output.LayerNorm"))
              for p in ("weight", "bias")]
    return expand(top, block, mp.n_layers)


def export_config(mp: ModelParams, tokenizer: Any) -> Any:
    from transformers import BertConfig
    return BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=mp.dim, num_hidden_layers=mp.n_layers,
        num_attention_heads=mp.n_heads, intermediate_size=mp.dim_ff, hidden_act=EXPORTED_ACTIVATIONS[mp.activation],
        hidden_dropout_prob=mp.dropout, attention_probs_dropout_prob=mp.dropout, max_position_embeddings=mp.max_seq_len,
        type_vocab_size=2, layer_norm_eps=mp.layer_norm_eps, pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, tie_word_embeddings=True,
        architectures=["BertForMaskedLM"])


ENCODER_IGNORED = (r"(^|\.)pooler\.", r"^cls\.seq_relationship\.", r"embeddings\.position_ids$")  # pre-training heads

BERT = Family(
    name="BERT",
    model_types=("bert", "roberta"),
    model_params=model_params,
    rules=rules,
    objective="masked",
    ignored=ENCODER_IGNORED,
    export_config=export_config,
    exports={
        "layer_architecture": (("torch-transformer", "custom-transformer"), "BERT is a transformer"),
        "n_layers": (ANY, ""), "n_heads": (ANY, ""), "dim": (ANY, ""), "dim_ff": (ANY, ""), "dropout": (ANY, ""),
        "max_seq_len": (ANY, ""), "layer_norm_eps": (ANY, ""),
        "activation": (tuple(EXPORTED_ACTIVATIONS), "BERT's hidden_act has these"),
        "norm_first": ((False,), "BERT is post-LN"),
        "final_norm": ((False,), "BERT has no norm after its last block"),
        "positional_encoding": (("learned",), "BERT adds a learned position table"),
        "tie_embeddings": ((True,), "BERT's MLM decoder is tied to its word embeddings"),
        "bias": ((True,), "BERT's linear layers and LayerNorms have biases"),
        "embedding_norm": ((True,), "BERT normalises its input embeddings (embeddings.LayerNorm)"),
        "head_transform": ((True,), "BERT's MLM head has a transform (dense, activation, LayerNorm)"),
        "output_bias": ((True,), "BERT's MLM decoder has a bias"),
    },
)
