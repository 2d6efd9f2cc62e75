"""Tiny random transformers checkpoints (no network) and the parity checks every family must pass.

A checkpoint folder holds a random model built from its config class (weights drawn wider than the
usual init, norms and biases away from 1 and 0, so a swapped, untransposed or mis-stacked tensor
shows) and a tokenizer.json: GPT-2's real byte-level BPE from $LM_DATA_PATH/gpt2-tokenizer, with
the family's special tokens added when it has its own.
"""
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer

from model.lm import LM
from transformers import (GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

TEXTS = ["Well the weather for the whole area will be fine.", "Hello world!", "A third, longer line of text here."]


def gpt2_tokenizer_folder() -> Path:
    return Path(os.environ["LM_DATA_PATH"]) / "gpt2-tokenizer"


def save_tokenizer(folder: Path, special_tokens: Sequence[str] = (), **named: str) -> None:
    """GPT-2's BPE plus `special_tokens` (ids 50257, 50258, ...) as tokenizer.json + tokenizer_config.json;
    `named`: bos_token="<s>", eos_token=... as the checkpoint's tokenizer config names them."""
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast
    backend = HFTokenizer.from_str(GPT2TokenizerFast.from_pretrained(str(gpt2_tokenizer_folder()))
                                   .backend_tokenizer.to_str())
    backend.add_special_tokens(list(special_tokens))
    PreTrainedTokenizerFast(tokenizer_object=backend, **named).save_pretrained(folder)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Wide random weights, norm gains around 1 and nonzero biases; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() == 1 and ("norm" in name or ".ln" in name):
                p.copy_((1 + 0.2 * noise) if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)
    return model.eval()


def load_reference(folder: Path):
    """transformers' own model from the folder, eager attention (it returns attention weights)."""
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()


def check_logits_attention_embeddings(lm: LM, hf, n_layers: int, n_heads: int, seq: int = 24) -> None:
    """logits to 1e-4; attns == output_attentions; embeddings[:, i] == hidden_states[i] for i < n_layers,
    final_norm(embeddings[:, -1]) == hidden_states[-1] (the final-norm convention)."""
    x = torch.randint(0, lm.tokenizer.vocab_size, (2, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(x, output_attentions=True, output_hidden_states=True)
        ours = lm(x, get_embeddings=True, get_attn=True)
        final = lm.decoder.final_norm(ours["embeddings"][:, -1])
    torch.testing.assert_close(ours["logits"], ref.logits, atol=1e-4, rtol=0)
    assert ours["attns"].shape == (2, n_layers, n_heads, seq, seq)
    torch.testing.assert_close(ours["attns"], torch.stack(ref.attentions, dim=1), atol=1e-5, rtol=0)
    assert len(ref.hidden_states) == n_layers + 1
    for i in range(n_layers):
        torch.testing.assert_close(ours["embeddings"][:, i], ref.hidden_states[i], atol=1e-4, rtol=0)
    torch.testing.assert_close(final, ref.hidden_states[n_layers], atol=1e-4, rtol=0)


def greedy_reference(hf, context: List[int], max_new_tokens: int, eos: int) -> List[int]:
    """transformers' greedy continuation of `context`, cut before the eos it stops at (ours leaves eos out)."""
    out = hf.generate(torch.tensor([context]), do_sample=False, max_new_tokens=max_new_tokens,
                      pad_token_id=eos, eos_token_id=eos)[0, len(context):].tolist()
    return out[:out.index(eos)] if eos in out else out


def check_greedy_sample(lm: LM, hf, prompt: str = TEXTS[0], new_tokens: int = 30) -> None:
    pref = lm.tokenizer(prompt)
    ours = lm.sample(pref=pref, max_seq_len=len(pref) + new_tokens, temperature=0, as_str=False)
    theirs = greedy_reference(hf, [lm.tokenizer.bos_id] + pref, new_tokens, lm.tokenizer.eos_id)
    assert ours == pref + theirs
    assert len(set(theirs)) > 3, "a varied continuation, not one token repeated"


def check_perplexities(lm: LM, hf, texts: Sequence[str] = TEXTS) -> None:
    """lm.perplexities (bos + text, batched with padding) == exp of transformers' mean loss per token."""
    total_ce, total_tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[lm.tokenizer.bos_id] + lm.tokenizer(text)])
            total_ce += hf(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            total_tokens += ids.shape[1] - 1
    mean, _, _, n_tokens, _ = lm.perplexities(list(texts), batch_size=2)
    assert n_tokens == total_tokens
    assert mean == pytest.approx(math.exp(total_ce / total_tokens), rel=1e-4)


def check_tokenizer_ids(lm: LM, folder: Path, texts: Sequence[str] = TEXTS) -> None:
    """Our tokenizer gives the checkpoint tokenizer's ids without special tokens, and decodes them back."""
    from transformers import AutoTokenizer
    theirs = AutoTokenizer.from_pretrained(folder)
    for text in texts:
        assert lm.tokenizer(text) == theirs(text, add_special_tokens=False)["input_ids"]
        assert lm.tokenizer.decode(lm.tokenizer(text)) == text


def check_beam_search(lm: LM, hf, prompt: str = TEXTS[0], new_tokens: int = 12, beam_size: int = 3) -> None:
    """lm.beam_search equals transformers' generate(num_beams=...) on the same weights: the n_best sequences
    (without the eos they end with) and their length-penalised scores."""
    pref, eos = lm.tokenizer(prompt), lm.tokenizer.eos_id
    context = [lm.tokenizer.bos_id] + pref
    out = hf.generate(torch.tensor([context]), num_beams=beam_size, do_sample=False, length_penalty=0.8,
                      early_stopping=True, num_return_sequences=2, max_new_tokens=new_tokens, pad_token_id=eos,
                      eos_token_id=eos, output_scores=True, return_dict_in_generate=True)
    theirs = []
    for sequence, score in zip(out.sequences, out.sequences_scores.tolist()):
        new = sequence[len(context):].tolist()
        theirs.append((pref + (new[:new.index(eos)] if eos in new else new), score))
    ours = lm.beam_search(pref=pref, beam_size=beam_size, max_seq_len=len(pref) + new_tokens, length_penalty=0.8,
                          n_best=2, as_str=False)
    assert [ids for ids, _ in ours] == [ids for ids, _ in theirs]
    assert [score for _, score in ours] == pytest.approx([score for _, score in theirs], abs=1e-4)


def check_all(lm: LM, folder: Path, n_layers: int, n_heads: int, hf=None) -> None:
    hf = hf if hf is not None else load_reference(folder)
    check_logits_attention_embeddings(lm, hf, n_layers, n_heads)
    check_greedy_sample(lm, hf)
    check_beam_search(lm, hf)
    check_perplexities(lm, hf)
    check_tokenizer_ids(lm, folder)


# ---- one small checkpoint per family ---------------------------------------------------------------
EOS = 50256  # GPT-2's <|endoftext|>; the Llama-likes get their own <s> = 50257, </s> = 50258
SIZE = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=128)
LLAMA_SPECIALS = dict(vocab_size=50304, bos_token_id=50257, eos_token_id=50258)

# name -> (model class, config, the ModelParams fields the conversion must pick)
CHECKPOINTS: Dict[str, tuple] = {
    "pythia": (GPTNeoXForCausalLM,
               GPTNeoXConfig(**SIZE, intermediate_size=128, vocab_size=50304, rotary_pct=0.25, rotary_emb_base=10000,
                             use_parallel_residual=True, bos_token_id=EOS, eos_token_id=EOS),
               dict(parallel_block=True, rotary_frac=0.25, positional_encoding="rope", norm="layernorm",
                    tie_embeddings=False, activation="gelu")),
    "neox-sequential": (GPTNeoXForCausalLM,
                        GPTNeoXConfig(**{**SIZE, "num_hidden_layers": 2}, intermediate_size=96, vocab_size=50257,
                                      rotary_pct=0.5, use_parallel_residual=False, attention_bias=False,
                                      tie_word_embeddings=True, bos_token_id=EOS, eos_token_id=EOS),
                        dict(parallel_block=False, rotary_frac=0.5, tie_embeddings=True)),
    "llama": (LlamaForCausalLM,  # with a sentencepiece-style LlamaTokenizer (<unk> 0, <s> 1, </s> 2)
              LlamaConfig(**SIZE, num_key_value_heads=2, intermediate_size=96, rope_theta=500000.0,
                          rms_norm_eps=1e-5, vocab_size=128, bos_token_id=1, eos_token_id=2),
              dict(n_kv_heads=2, activation="swiglu", norm="rmsnorm", rope_base=500000.0, bias=False,
                   tie_embeddings=False)),
    "smollm": (LlamaForCausalLM,  # SmolLM / TinyLlama shape: tied head, few kv heads
               LlamaConfig(**SIZE, num_key_value_heads=1, intermediate_size=80, tie_word_embeddings=True,
                           **LLAMA_SPECIALS),
               dict(n_kv_heads=1, tie_embeddings=True)),
    "qwen2": (Qwen2ForCausalLM,
              Qwen2Config(**SIZE, num_key_value_heads=2, intermediate_size=96, tie_word_embeddings=True,
                          **LLAMA_SPECIALS),
              dict(bias=True, n_kv_heads=2)),
    "qwen3": (Qwen3ForCausalLM,
              Qwen3Config(**SIZE, num_key_value_heads=2, head_dim=16, intermediate_size=96, **LLAMA_SPECIALS),
              dict(qk_norm=True, bias=False)),
    "mistral": (MistralForCausalLM,
                MistralConfig(**SIZE, num_key_value_heads=2, intermediate_size=96, sliding_window=64,
                              **LLAMA_SPECIALS),
                dict(max_seq_len=64, n_kv_heads=2)),
    "opt": (OPTForCausalLM,
            OPTConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, ffn_dim=96, word_embed_proj_dim=64,
                      max_position_embeddings=128, vocab_size=50272, bos_token_id=EOS, eos_token_id=EOS,
                      pad_token_id=EOS),
            dict(positional_encoding="learned", activation="relu")),
}


def save_llama_tokenizer(folder: Path) -> None:
    """transformers' own LlamaTokenizer (tokenizer_class "LlamaTokenizer", as Llama checkpoints have):
    a small sentencepiece-style BPE ("▁" marks a word start) over the characters of TEXTS."""
    from transformers import LlamaTokenizer
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for char in sorted(set("".join(TEXTS).replace(" ", "▁"))):
        vocab.setdefault(char, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "w"), ("e", "r"), ("▁w", "e"), ("a", "t")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    LlamaTokenizer(vocab=vocab, merges=merges).save_pretrained(folder)


def make_checkpoint(folder: Path, model_class: Callable, config) -> Path:
    torch.manual_seed(0)
    randomize(model_class(config)).save_pretrained(folder)
    if config.bos_token_id == 1:
        save_llama_tokenizer(folder)
    elif config.bos_token_id == EOS:
        save_tokenizer(folder, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    else:
        save_tokenizer(folder, ["<s>", "</s>"], bos_token="<s>", eos_token="</s>")
    return folder




# ---- exporting -----------------------------------------------------------------------------------------

def check_export(lm: LM, out: Path, atol: float = 1e-5) -> None:
    """transformers loads `out`; its logits equal ours; its tokenizer gives our ids; the round trip
    through get_pretrained gives identical logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from pretrained import get_pretrained
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    x = torch.tensor([[lm.tokenizer.bos_id] + lm.tokenizer(" ".join(TEXTS))[:40]])
    custom = lm.with_layer_architecture("custom-transformer").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, lm(x), atol=atol, rtol=0)
        assert torch.equal(get_pretrained(out)(x), custom(x))
    for text in TEXTS:
        assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == lm.tokenizer(text)
    assert (hf_tokenizer.eos_token_id, hf.config.eos_token_id) == (lm.tokenizer.eos_id, lm.tokenizer.eos_id)
