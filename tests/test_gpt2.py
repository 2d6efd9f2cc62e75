"""gpt2.py: GPT-2 checkpoints converted into our LM (custom-transformer) give transformers' results.

The hub is unreachable in tests, so the checkpoints are small random GPT2LMHeadModels saved with
save_pretrained to temp folders, with the real GPT-2 tokenizer from $LM_DATA_PATH/gpt2-tokenizer.
Their weights are drawn wider than GPT-2's init (and LayerNorm gains/biases are not 1/0), so that
greedy samples vary from token to token and a swapped or untransposed tensor shows.
"""
import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, GPT2Config, GPT2LMHeadModel

from data.tokenizer import Tokenizer
from gpt2 import check_gpt2_config, convert_gpt2, find_tokenizer_source, get_gpt2
from hf_families import gpt2 as gpt2_family
from hf_families.mapping import load_converted_weights as load_weights, to_our_weights
from model.model_params import ModelParams
from model.lm import LM

EOS = 50256
PROMPT = "Well the weather for the whole area will"


def tokenizer_folder() -> Path:
    return Path(os.environ["LM_DATA_PATH"]) / "gpt2-tokenizer"


def random_gpt2(seed: int = 0, **config) -> GPT2LMHeadModel:
    """A random GPT2LMHeadModel (eval) with every parameter, LayerNorms and biases included, nonzero."""
    torch.manual_seed(seed)
    defaults = dict(n_layer=2, n_head=2, n_embd=64, n_positions=128, vocab_size=50257, initializer_range=0.2)
    model = GPT2LMHeadModel(GPT2Config(**{**defaults, **config}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def save_hf(model: GPT2LMHeadModel, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def load_hf(folder: Path) -> GPT2LMHeadModel:
    """The reference: transformers' own GPT-2 from the same folder, eager attention (it returns weights)."""
    return GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_hf(random_gpt2(), tmp_path_factory.mktemp("gpt2-random"))


@pytest.fixture(scope="module")
def hf(checkpoint) -> GPT2LMHeadModel:
    return load_hf(checkpoint)


@pytest.fixture(scope="module")
def lm_gpt2(checkpoint) -> LM:
    return get_gpt2(checkpoint, tokenizer_path=tokenizer_folder())


def test_model_params_describe_gpt2(lm_gpt2):
    mp = lm_gpt2.model_params
    assert (mp.layer_architecture, mp.n_layers, mp.n_heads, mp.dim, mp.dim_ff) == ("custom-transformer", 2, 2, 64, 256)
    assert (mp.activation, mp.norm_first, mp.final_norm, mp.positional_encoding) == ("gelu_tanh", True, True, "learned")
    assert (mp.max_seq_len, mp.tie_embeddings, mp.bias, mp.dropout, mp.layer_norm_eps) == (128, True, True, 0.0, 1e-5)
    assert lm_gpt2.out_proj.weight is lm_gpt2.embedding.weight
    assert lm_gpt2.n_tokens == 50257 and not lm_gpt2.training
    other = gpt2_family.model_params(GPT2Config(n_inner=100, activation_function="relu", layer_norm_epsilon=1e-6))
    assert (other.dim_ff, other.activation, other.layer_norm_eps) == (100, "relu", 1e-6)


def test_logits_attention_and_embeddings_match_transformers(lm_gpt2, hf):
    x = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(x, output_attentions=True, output_hidden_states=True)
        ours = lm_gpt2(x, get_embeddings=True, get_attn=True)
        final = lm_gpt2.decoder.final_norm(ours["embeddings"][:, -1])
    torch.testing.assert_close(ours["logits"], ref.logits, atol=1e-4, rtol=0)
    assert ours["attns"].shape == (2, 2, 2, 24, 24)
    torch.testing.assert_close(ours["attns"], torch.stack(ref.attentions, dim=1), atol=1e-5, rtol=0)
    # embeddings[:, i] == hidden_states[i] for i < n_layers; HF's last hidden state has ln_f applied, ours not
    assert ours["embeddings"].shape == (2, 3, 24, 64) and len(ref.hidden_states) == 3
    for i in range(2):
        torch.testing.assert_close(ours["embeddings"][:, i], ref.hidden_states[i], atol=1e-5, rtol=0)
    torch.testing.assert_close(final, ref.hidden_states[2], atol=1e-5, rtol=0)


def greedy_hf(hf: GPT2LMHeadModel, context: list, max_new_tokens: int) -> list:
    """transformers' greedy continuation of `context`, without the eos it stops at (ours leaves eos out)."""
    out = hf.generate(torch.tensor([context]), do_sample=False, max_new_tokens=max_new_tokens,
                      pad_token_id=EOS, eos_token_id=EOS)[0, len(context):].tolist()
    return out[:out.index(EOS)] if EOS in out else out


def test_greedy_samples_match_generate(lm_gpt2, hf):
    pref = lm_gpt2.tokenizer(PROMPT)
    ours = lm_gpt2.sample(pref=pref, max_seq_len=60, temperature=0, as_str=False)
    theirs = greedy_hf(hf, [EOS] + pref, max_new_tokens=60 - len(pref))
    assert ours == pref + theirs and len(theirs) == 60 - len(pref)
    assert len(set(theirs)) > 10  # a varied continuation, not one token repeated
    # ids with a leading bos: the model reads them as given
    ours = lm_gpt2.sample(pref=[EOS, 4053, 262, 6193], max_seq_len=20, temperature=0, as_str=False)
    assert ours == [EOS, 4053, 262, 6193] + greedy_hf(hf, [EOS, 4053, 262, 6193], max_new_tokens=16)


def test_untied_checkpoint_with_exact_gelu_and_eos_stop(tmp_path):
    """An untied lm_head, n_inner and exact GELU convert too; both greedy decoders stop at eos.
    The eos logit is made to win at position 6: wpe[6] carries a direction that only eos's head row reads."""
    hf = random_gpt2(seed=3, n_layer=1, n_embd=32, n_inner=48, activation_function="gelu", tie_word_embeddings=False)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        hf.transformer.wpe.weight[6] += 20 * direction
        hf.lm_head.weight[EOS] = 5 * direction
    hf = load_hf(save_hf(hf, tmp_path / "untied"))
    lm = get_gpt2(tmp_path / "untied", tokenizer_path=tokenizer_folder())
    assert not lm.model_params.tie_embeddings and lm.out_proj.weight is not lm.embedding.weight
    assert (lm.model_params.dim_ff, lm.model_params.activation) == (48, "gelu")
    x = torch.tensor([[EOS, 4053, 262, 6193, 11, 1000, 7, 8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(lm(x), hf(x).logits, atol=1e-4, rtol=0)
    pref = [4053, 262]
    ours = lm.sample(pref=pref, max_seq_len=40, temperature=0, as_str=False)
    theirs = hf.generate(torch.tensor([[EOS] + pref]), do_sample=False, max_new_tokens=38, pad_token_id=EOS)[0, 3:]
    assert theirs[-1] == EOS and len(theirs) == 5  # positions 2..5 predict 4 tokens, position 6 predicts eos
    assert ours == pref + theirs[:-1].tolist()


def test_readme_examples(lm_gpt2):
    text = lm_gpt2.sample(pref="Well the weather for the whole area will", max_seq_len=50, temperature=0.5, as_str=True)
    assert isinstance(text, str) and text.startswith(PROMPT)
    text = lm_gpt2.sample(pref=[50256, 4053, 262, 6193])
    assert isinstance(text, str) and text.startswith("<|endoftext|>well the weather")
    assert torch.equal(lm_gpt2("Well the weather"), lm_gpt2([5779, 262, 6193]))
    assert torch.equal(lm_gpt2("Well the weather"), lm_gpt2(torch.Tensor([5779, 262, 6193])))
    mean, highest, lowest, n_tokens, per_token = lm_gpt2.perplexities(["Well the weather", "Hello world!"],
                                                                      per_token=True)
    assert n_tokens == 3 + 3 and lowest <= mean <= highest and per_token.shape == (2, 3)
    out = lm_gpt2("Well the weather", get_embeddings=True)
    assert out["logits"].shape == (1, 3, 50257) and out["embeddings"].shape == (1, 3, 3, 64)


def test_perplexities_match_transformers_loss(lm_gpt2, hf):
    texts = ["Well the weather for the whole area will be fine.", "Hello world!", "A third, longer line of text here."]
    total_ce, total_tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[EOS] + lm_gpt2.tokenizer(text)])
            total_ce += hf(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            total_tokens += ids.shape[1] - 1
    mean, _, _, n_tokens, _ = lm_gpt2.perplexities(texts, batch_size=2)
    assert n_tokens == total_tokens
    assert mean == pytest.approx(math.exp(total_ce / total_tokens), rel=1e-4)


def test_tokenizer_sources(tmp_path, checkpoint):
    data_tokenizer = tokenizer_folder()
    assert Path(find_tokenizer_source(checkpoint)) == data_tokenizer  # no tokenizer files: the data folder's
    with_files = tmp_path / "with-tokenizer"
    with_files.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (with_files / name).write_bytes((data_tokenizer / name).read_bytes())
    assert Path(find_tokenizer_source(with_files)) == with_files
    assert Path(find_tokenizer_source(checkpoint, tokenizer_path=with_files)) == with_files
    assert find_tokenizer_source("distilgpt2") == "distilgpt2"  # a hub name: its own tokenizer
    with pytest.raises(FileNotFoundError, match="holds no GPT-2 tokenizer"):
        find_tokenizer_source(checkpoint, tokenizer_path=checkpoint)
    lm = get_gpt2(checkpoint)  # falls back to $LM_DATA_PATH/gpt2-tokenizer
    assert lm.tokenizer("Well the weather") == [5779, 262, 6193]


def test_missing_or_foreign_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder"):
        get_gpt2(tmp_path / "does-not-exist")
    bert = tmp_path / "bert"
    BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64).save_pretrained(bert)
    with pytest.raises(ValueError, match="'bert' checkpoint, not GPT-2"):
        get_gpt2(bert)
    run_folder = tmp_path / "our-run"  # e.g. a run saved by this project: no config.json
    run_folder.mkdir()
    (run_folder / "params.json").write_text(json.dumps({}))
    with pytest.raises(ValueError, match="not a transformers checkpoint folder"):
        get_gpt2(run_folder)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        check_gpt2_config(GPT2Config(scale_attn_by_inverse_layer_idx=True))


def test_incomplete_checkpoint_fails_instead_of_random_weights(tmp_path):
    folder = save_hf(random_gpt2(n_layer=1, n_embd=16), tmp_path / "gpt2")
    weights = load_file(folder / "model.safetensors")
    del weights["transformer.h.0.ln_2.bias"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="h.0.ln_2.bias"):
        get_gpt2(folder, tokenizer_path=tokenizer_folder())


def test_hub_original_layout_loads(tmp_path):
    """The hub's original "gpt2" files: GPT2Model names (no "transformer."), no lm_head (tied), and
    causal-mask buffers (attn.bias, attn.masked_bias) stored next to the weights."""
    hf = random_gpt2(n_layer=1, n_embd=16, n_positions=32)
    hf.config.save_pretrained(tmp_path)
    weights = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    weights["h.0.attn.bias"] = torch.ones(32, 32).tril().view(1, 1, 32, 32)
    weights["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    lm = get_gpt2(tmp_path, tokenizer_path=tokenizer_folder())
    x = torch.tensor([[EOS, 4053, 262, 6193]])
    with torch.no_grad():
        torch.testing.assert_close(lm(x), hf(x).logits, atol=1e-4, rtol=0)


def gpt2_state_dict_to_lm(hf_state, n_layers):
    """A GPT2LMHeadModel state dict renamed (and transposed) into our LM's names, as pretrained.py converts."""
    return to_our_weights(hf_state, gpt2_family.rules(None, ModelParams(n_layers=n_layers)), {}, "GPT-2")


def test_conversion_checks_every_tensor(tmp_path):
    hf = random_gpt2(n_layer=1, n_embd=16)
    tokenizer = Tokenizer.gpt2(str(tokenizer_folder()))
    state = hf.state_dict()
    with pytest.raises(ValueError, match="no place in our LM.*h.0.attn.extra"):
        gpt2_state_dict_to_lm({**state, "transformer.h.0.attn.extra": torch.zeros(1)}, n_layers=1)
    with pytest.raises(KeyError, match="h.1.ln_1.weight"):
        gpt2_state_dict_to_lm(state, n_layers=2)
    weights = gpt2_state_dict_to_lm(state, n_layers=1)
    lm = LM(gpt2_family.model_params(hf.config), tokenizer)
    with pytest.raises(ValueError, match=r"left unfilled: \['decoder.layers.0.linear1.bias'\]"):
        load_weights(lm, {k: v for k, v in weights.items() if k != "decoder.layers.0.linear1.bias"}, "GPT-2")
    with pytest.raises(ValueError, match="shape mismatches"):
        load_weights(lm, {**weights, "pos_embedding.weight": torch.zeros(3, 16)}, "GPT-2")
    small_vocab = random_gpt2(n_layer=1, n_embd=16, vocab_size=1000)
    with pytest.raises(ValueError, match="tokenizer has 50257 tokens but the checkpoint's vocabulary has 1000"):
        convert_gpt2(small_vocab, tokenizer)
