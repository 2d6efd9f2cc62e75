"""The transformer options of ModelParams (issue 10): rope, alibi, rmsnorm, swiglu / geglu,
grouped-query attention, qk_norm, parallel_block, alone and mixed, through every interface:
training, lm(x) with padding, embeddings / attention, cached sampling, left-padded batched prompts,
saving and loading; plus the maths of each part (RoPE shift invariance, ALiBi slopes, GQA
grouping) and parity with transformers' Llama / Qwen3 on the same weights."""
import dataclasses
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
import torch.nn.functional as F

from data.tokenizer import Tokenizer
from model.lm import LM
from model.model_params import ModelParams
from model.decoding.sampling import choose_next_token
from model.transformer.torch_f_multi_head_attention_forward import alibi_slopes, apply_rope
from model_helpers import TEXTS, char_tokenizer
from model_helpers import make_lm as make_tiny_lm
from model_helpers import make_spread_lm

CUSTOM = "custom-transformer"
# each new value alone, then mixes (all on the custom path; n_heads=4 so that GQA has a real grouping)
OPTIONS: Dict[str, Dict[str, Any]] = {
    "rope": dict(positional_encoding="rope"),
    "rope-partial": dict(positional_encoding="rope", rotary_frac=0.5, rope_base=500.0),
    "alibi": dict(positional_encoding="alibi"),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(activation="swiglu"),
    "geglu": dict(activation="geglu", dim_ff=24),
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    "qk_norm": dict(qk_norm=True),
    "parallel": dict(parallel_block=True),
    "llama": dict(positional_encoding="rope", norm="rmsnorm", activation="swiglu", n_kv_heads=2, bias=False),
    "neox": dict(positional_encoding="rope", rotary_frac=0.5, parallel_block=True, rope_base=100.0, activation="gelu_tanh"),
    "alibi-post-ln": dict(positional_encoding="alibi", norm_first=False, qk_norm=True, activation="geglu",
                          n_kv_heads=1, norm="rmsnorm"),
}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return char_tokenizer()


def make_lm(tok: Tokenizer, seed: int = 0, noise: float = 0.3, **overrides: Any) -> LM:
    """A tiny custom-path model (4 heads of 4 dims); weights perturbed so that logits are far from uniform."""
    overrides = {"layer_architecture": CUSTOM, "n_heads": 4, **overrides}
    return make_spread_lm(tok, seed, noise, **overrides)


def ids(tok: Tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([[tok.bos_id] + tok(text)])


# ---- every option through every interface ---------------------------------------------------
@pytest.mark.parametrize("name", OPTIONS)
def test_a_tiny_model_trains_and_its_loss_falls(tok, name):
    torch.manual_seed(0)
    lm = make_tiny_lm(tok, layer_architecture=CUSTOM, n_heads=4, max_seq_len=48, **OPTIONS[name])
    tokens = [torch.tensor([tok.bos_id] + tok(t) + [tok.eos_id]) for t in TEXTS]
    width = max(len(t) for t in tokens)
    batch = {"x_indices": torch.stack([F.pad(t, (0, width - len(t))) for t in tokens]),
             "mask": torch.stack([torch.arange(width) < len(t) for t in tokens])}
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss, _ = lm.get_losses(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in lm.parameters()), "every parameter takes part"
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", OPTIONS)
def test_padding_embeddings_and_attention(tok, name):
    lm = make_lm(tok, **OPTIONS[name]).eval()
    short, long = tok("hello"), tok("the lazy dog")
    batch = torch.tensor([short + [0] * (len(long) - len(short)), long])  # right-padded
    with torch.no_grad():
        out = lm(batch, get_embeddings=True, get_attn=True)
        torch.testing.assert_close(out["logits"][0, :len(short)], lm([short])[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(out["logits"][1], lm([long])[0], rtol=0, atol=1e-5)
    assert out["embeddings"].shape == (2, 3, len(long), 16)
    attns = out["attns"]
    assert attns.shape == (2, 2, 4, len(long), len(long))
    torch.testing.assert_close(attns.sum(-1), torch.ones(attns.shape[:-1]))
    assert attns.triu(1).abs().max() == 0, "causal"


@pytest.mark.parametrize("name", OPTIONS)
def test_cached_sampling_equals_recomputation(tok, name):
    lm = make_lm(tok, **OPTIONS[name]).eval()
    context = ids(tok, "the qu")
    greedy = lm.sample(pref=context[0], max_seq_len=22, temperature=0, as_str=False, stop_at_eos=False)
    seeded = lm.sample(pref=context[0], max_seq_len=22, temperature=1.0, seed=3, as_str=False, stop_at_eos=False)
    generator = torch.Generator().manual_seed(3)
    x_greedy, x_seeded = context, context
    with torch.no_grad():
        while x_greedy.shape[1] < 22:  # recompute the whole prefix at every step
            x_greedy = torch.cat([x_greedy, lm(x_greedy)[:, -1:].argmax(-1)], dim=1)
            x_seeded = torch.cat([x_seeded, choose_next_token(lm(x_seeded)[:, -1], 1.0, generator=generator)], 1)
    assert greedy == x_greedy[0].tolist()
    assert seeded == x_seeded[0].tolist()


@pytest.mark.parametrize("name", ["learned", "sinusoidal", "none"] + list(OPTIONS))
def test_left_padded_batch_gives_each_prompts_solo_logits(tok, name):
    options = OPTIONS.get(name, {"positional_encoding": name})
    lm = make_lm(tok, **options).eval()
    prompts = [tok("the qu"), tok("hello world"), tok("ab")]
    width = max(map(len, prompts))
    pad_left = torch.tensor([width - len(p) for p in prompts])
    batch = torch.tensor([[5] * (width - len(p)) + p for p in prompts])  # any id may pad
    steps = torch.tensor([[3, 7], [4, 8], [6, 9]])
    with torch.no_grad():
        cache = lm.new_kv_cache(batch_size=3, pad_left=pad_left)
        out = lm(batch, kv_cache=cache, get_attn=True)
        first = out["logits"]
        later = [lm(steps[:, i:i + 1], kv_cache=cache) for i in range(2)]
        for row, prompt in enumerate(prompts):
            assert not out["attns"][row, :, :, pad_left[row]:, :pad_left[row]].any(), "no token reads padding"
            solo = lm([prompt + steps[row].tolist()])[0]
            torch.testing.assert_close(first[row, pad_left[row]:], solo[:len(prompt)], rtol=0, atol=1e-5)
            torch.testing.assert_close(torch.cat([later[0][row], later[1][row]]), solo[len(prompt):],
                                       rtol=0, atol=1e-5)


@pytest.mark.parametrize("positional_encoding", ["learned", "sinusoidal"])
def test_left_padding_on_the_torch_path_matches_the_custom_path(tok, positional_encoding):
    custom = make_lm(tok, positional_encoding=positional_encoding).eval()
    fast = custom.with_layer_architecture("torch-transformer")
    prompts = [tok("hello world"), tok("abc")]
    pad_left = torch.tensor([0, 8])
    batch = torch.tensor([prompts[0], [1] * 8 + prompts[1]])
    with torch.no_grad():
        outs = []
        for lm in (custom, fast):
            cache = lm.new_kv_cache(batch_size=2, pad_left=pad_left)
            outs.append(torch.cat([lm(batch, kv_cache=cache), lm([[4], [5]], kv_cache=cache)], dim=1))
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
        torch.testing.assert_close(outs[1][1, 8:], fast([prompts[1] + [5]])[0], rtol=0, atol=1e-5)


def test_kv_cache_reorder_keeps_and_repeats_rows(tok):
    lm = make_lm(tok, **OPTIONS["llama"]).eval()
    prompts = [tok("hello"), tok("the lazy")]
    pad_left = torch.tensor([3, 0])
    batch = torch.tensor([[0] * 3 + prompts[0], prompts[1]])
    with torch.no_grad():
        cache = lm.new_kv_cache(batch_size=2, pad_left=pad_left)
        lm(batch, kv_cache=cache)
        cache.reorder(torch.tensor([1, 0, 0]))
        assert cache.batch_size == 3 and cache.pad_left.tolist() == [0, 3, 3]
        assert cache[0].k.shape[0] == 3
        step = lm([[4], [5], [6]], kv_cache=cache)
        for row, (prompt, token) in enumerate([(prompts[1], 4), (prompts[0], 5), (prompts[0], 6)]):
            torch.testing.assert_close(step[row, 0], lm([prompt + [token]])[0, -1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"in \[0, 2\]"):
        cache.reorder([3])
    with pytest.raises(ValueError, match="made for 3"):
        lm([[1]], kv_cache=cache)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        lm.new_kv_cache(batch_size=2, pad_left=[1, 2, 3])


@pytest.mark.parametrize("name", ["llama", "alibi-post-ln", "neox"])
def test_save_and_load_give_identical_logits(tok, name, tmp_path):
    from data.data_params import DataParams
    from train.run_folder import load_run, save_run
    from train.train_params import TrainParams
    lm = make_lm(tok, **OPTIONS[name]).eval()
    folder = save_run(tmp_path / "run", lm, DataParams(), lm.model_params, TrainParams(), {}, {})
    loaded = load_run(folder).lm
    assert loaded.model_params == lm.model_params
    x = ids(tok, "the quick brown fox")
    with torch.no_grad():
        assert torch.equal(loaded(x), lm(x))


# ---- the parts -------------------------------------------------------------------------------
def test_rope_score_depends_only_on_the_distance():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    for frac in (1.0, 0.5):
        n_rotary = int(8 * frac)

        def score(i: int, j: int) -> torch.Tensor:
            qi = apply_rope(q, torch.tensor([[i]]), n_rotary, 10000.0)
            kj = apply_rope(k, torch.tensor([[j]]), n_rotary, 10000.0)
            return (qi * kj).sum(-1)

        for shift in (1, 7, 40):
            torch.testing.assert_close(score(5, 2), score(5 + shift, 2 + shift))
            torch.testing.assert_close(score(2, 9), score(2 + shift, 9 + shift))
        assert not torch.allclose(score(5, 2), score(5, 3)), "the score does depend on the distance"
    rotated = apply_rope(q, torch.tensor([[3]]), 4, 10000.0)
    assert torch.equal(rotated[..., 4:], q[..., 4:]), "with rotary_frac 0.5 the last half passes unrotated"


def test_rope_matches_transformers_apply_rotary_pos_emb():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    config = LlamaConfig(hidden_size=24, num_attention_heads=3, rope_theta=500.0)
    cos, sin = LlamaRotaryEmbedding(config)(q, positions)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(apply_rope(q, positions, 8, 500.0), q_ref)
    torch.testing.assert_close(apply_rope(k, positions, 8, 500.0), k_ref)


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes(8) == [2 ** -(i + 1) for i in range(8)]
    assert alibi_slopes(4) == [2 ** -(2 * (i + 1)) for i in range(4)]
    # 6 heads: the 4-head slopes, then every other slope of 8 heads (2^-1, 2^-3)
    assert alibi_slopes(6) == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor  # BLOOM's reference implementation
    for n_heads in (1, 2, 3, 5, 6, 8, 12, 16):
        bloom = build_alibi_tensor(torch.ones(1, 2), n_heads, torch.float32)[:, 0, 1]  # slope * position 1
        torch.testing.assert_close(torch.tensor(alibi_slopes(n_heads)), bloom)


def test_alibi_biases_the_scores_by_distance(tok):
    lm = make_lm(tok, positional_encoding="alibi", n_layers=1, noise=0.0).eval()
    with torch.no_grad():  # equal keys everywhere: only the alibi bias orders the attention
        lm.decoder.layers[0].self_attn.in_proj_weight.zero_()
        attn = lm(ids(tok, "hello world"), get_attn=True)["attns"][0, 0]  # [heads, seq, seq]
    slopes = torch.tensor(alibi_slopes(4))
    distance = torch.arange(attn.shape[-1]).flip(0).float()
    expected = torch.softmax(-slopes[:, None] * distance, dim=-1)
    torch.testing.assert_close(attn[:, -1], expected)


def test_n_kv_heads_equal_to_n_heads_is_exactly_multi_head_attention(tok):
    mha = make_lm(tok)
    explicit = make_lm(tok, n_kv_heads=4)
    assert {k: v.shape for k, v in mha.state_dict().items()} == {k: v.shape for k, v in explicit.state_dict().items()}
    assert all(torch.equal(a, b) for a, b in zip(mha.state_dict().values(), explicit.state_dict().values()))
    x = ids(tok, "the quick brown fox")
    assert torch.equal(mha(x), explicit(x))
    torch.testing.assert_close(explicit.with_layer_architecture("torch-transformer")(x), mha(x), rtol=0, atol=1e-5)


def test_grouped_query_attention_shares_each_kv_head_with_its_group(tok):
    """A GQA model equals the multi-head model whose k and v projections repeat each kv head for
    its group of n_heads // n_kv_heads consecutive query heads; its cache stores only n_kv_heads."""
    gqa = make_lm(tok, n_kv_heads=2).eval()
    mha = make_lm(tok).eval()
    state = gqa.state_dict()
    for i in range(2):
        name = f"decoder.layers.{i}.self_attn.in_proj_"
        for suffix in ("weight", "bias"):
            q, k, v = state[name + suffix].split([16, 8, 8])
            repeat = lambda t: t.view(2, 4, *t.shape[1:]).repeat_interleave(2, dim=0).reshape(16, *t.shape[1:])  # noqa: E731
            state[name + suffix] = torch.cat([q, repeat(k), repeat(v)])
    mha.load_state_dict(state)
    x = ids(tok, "the quick brown fox")
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), rtol=0, atol=1e-5)
        assert gqa.decoder.layers[0].self_attn.in_proj_weight.shape == ((4 + 2 * 2) * 4, 16)
        cache = gqa.new_kv_cache()
        gqa(x, kv_cache=cache)
        assert cache[0].k.shape[1] == 2 and cache[0].v.shape[1] == 2
        mqa_cache = make_lm(tok, n_kv_heads=1).new_kv_cache()
        make_lm(tok, n_kv_heads=1)(x, kv_cache=mqa_cache)
        assert mqa_cache[1].k.shape[:2] == (1, 1)


def test_parameter_names_of_the_options(tok):
    lm = make_lm(tok, activation="swiglu", norm="rmsnorm", qk_norm=True, n_kv_heads=1, bias=False)
    shapes = {k: tuple(v.shape) for k, v in lm.state_dict().items() if k.startswith("decoder.layers.0.")}
    p = "decoder.layers.0."
    assert shapes == {p + "self_attn.in_proj_weight": ((4 + 2) * 4, 16), p + "self_attn.out_proj.weight": (16, 16),
                      p + "self_attn.q_norm.weight": (4,), p + "self_attn.k_norm.weight": (4,),
                      p + "linear1.weight": (64, 16), p + "gate.weight": (64, 16), p + "linear2.weight": (16, 64),
                      p + "norm1.weight": (16,), p + "norm2.weight": (16,)}
    assert isinstance(lm.decoder.final_norm, torch.nn.RMSNorm)
    assert "4 heads (1 kv), dim 16, dim_ff 64, learned rmsnorm swiglu qk_norm, context 24" in repr(lm)
    assert make_lm(tok, activation="geglu", dim=48, n_heads=4).decoder.layers[0].gate.out_features == 128  # 8/3*48


def test_llama_and_qwen3_layers_match_transformers_on_the_same_weights(tok):
    """rope + rmsnorm + swiglu + GQA (+ qk_norm for Qwen3) on our custom path against transformers' own models."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
    for config_class, model_class, qk_norm in ((LlamaConfig, LlamaForCausalLM, False),
                                               (Qwen3Config, Qwen3ForCausalLM, True)):
        config = config_class(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=4, rms_norm_eps=1e-6,
                              rope_theta=500.0, max_position_embeddings=24, tie_word_embeddings=False)
        torch.manual_seed(0)
        reference = model_class(config).eval()
        with torch.no_grad():  # norm weights start at 1: make them count
            for name, p in reference.named_parameters():
                if "norm" in name:
                    p.copy_(torch.rand_like(p) + 0.5)
        hf = reference.state_dict()
        state = {"embedding.weight": hf["model.embed_tokens.weight"], "out_proj.weight": hf["lm_head.weight"],
                 "decoder.final_norm.weight": hf["model.norm.weight"]}
        for i in range(2):
            h, o = f"model.layers.{i}.", f"decoder.layers.{i}."
            state[o + "self_attn.in_proj_weight"] = torch.cat([hf[h + f"self_attn.{n}_proj.weight"] for n in "qkv"])
            state[o + "self_attn.out_proj.weight"] = hf[h + "self_attn.o_proj.weight"]
            for ours_name, hf_name in (("linear1", "up_proj"), ("gate", "gate_proj"), ("linear2", "down_proj")):
                state[o + ours_name + ".weight"] = hf[h + f"mlp.{hf_name}.weight"]
            state[o + "norm1.weight"] = hf[h + "input_layernorm.weight"]
            state[o + "norm2.weight"] = hf[h + "post_attention_layernorm.weight"]
            if qk_norm:
                state[o + "self_attn.q_norm.weight"] = hf[h + "self_attn.q_norm.weight"]
                state[o + "self_attn.k_norm.weight"] = hf[h + "self_attn.k_norm.weight"]
        ours = make_lm(tok, positional_encoding="rope", rope_base=500.0, norm="rmsnorm", activation="swiglu",
                       dim_ff=40, n_kv_heads=2, bias=False, qk_norm=qk_norm, layer_norm_eps=1e-6,
                       tie_embeddings=False).eval()
        ours.load_state_dict(state)
        x = ids(tok, "the quick brown fox")
        with torch.no_grad():
            torch.testing.assert_close(ours(x), reference(x).logits, rtol=0, atol=1e-5)


# ---- context length and errors --------------------------------------------------------------
@pytest.mark.parametrize("positional_encoding", ["rope", "alibi", "sinusoidal"])
def test_a_longer_context_at_load_time_reads_longer_texts(tok, positional_encoding):
    lm = make_lm(tok, positional_encoding=positional_encoding).eval()
    longer = lm.with_max_seq_len(40)
    text = ids(tok, "the quick brown fox jumps over the lazy dog")  # 44 tokens: more than the 24 trained
    with pytest.raises(ValueError, match="longer than the model's context"):
        lm(text[:, :30])
    with torch.no_grad():
        logits = longer(text[:, :40])
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(logits[:, :24], lm(text[:, :24]), rtol=0, atol=1e-5)
    assert len(longer.sample(pref="the quick brown fox jumps", max_seq_len=38, temperature=0, as_str=False)) > 24


def test_learned_positions_cannot_grow(tok):
    with pytest.raises(ValueError, match="learned positions for 24 tokens"):
        make_lm(tok).with_max_seq_len(40)


@pytest.mark.parametrize("field, value", [("positional_encoding", "rope"), ("positional_encoding", "alibi"),
                                          ("norm", "rmsnorm"), ("activation", "swiglu"), ("activation", "geglu"),
                                          ("n_kv_heads", 2), ("qk_norm", True), ("parallel_block", True)])
def test_the_torch_path_refuses_what_it_cannot_do(tok, field, value):
    with pytest.raises(ValueError) as error:
        make_lm(tok, layer_architecture="torch-transformer", **{field: value})
    message = str(error.value)
    assert f"{field}={value!r}" in message and "torch-transformer" in message and "custom-transformer" in message
    make_lm(tok, **{field: value})  # the custom path takes it


@pytest.mark.parametrize("overrides, expected", [
    (dict(n_kv_heads=3), "n_kv_heads must be a positive divisor of n_heads (4)"),
    (dict(n_kv_heads=0), "n_kv_heads must be a positive divisor"),
    (dict(positional_encoding="rope", rotary_frac=0.3), "rotate an even number"),
    (dict(positional_encoding="rope", rope_base=0.0), "rope_base must be positive"),
    (dict(parallel_block=True, norm_first=False), "parallel_block=True needs norm_first=True"),
    (dict(norm="batchnorm"), "unknown norm 'batchnorm': choose one of layernorm, rmsnorm"),
    (dict(activation="swish"), "swiglu, geglu"),
    (dict(positional_encoding="rotary"), "rope, alibi"),
])
def test_bad_option_values_are_clear_errors(tok, overrides, expected):
    with pytest.raises(ValueError) as error:
        make_lm(tok, **overrides)
    assert expected in str(error.value)


def test_runs_saved_before_these_fields_load_as_before(tok, tmp_path):
    """A params.json without the new fields (an older run) builds today's default (GPT-2 style) model."""
    import json
    from data.data_params import DataParams
    from train.run_folder import load_run, save_run
    from train.train_params import TrainParams
    lm = make_lm(tok, layer_architecture="torch-transformer").eval()
    folder = save_run(tmp_path / "run", lm, DataParams(), lm.model_params, TrainParams(), {}, {})
    params = json.loads((folder / "params.json").read_text())
    for new_field in ("n_kv_heads", "norm", "parallel_block", "qk_norm", "rope_base", "rotary_frac"):
        del params["model_params"][new_field]
    (folder / "params.json").write_text(json.dumps(params))
    loaded = load_run(folder).lm
    assert loaded.model_params == lm.model_params
    x = ids(tok, "hello world")
    with torch.no_grad():
        assert torch.equal(loaded(x), lm(x))


# ---- through the run code: train, save, --resume, model_explorer --------------------------------
def test_a_llama_style_run_trains_resumes_and_verifies(tmp_path, monkeypatch):
    import model_explorer
    from data.data_params import DataParams
    from main import build_arg_parser
    from train.runs import Namer
    from train.run import run_training
    from train.run_folder import load_run
    from train.train_params import TrainParams

    def namer(max_steps: int, flags=()) -> Namer:
        args = build_arg_parser().parse_args(["--config=test-arch", "--no-wandb", "--save",
                                              f"--save-dir={tmp_path / 'saved'}", *flags])
        return Namer(DataParams(dataset_name="sort", n_train_samples=64, n_eval_samples=16, min_len=2, max_len=4,
                                long_len=6, max_seq_len=16),
                     ModelParams(n_layers=1, dim=16, **OPTIONS["llama"], layer_architecture=CUSTOM, n_heads=4),
                     TrainParams(epochs=3, batch_size=16, lr=1e-2, warmup_steps=2, lr_schedule="constant",
                                 max_steps=max_steps, n_print_samples=0, hyperparams_log_freq=2),
                     args, config_name="test-arch")

    reference = run_training(namer(6))
    short = run_training(namer(3))
    resumed = run_training(namer(6, [f"--resume={short['save_folder']}"]))
    expected = load_run(reference["save_folder"]).lm.state_dict()
    got = load_run(resumed["save_folder"]).lm.state_dict()
    assert all(torch.equal(got[name], tensor) for name, tensor in expected.items())
    model_explorer.verify_stable_load(reference["save_folder"])
    monkeypatch.setattr(model_explorer, "ATTENTIONS_DIR", tmp_path / "attentions")
    lm = load_run(reference["save_folder"]).lm
    ids = [lm.tokenizer.bos_id] + lm.tokenizer("3 1 2")
    _, attns = model_explorer.show_lm_attns(lm, ids, folder_name="llama", show=False)
    assert attns.shape == (1, 1, 4, len(ids), len(ids))
    assert (tmp_path / "attentions" / "llama" / "grid.png").is_file()
    mean_ppl, *_ = lm.perplexities(["3 1 2", "2 2 1 4"])
    assert 1 <= mean_ppl < float("inf")


def test_list_params_and_sweeps_over_the_new_fields(capsys):
    import main
    main.main(["--list-params"])
    listed = capsys.readouterr().out
    for field in ("n_kv_heads", "norm", "qk_norm", "parallel_block", "rope_base", "rotary_frac"):
        assert field in listed
    assert "rope (rotary on q and k)" in listed
    main.main(["--config=test-synth", "--dry-run", "--set", 'positional_encoding=["rope","alibi"]',
               "--set", "n_kv_heads=[1,2]", "--set", 'layer_architecture="custom-transformer"'])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert sum("rope" in line for line in lines) == 2 and sum("alibi" in line for line in lines) == 2, lines
