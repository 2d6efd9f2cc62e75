"""Hook points (model/hooks.py): caching and patching activations, on both layer paths and on GPT-2."""
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from model.hook_point import HookPoint
from model.transformer.torch_layer import TorchTransformerEncoderLayer
from model_helpers import char_tokenizer, make_lm

TEXT = "the quick brown fox"
BLOCK_NAMES = ["hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
               "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
               "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def attached_hooks(lm) -> int:
    return sum(len(m._forward_hooks) for m in lm.modules() if isinstance(m, HookPoint))


def attention_off(lm):
    """(hooks zeroing every block's attention output, a copy of lm with every out_proj zeroed by hand):
    without attention the model is its feed-forward stack, so both decode alike."""
    no_attn = {f"blocks.{i}.hook_attn_out": (lambda t, n: torch.zeros_like(t)) for i in range(lm.decoder.n_blocks)}
    by_hand = lm.with_layer_architecture("custom-transformer")
    with torch.no_grad():
        for layer in by_hand.decoder.layers:
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
    return no_attn, by_hand


def test_names_in_forward_order(tok):
    lm = make_lm(tok).eval()  # the default: the editable layer
    names = lm.hook_names()
    assert names == (["hook_embed", "hook_pos_embed"] + [f"blocks.{i}.{n}" for i in range(2) for n in BLOCK_NAMES]
                     + ["ln_final.hook_normalized"])
    assert not any("hook" in key for key in lm.state_dict())  # runs of either path load
    _, cache = lm.run_with_cache(TEXT)
    assert list(cache) == names  # the order the forward pass reached them
    # post-LN: the norms come after the sums; no position embedding, no final norm: no such names
    post = make_lm(tok, layer_architecture="custom-transformer", norm_first=False, positional_encoding="sinusoidal",
                   final_norm=False)
    block0 = [n[len("blocks.0."):] for n in post.hook_names() if n.startswith("blocks.0.")]
    assert post.hook_names()[:2] == ["hook_embed", "blocks.0.hook_resid_pre"] and "ln_final.hook_normalized" not in post.hook_names()
    assert block0[7:] == ["hook_attn_out", "ln1.hook_normalized", "hook_resid_mid", "mlp.hook_pre", "mlp.hook_post",
                          "hook_mlp_out", "ln2.hook_normalized", "hook_resid_post"]
    assert list(post.run_with_cache(TEXT)[1]) == post.hook_names()


@pytest.mark.parametrize("arch", ["custom-transformer"])  # hooks need the editable layer
@pytest.mark.parametrize("norm_first", [True, False])
def test_cache_matches_embeddings_and_attention(tok, arch, norm_first):
    lm = make_lm(tok, layer_architecture=arch, norm_first=norm_first).eval()
    x = torch.tensor([tok(TEXT), tok(TEXT)[::-1]])
    with torch.no_grad():
        out = lm(x, get_embeddings=True, get_attn=True)
        logits, cache = lm.run_with_cache(x)
    exact = arch == "custom-transformer"  # the torch path's hooked run is its custom twin: equal up to rounding
    check = torch.testing.assert_close if not exact else (lambda a, b, **kw: torch.equal(a, b) or pytest.fail())
    check(logits, out["logits"], atol=1e-5, rtol=0)
    assert torch.equal(cache["blocks.0.hook_resid_pre"], out["embeddings"][:, 0])
    for i in range(2):
        check(cache[f"blocks.{i}.hook_resid_post"], out["embeddings"][:, i + 1], atol=1e-5, rtol=0)
        check(cache[f"blocks.{i}.attn.hook_pattern"], out["attns"][:, i], atol=1e-6, rtol=0)
    assert cache["blocks.0.attn.hook_k"].shape == (2, x.shape[1], 2, 8)
    assert cache["blocks.0.mlp.hook_post"].shape == (2, x.shape[1], 64)
    scores = cache["blocks.1.attn.hook_attn_scores"]
    assert torch.isinf(scores[0, 0, 0, 1:]).all() and torch.equal(scores.softmax(-1), cache["blocks.1.attn.hook_pattern"])


def test_cache_selection_and_detach(tok):
    lm = make_lm(tok, layer_architecture="custom-transformer").train()
    _, cache = lm.run_with_cache(TEXT, names=["blocks.1.hook_resid_post", "hook_embed"])
    assert list(cache) == ["hook_embed", "blocks.1.hook_resid_post"]
    assert not cache["hook_embed"].requires_grad and lm.training
    _, cache = lm.run_with_cache(TEXT, names=lambda name: name.endswith("hook_pattern"))
    assert list(cache) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]


@pytest.mark.parametrize("arch", ["custom-transformer"])  # hooks need the editable layer
def test_identity_hooks_leave_logits_bit_identical(tok, arch):
    lm = make_lm(tok, layer_architecture=arch).eval()
    custom = lm.with_layer_architecture("custom-transformer")
    every = [(name, lambda t, name: t) for name in lm.hook_names()] + [(name, lambda t, name: None) for name in lm.hook_names()]
    with torch.no_grad():
        hooked = lm.run_with_hooks(TEXT, every)
        # the torch path runs its custom twin while hooked: exactly the custom copy's numbers
        assert torch.equal(hooked, custom(TEXT))
        if arch == "custom-transformer":
            assert torch.equal(hooked, lm(TEXT))
    assert attached_hooks(lm) == 0


@pytest.mark.parametrize("arch", ["custom-transformer"])  # hooks need the editable layer
def test_zeroing_a_heads_z_equals_zeroing_its_out_proj_input(tok, arch):
    lm = make_lm(tok, layer_architecture=arch).eval()

    def zero_head_1(z, name):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    by_hand = lm.with_layer_architecture("custom-transformer")
    with torch.no_grad():
        by_hand.decoder.layers[0].self_attn.out_proj.weight[:, 8:16] = 0  # head 1's columns: its slice of the input
        ablated = lm.run_with_hooks(TEXT, {"blocks.0.attn.hook_z": zero_head_1})
        assert not torch.allclose(ablated, lm(TEXT), atol=1e-3)
        torch.testing.assert_close(ablated, by_hand(TEXT), atol=1e-6, rtol=0)


def test_activation_patching(tok):
    lm = make_lm(tok, layer_architecture="custom-transformer").eval()
    clean, corrupt = tok("the quick"), tok("hello wor")
    name = "blocks.0.hook_resid_post"
    with torch.no_grad():
        _, cache = lm.run_with_cache(clean, names=[name])
        # patching a run with its own activation changes nothing
        assert torch.equal(lm.run_with_hooks(clean, {name: lambda t, n: cache[n]}), lm(clean))
        # the whole residual stream after block 0 carries everything later blocks see: B becomes A
        patched = lm.run_with_hooks(corrupt, {name: lambda t, n: cache[n]})
        assert torch.equal(patched, lm(clean)) and not torch.allclose(patched, lm(corrupt))
        # one position only: the logits before it are B's, the last position's differ
        def patch_last(t, n):
            t = t.clone()
            t[:, -1] = cache[n][:, -1]
            return t
        partly = lm.run_with_hooks(corrupt, {name: patch_last})
        assert torch.equal(partly[:, :-1], lm(corrupt)[:, :-1]) and not torch.allclose(partly[:, -1], lm(corrupt)[:, -1])


@pytest.mark.parametrize("arch", ["custom-transformer"])  # hooks need the editable layer
def test_hooks_are_removed_after_an_exception(tok, arch):
    lm = make_lm(tok, layer_architecture=arch).eval()
    layers = list(lm.decoder.layers)
    before = lm(TEXT)

    def fails(t, name):
        raise RuntimeError("inside the hook")

    with pytest.raises(RuntimeError, match="inside the hook"):
        lm.run_with_hooks(TEXT, [("blocks.0.hook_resid_mid", lambda t, n: t * 0), ("blocks.1.hook_resid_pre", fails)])
    assert attached_hooks(lm) == 0 and list(lm.decoder.layers) == layers
    assert torch.equal(lm(TEXT), before)
    with pytest.raises(ValueError, match="returned shape"):
        lm.run_with_hooks(TEXT, {"hook_embed": lambda t, n: t[:, :1]})
    assert attached_hooks(lm) == 0 and list(lm.decoder.layers) == layers


def test_bad_hooks_fail_clearly(tok):
    lm = make_lm(tok, layer_architecture="custom-transformer")
    with pytest.raises(ValueError, match="closest: blocks.0.attn.hook_pattern"):
        lm.run_with_hooks(TEXT, {"blocks.0.attn.hook_patern": lambda t, n: None})
    with pytest.raises(ValueError, match="no hook point named 'blocks.5.hook_resid_post'"):
        lm.run_with_cache(TEXT, names=["blocks.5.hook_resid_post"])
    with pytest.raises(TypeError, match="not callable"):
        lm.run_with_hooks(TEXT, {"hook_embed": 3})
    with pytest.raises(TypeError, match="dict name -> fn or a list"):
        lm.run_with_hooks(TEXT, "hook_embed")
    assert attached_hooks(lm) == 0


def test_the_torch_path_refuses_hooks_and_never_swaps_its_layers(tok):
    """PyTorch's own layer has no intermediates to hook: attaching a hook there is refused, naming the
    field to change, and the model keeps running its own layers (no substitute computation)."""
    lm = make_lm(tok, layer_architecture="torch-transformer").eval()
    before = lm(TEXT)
    for call in (lambda: lm.run_with_cache(TEXT), lambda: lm.run_with_hooks(TEXT, {"hook_embed": lambda t, n: None}),
                 lambda: lm.sample("the", hooks={"hook_embed": lambda t, n: None})):
        with pytest.raises(ValueError, match="layer_architecture='custom-transformer'"):
            call()
    assert all(isinstance(layer, TorchTransformerEncoderLayer) for layer in lm.decoder.layers)
    assert torch.equal(lm(TEXT), before) and attached_hooks(lm) == 0
    assert lm.hook_names() == ["hook_embed", "hook_pos_embed", "ln_final.hook_normalized"]  # those outside its blocks
    custom = lm.with_layer_architecture("custom-transformer")  # the same weights, hookable
    torch.testing.assert_close(custom.run_with_hooks(TEXT, {"hook_embed": lambda t, n: None}), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["custom-transformer"])  # hooks need the editable layer
def test_sample_with_hooks(tok, arch):
    lm = make_lm(tok, layer_architecture=arch, seed=3).eval()
    seen = []
    ids = lm.sample("the", max_seq_len=12, temperature=0, as_str=False,
                    hooks={"blocks.0.attn.hook_q": lambda t, n: seen.append(t.shape[1])})
    assert ids == lm.sample("the", max_seq_len=12, temperature=0, as_str=False)
    assert seen == [4] + [1] * (len(ids) - 4)  # bos + 3 prompt tokens, then one new token per step
    # without attention the model is its feed-forward stack: the same as zeroing every out_proj by hand
    no_attn, by_hand = attention_off(lm)
    ablated = lm.sample("the", max_seq_len=12, temperature=0, as_str=False, stop_at_eos=False, hooks=no_attn)
    assert ablated == by_hand.sample("the", max_seq_len=12, temperature=0, as_str=False, stop_at_eos=False)
    assert attached_hooks(lm) == 0


def test_hooks_context_covers_perplexities(tok):
    lm = make_lm(tok, layer_architecture="custom-transformer")
    plain = lm.perplexities([TEXT])[0]
    with lm.hooks({"ln_final.hook_normalized": lambda t, n: torch.zeros_like(t)}):
        uniform = lm.perplexities([TEXT])[0]  # zero final features, no bias: uniform predictions
    assert uniform == pytest.approx(lm.n_tokens, rel=1e-4) and plain != pytest.approx(uniform)
    assert lm.perplexities([TEXT])[0] == plain


def test_gpt2_pattern_and_residual_stream_match_transformers():
    from transformers import GPT2Config, GPT2LMHeadModel

    from data.tokenizer import Tokenizer
    from gpt2 import convert_gpt2

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, initializer_range=0.2),
                         ).eval()
    hf.config._attn_implementation = "eager"
    lm = convert_gpt2(hf, Tokenizer.gpt2(str(Path(os.environ["LM_DATA_PATH"]) / "gpt2-tokenizer")))
    x = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(x, output_attentions=True, output_hidden_states=True)
        logits, cache = lm.run_with_cache(x)
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=0)
    for i in range(2):
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], ref.attentions[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_pre"], ref.hidden_states[i], atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["ln_final.hook_normalized"], ref.hidden_states[2], atol=1e-5, rtol=0)


def test_hooks_reach_a_compiled_model(tok):
    """Compiled code ignores hooks added after compiling: a compiled LM runs uncompiled while hooked."""
    lm = make_lm(tok, layer_architecture="custom-transformer").eval()
    lm.compile(backend="eager")  # dynamo's tracing, without code generation (fast)
    compiled_logits = lm(TEXT)
    zeros = lm.run_with_hooks(TEXT, {"ln_final.hook_normalized": lambda t, n: torch.zeros_like(t)})
    assert torch.equal(zeros, torch.zeros_like(zeros)) and lm._compiled_call_impl is not None
    assert torch.equal(lm(TEXT), compiled_logits)


OPTIONS = {  # issue 10's architecture options, each where a hook point changes
    "llama-like": dict(positional_encoding="rope", norm="rmsnorm", activation="swiglu", n_heads=4, n_kv_heads=2,
                       qk_norm=True, bias=False, rotary_frac=0.5),
    "alibi": dict(positional_encoding="alibi", n_heads=4),
    "parallel": dict(parallel_block=True, positional_encoding="sinusoidal"),
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_hook_points_in_every_architecture(tok, option):
    lm = make_lm(tok, layer_architecture="custom-transformer", **OPTIONS[option]).eval()
    mp, names = lm.model_params, lm.hook_names()
    assert ("hook_pos_embed" in names) is False  # positions act in the attention, or are a fixed table
    assert ("blocks.0.hook_resid_mid" in names) == (option != "parallel")
    assert ("blocks.0.mlp.hook_pre_linear" in names) == (option == "llama-like")
    x = torch.tensor([tok(TEXT)])
    with torch.no_grad():
        out = lm(x, get_embeddings=True, get_attn=True)
        logits, cache = lm.run_with_cache(x)
        assert torch.equal(logits, out["logits"]) and list(cache) == names
        assert torch.equal(lm.run_with_hooks(x, [(n, lambda t, n: t) for n in names]), out["logits"])
    head_dim, n_kv = mp.dim // mp.n_heads, mp.n_kv_heads or mp.n_heads
    for i in range(2):
        assert torch.equal(cache[f"blocks.{i}.hook_resid_post"], out["embeddings"][:, i + 1])
        assert torch.equal(cache[f"blocks.{i}.attn.hook_pattern"], out["attns"][:, i])
        q, k = cache[f"blocks.{i}.attn.hook_q"], cache[f"blocks.{i}.attn.hook_k"]
        assert q.shape == (1, x.shape[1], mp.n_heads, head_dim) and k.shape == (1, x.shape[1], n_kv, head_dim)
        # the scores are these q and k (after qk_norm and rope) as they stand, plus alibi's bias and the mask
        k = k.repeat_interleave(mp.n_heads // n_kv, dim=2)
        scores = (q.transpose(1, 2) / head_dim ** 0.5) @ k.transpose(1, 2).transpose(-2, -1)
        hooked = cache[f"blocks.{i}.attn.hook_attn_scores"]
        visible = torch.isfinite(hooked)
        if option != "alibi":
            torch.testing.assert_close(scores[visible], hooked[visible], atol=1e-5, rtol=0)
        assert torch.equal(visible[0, 0], torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril())
    if option == "llama-like":  # hook_post is the activated gate times the up projection
        pre, up = cache["blocks.0.mlp.hook_pre"], cache["blocks.0.mlp.hook_pre_linear"]
        torch.testing.assert_close(cache["blocks.0.mlp.hook_post"], torch.nn.functional.silu(pre) * up)


def test_batched_sampling_and_beam_search_with_hooks(tok):
    lm = make_lm(tok, seed=3).eval()
    no_attn, by_hand = attention_off(lm)
    prompts = ["the", "hello wo"]
    kwargs = dict(max_seq_len=12, as_str=False, stop_at_eos=False)
    assert (lm.sample(prompts, temperature=0, hooks=no_attn, **kwargs)
            == by_hand.sample(prompts, temperature=0, **kwargs))
    assert lm.beam_search("the", beam_size=3, hooks=no_attn, **kwargs) == by_hand.beam_search("the", beam_size=3, **kwargs)
    assert attached_hooks(lm) == 0


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_models_hook_embeddings_layer_outputs_and_final_norm(tok, kind):
    lm = make_lm(tok, layer_architecture=kind, final_norm=True).eval()
    names = lm.hook_names()
    assert names == ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    x = torch.tensor([tok(TEXT)])
    with torch.no_grad():
        out = lm(x, get_embeddings=True)
        logits, cache = lm.run_with_cache(x)
        assert torch.equal(logits, out["logits"])
        for i in range(2):
            assert torch.equal(cache[f"blocks.{i}.hook_resid_post"], out["embeddings"][:, i + 1])
        assert torch.equal(cache["hook_embed"], out["embeddings"][:, 0])  # no positions, no dropout in eval
        # patching layer 0's output from another text makes layer 1 read that text's features
        other = torch.tensor([tok(TEXT)[::-1]])
        _, other_cache = lm.run_with_cache(other, names=["blocks.0.hook_resid_post"])
        patched = lm.run_with_hooks(x, {"blocks.0.hook_resid_post": lambda t, n: other_cache[n]})
        assert torch.equal(patched, lm(other))
    seen = []
    lm.sample("the", max_seq_len=8, temperature=0, hooks={"blocks.1.hook_resid_post": lambda t, n: seen.append(t.shape[1])})
    assert seen[0] == 4 and set(seen[1:]) <= {1}
