"""DistilBERT (distilbert-base-uncased/cased and checkpoints of that model_type): transformers'
DistilBertForMaskedLM -> our LM with objective "masked".

The same computation as BERT (hf_families/bert.py: post-LN, embedding LayerNorm, exact GELU, the MLM
head's transform before the tied decoder and its bias) without token types; its LayerNorms use eps 1e-12.
With sinusoidal_pos_embds the sinusoidal table is stored in position_embeddings like a learned one.

    distilbert.embeddings.word_embeddings.weight              -> embedding.weight
    distilbert.embeddings.position_embeddings.weight          -> pos_embedding.weight
    distilbert.embeddings.LayerNorm.*                         -> embedding_norm.*
    distilbert.transformer.layer.{i}.attention.{q,k,v}_lin.*  -> decoder.layers.{i}.self_attn.in_proj_*  (stacked)
    distilbert.transformer.layer.{i}.attention.out_lin.*      -> decoder.layers.{i}.self_attn.out_proj.*
    distilbert.transformer.layer.{i}.sa_layer_norm.*          -> decoder.layers.{i}.norm1.*
    distilbert.transformer.layer.{i}.ffn.lin1.*, lin2.*       -> decoder.layers.{i}.linear1.*, linear2.*
    distilbert.transformer.layer.{i}.output_layer_norm.*      -> decoder.layers.{i}.norm2.*
    vocab_transform.*, vocab_layer_norm.*                     -> head_transform.dense.*, head_transform.norm.*
    vocab_projector.bias                                      -> out_proj.bias
    vocab_projector.weight                                    -> (tied to word_embeddings)
"""
from typing import Any, List

from hf_families.bert import ACTIVATIONS, ENCODER_IGNORED
from hf_families.family import Family, refuse
from hf_families.mapping import Rule, concat, expand
from model.model_params import ModelParams

LAYER_NORM_EPS = 1e-12  # DistilBERT's LayerNorms (not in its config)


def model_params(config: Any) -> ModelParams:
    problems = []
    if config.activation not in ACTIVATIONS:
        problems.append(f"activation={config.activation!r} (supported: {', '.join(ACTIVATIONS)})")
    if not config.tie_word_embeddings:
        problems.append("tie_word_embeddings=False (the MLM decoder has its own weight)")
    refuse("DistilBERT", problems)
    return ModelParams(
        layer_architecture="custom-transformer", n_layers=config.n_layers, n_heads=config.n_heads, dim=config.dim,
        dim_ff=config.hidden_dim, dropout=0.0, activation=ACTIVATIONS[config.activation], norm_first=False,
        final_norm=False, positional_encoding="learned", max_seq_len=config.max_position_embeddings,
        tie_embeddings=True, bias=True, layer_norm_eps=LAYER_NORM_EPS, embedding_norm=True, head_transform=True,
        output_bias=True, objective="masked")


def rules(config: Any, mp: ModelParams) -> List[Rule]:
    emb = "distilbert.embeddings."
    top = [Rule("embedding.weight", (emb + "word_embeddings.weight",)),
           Rule("pos_embedding.weight", (emb + "position_embeddings.weight",)),
           Rule("embedding_norm.weight", (emb + "LayerNorm.weight",)),
           Rule("embedding_norm.bias", (emb + "LayerNorm.bias",))]
    top += [Rule(f"head_transform.{o}.{p}", (f"{t}.{p}",)) for o, t in
            (("dense", "vocab_transform"), ("norm", "vocab_layer_norm")) for p in ("weight", "bias")]
    top += [Rule("out_proj.bias", ("vocab_projector.bias",)),
            Rule("embedding.weight", ("vocab_projector.weight",), tied=True)]
    layer, ours = "distilbert.transformer.layer.{i}.", "decoder.layers.{i}."
    block = [Rule(ours + f"self_attn.in_proj_{p}", tuple(layer + f"attention.{x}_lin.{p}" for x in "qkv"), concat)
             for p in ("weight", "bias")]
    block += [Rule(ours + f"{o}.{p}", (layer + f"{t}.{p}",)) for o, t in
              (("self_attn.out_proj", "attention.out_lin"), ("norm1", "sa_layer_norm"), ("linear1", "ffn.lin1"),
               ("linear2", "ffn.lin2"), ("norm2", "output_layer_norm")) for p in ("weight", "bias")]
    return expand(top, block, mp.n_layers)


DISTILBERT = Family(name="DistilBERT", model_types=("distilbert",), model_params=model_params, rules=rules,
                    objective="masked", ignored=ENCODER_IGNORED)
