"""LM sampling (key/value cache, temperature, top-k, nucleus, stopping) and perplexities."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from data.tokenizer import Tokenizer
from model.lm import LM
from model.model_params import ModelParams
from model.decoding.sampling import choose_next_token
from model_helpers import ARCHS, TEXTS, char_tokenizer
from model_helpers import make_spread_lm as make_lm



@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return char_tokenizer()


def forbid_eos(lm: LM) -> LM:
    """Make eos never the most likely token (so greedy samples run to their length limit)."""
    with torch.no_grad():
        lm.out_proj.weight[lm.tokenizer.eos_id] = 0.0
        lm.decoder.final_norm.weight.fill_(0.0)
        lm.decoder.final_norm.bias.fill_(0.0)
        lm.decoder.final_norm.bias[0] = 1.0
        lm.out_proj.weight[:, 0] = torch.linspace(0, 1, lm.n_tokens)  # logit = a fixed ranking; eos gets 0
        lm.out_proj.weight[lm.tokenizer.eos_id, 0] = -5.0
    return lm


# ---- the key/value cache ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm_first", (True, False))
def test_cached_forward_equals_full_forward(tok, arch, norm_first):
    lm = make_lm(tok, layer_architecture=arch, norm_first=norm_first, tie_embeddings=False).eval()
    x = torch.tensor([tok("the quick brown fox")])
    full = lm(x)
    cache = lm.new_kv_cache()
    pieces = [lm(x[:, :5], kv_cache=cache)]  # prefix
    pieces += [lm(x[:, i:i + 1], kv_cache=cache) for i in range(5, 9)]  # one token at a time
    pieces.append(lm(x[:, 9:], kv_cache=cache))  # several new tokens after a filled cache
    assert cache.length == x.shape[1]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_cache_respects_context_and_inserted_modules(tok):
    lm = make_lm(tok, layer_architecture="custom-transformer", n_layers=3).eval()
    lm.decoder.layers.insert(2, nn.ReLU())
    x = torch.tensor([tok("hello world, abc")])
    cache = lm.new_kv_cache()
    cached = torch.cat([lm(x[:, :3], kv_cache=cache)] + [lm(x[:, i:i + 1], kv_cache=cache)
                                                          for i in range(3, x.shape[1])], dim=1)
    assert torch.allclose(cached, lm(x), atol=1e-5)
    with pytest.raises(ValueError, match="after 16 cached tokens is longer than the model's context"):
        lm(torch.tensor([tok("abcdefghi")]), kv_cache=cache)


# ---- sampling -------------------------------------------------------------------------------
def sample_without_cache(lm: LM, context, n_new, temperature=1.0, top_k=None, nucleus=None, seed=None):
    """The reference: a full forward pass over the whole sequence for every new token."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ids = list(context)
    with torch.no_grad():
        for _ in range(n_new):
            logits = lm(torch.tensor([ids]))[:, -1]
            token = choose_next_token(logits, temperature, nucleus, top_k, generator).item()
            if token == lm.tokenizer.eos_id:
                break
            ids.append(token)
    return ids[len(context):]


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_sampling_equals_uncached(tok, arch):
    lm = make_lm(tok, layer_architecture=arch).eval()
    bos, pref = tok.bos_id, tok("the")
    greedy = lm.sample("the", max_seq_len=20, temperature=0, as_str=False)
    assert greedy == pref + sample_without_cache(lm, [bos] + pref, 20 - len(pref), temperature=0)
    for kwargs in (dict(), dict(top_k=3), dict(nucleus=0.8), dict(temperature=2.0)):
        for seed in (0, 1):
            cached = lm.sample("the", max_seq_len=20, as_str=False, seed=seed, **kwargs)
            assert cached == pref + sample_without_cache(lm, [bos] + pref, 20 - len(pref), seed=seed, **kwargs)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_is_deterministic_and_seeds_reproduce(tok, arch):
    lm = make_lm(tok, layer_architecture=arch)
    assert lm.sample("hel", temperature=0) == lm.sample("hel", temperature=0)
    assert lm.sample("hel", seed=5) == lm.sample("hel", seed=5)
    samples = {lm.sample("", seed=s, max_seq_len=20) for s in range(6)}
    assert len(samples) > 1
    assert lm.training  # sampling restores the mode it found


def test_sample_lengths_prefixes_and_stopping(tok):
    lm = forbid_eos(make_lm(tok, layer_architecture="custom-transformer"))
    assert len(lm.sample("", max_seq_len=10, temperature=0, as_str=False)) == 10
    out = lm.sample("ab", max_seq_len=10, temperature=0, as_str=False)
    assert len(out) == 10 and out[:2] == tok("ab")
    assert len(lm.sample("ab", max_seq_len=60, temperature=0, as_str=False)) == 60  # past the 24-token context
    assert lm.sample("abc", max_seq_len=2, temperature=0) == "abc"  # prefix already long enough
    with_bos = lm.sample([tok.bos_id] + tok("ab"), max_seq_len=10, temperature=0, as_str=False)
    assert with_bos == [tok.bos_id] + out[:9]  # a leading bos is not doubled
    assert lm.sample(torch.tensor(tok("ab")), max_seq_len=10, temperature=0, as_str=False) == out
    text = lm.sample("ab", max_seq_len=10, temperature=0)
    assert isinstance(text, str) and text == tok.decode(out)
    with pytest.raises(ValueError, match="longer than the model's context"):
        lm.sample(tok("a") * 30)
    # eos ends the sample (and is not part of it)
    with torch.no_grad():
        lm.out_proj.weight[tok.eos_id, 0] = 5.0
    assert lm.sample("ab", temperature=0, as_str=False) == tok("ab")


def test_sampling_argument_errors(tok):
    lm = make_lm(tok)
    with pytest.raises(ValueError, match="either nucleus .* or top_k, not both"):
        lm.sample("a", nucleus=0.9, top_k=5)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        lm.sample("a", temperature=-1)
    with pytest.raises(ValueError, match="0 < nucleus <= 1"):
        lm.sample("a", nucleus=1.5)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        lm.sample("a", top_k=0)

    with pytest.raises(ValueError, match="a prompt is one sequence. For several prompts pass a list"):
        lm.sample(torch.tensor([tok("ab"), tok("cd")]))  # a padded batch is not silently read as prompts
    assert lm.sample(torch.tensor([tok("ab")]), max_seq_len=6, temperature=0) == lm.sample("ab", max_seq_len=6, temperature=0)
    with pytest.raises(ValueError, match="non-whole values"):
        lm.sample(torch.tensor([2.5, 3.0]))  # not silently truncated to ids
    assert lm.sample(torch.Tensor(tok("ab")), max_seq_len=6, temperature=0) == lm.sample("ab", max_seq_len=6, temperature=0)


def test_top_k_and_nucleus_only_emit_allowed_tokens():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.02, 0.3, 0.2, 0.03]])).repeat(500, 1)
    generator = torch.Generator().manual_seed(0)
    top2 = choose_next_token(logits, top_k=2, generator=generator).unique().tolist()
    assert top2 == [1, 3]
    nucleus = choose_next_token(logits, nucleus=0.85, generator=generator).unique().tolist()
    assert nucleus == [1, 3, 4]  # 0.4 + 0.3 = 0.7 < 0.85, + 0.2 reaches it
    assert choose_next_token(logits, nucleus=0.1, generator=generator).unique().tolist() == [1]
    assert choose_next_token(logits, temperature=0).unique().tolist() == [1]
    everything = choose_next_token(logits, generator=generator).unique().tolist()
    assert len(everything) >= 5


def test_top_k_one_is_greedy(tok):
    lm = make_lm(tok)
    assert lm.sample("the", top_k=1, seed=0) == lm.sample("the", temperature=0)


# ---- perplexities ----------------------------------------------------------------------------
def reference_cross_entropies(lm: LM, texts):
    """Each text scored on its own: bos + ids, next-token cross-entropy at every position."""
    with torch.no_grad():
        out = []
        for text in texts:
            ids = torch.tensor([[lm.tokenizer.bos_id] + lm.tokenizer(text)])
            out.append(F.cross_entropy(lm(ids[:, :-1])[0], ids[0, 1:], reduction="none"))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_perplexity_of_texts(tok, arch):
    lm = make_lm(tok, layer_architecture=arch)
    texts = ["hello world", "the lazy dog", "abc"]
    ces = reference_cross_entropies(lm.eval(), texts)
    lm.train()
    all_ce = torch.cat(ces)
    mean, highest, lowest, n, per_token = lm.perplexities(texts, per_token=True, batch_size=2)
    assert n == all_ce.numel() == sum(len(tok(t)) for t in texts)
    assert math.isclose(mean, math.exp(all_ce.mean().item()), rel_tol=1e-5)
    assert math.isclose(highest, all_ce.exp().max().item(), rel_tol=1e-5)
    assert math.isclose(lowest, all_ce.exp().min().item(), rel_tol=1e-5)
    assert per_token.shape == (3, max(len(tok(t)) for t in texts))
    for row, ce in zip(per_token, ces):
        assert torch.allclose(row[:len(ce)], ce.exp(), rtol=1e-5)
        assert torch.all(row[len(ce):] == -1)
    assert lm.training  # mode restored
    mean_ce, max_ce, min_ce, n2, rows = lm.perplexities(texts, before_exp=True, dummy_res=-7)
    assert math.isclose(mean_ce, all_ce.mean().item(), rel_tol=1e-5) and n2 == n and rows == []
    assert math.isclose(max_ce, all_ce.max().item(), rel_tol=1e-5)


def collate(samples):
    width = max(len(s["ids"]) for s in samples)
    x = torch.zeros(len(samples), width, dtype=torch.long)
    mask = torch.zeros(len(samples), width, dtype=torch.bool)
    target_mask = torch.zeros(len(samples), width, dtype=torch.bool)
    for i, s in enumerate(samples):
        x[i, :len(s["ids"])] = torch.tensor(s["ids"])
        mask[i, :len(s["ids"])] = True
        target_mask[i, s["prompt"]:len(s["ids"])] = True
    return {"x_indices": x, "mask": mask, "target_mask": target_mask}


def test_perplexity_of_a_dataloader_with_target_mask(tok):
    lm = make_lm(tok).eval()
    texts = ["hello world", "abc", "the lazy dog"]
    prompts = [4, 1, 6]  # tokens (bos included) that are prompt, not target
    samples = [{"ids": [tok.bos_id] + tok(t), "prompt": p} for t, p in zip(texts, prompts)]
    loader = DataLoader(samples, batch_size=2, collate_fn=collate)
    counted = [ce[p - 1:] for ce, p in zip(reference_cross_entropies(lm, texts), prompts)]
    all_ce = torch.cat(counted)
    mean, highest, lowest, n, per_token = lm.perplexities(loader, per_token=True, dummy_res=-3)
    assert n == all_ce.numel()
    assert math.isclose(mean, math.exp(all_ce.mean().item()), rel_tol=1e-5)
    assert math.isclose(lowest, all_ce.exp().min().item(), rel_tol=1e-5)
    assert per_token.shape == (3, max(len(s["ids"]) for s in samples) - 1)
    for row, ce, p, s in zip(per_token, counted, prompts, samples):
        assert torch.all(row[:p - 1] == -3) and torch.all(row[len(s["ids"]) - 1:] == -3)
        assert torch.allclose(row[p - 1:len(s["ids"]) - 1], ce.exp(), rtol=1e-5)


def test_perplexity_errors(tok):
    lm = make_lm(tok)
    with pytest.raises(TypeError, match="not one string"):
        lm.perplexities("hello")
    with pytest.raises(ValueError, match="empty list"):
        lm.perplexities([])
    with pytest.raises(ValueError, match="split them into shorter pieces"):
        lm.perplexities(["a" * 30])
    with pytest.raises(ValueError, match="no tokens to score"):
        lm.perplexities(["", ""])
    with pytest.raises(TypeError, match="dicts with 'x_indices'"):
        lm.perplexities([1, 2])


@pytest.mark.parametrize("arch", ARCHS)
def test_stop_at_eos_false_samples_across_line_ends(tok, arch):
    lm = make_lm(tok, layer_architecture=arch)
    with torch.no_grad():  # every position's most likely next token is eos
        lm.decoder.final_norm.weight.fill_(0.0)
        lm.decoder.final_norm.bias.fill_(0.0)
        lm.decoder.final_norm.bias[0] = 1.0
        lm.out_proj.weight[:, 0] = 0.0
        lm.out_proj.weight[tok.eos_id, 0] = 5.0
    assert lm.sample(pref="ab", max_seq_len=8, temperature=0.0, as_str=False) == tok("ab")
    assert lm.sample(pref="ab", max_seq_len=8, temperature=0.0, as_str=False, stop_at_eos=False) == \
        tok("ab") + [tok.eos_id] * 6
