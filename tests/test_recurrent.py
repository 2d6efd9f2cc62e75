"""Recurrent LMs (layer_architecture "lstm", "gru", "rnn"): training, the recurrent state carried while
sampling (also for left-padded batches and reordered rows), embeddings, dropout, tying, saving,
resuming and the clear errors where a transformer feature does not exist."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.tokenizer import Tokenizer
from model.lm import LM
from model.model_params import ModelParams
from model.recurrent import RECURRENT_ARCHITECTURES, RecurrentDecoder, RecurrentState
from model.decoding.sampling import choose_next_token
from model_explorer import show_lm_attns, verify_stable_load
from model_helpers import TEXTS, char_tokenizer, make_lm, make_spread_lm
import test_decoding as decoding
from test_main_cli import run_main
from test_train import SORT_TRAIN, KeepModel, SigintAtStep, make_namer, sort_task
from train.run import run_training
from train.run_folder import load_run

LAYER_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return char_tokenizer()


def random_lm(tok: Tokenizer, arch: str, seed: int = 0, **overrides) -> LM:
    """A tiny recurrent LM with weights large enough that its logits are far from uniform."""
    lm = make_spread_lm(tok, seed, layer_architecture=arch, n_heads=3, **overrides)  # n_heads: unused, no error
    return lm.eval()


def ids(tok: Tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tok(text)])


@pytest.mark.parametrize("arch", RECURRENT_ARCHITECTURES)
def test_builds_single_layer_torch_rnns_without_position_embedding(tok, arch):
    lm = make_lm(tok, layer_architecture=arch, n_layers=3, dim=12, n_heads=5)
    assert isinstance(lm.decoder, RecurrentDecoder) and lm.pos_embedding is None and lm.pos_encoding is None
    assert [type(layer) for layer in lm.decoder.layers] == [LAYER_TYPES[arch]] * 3
    assert all(layer.num_layers == 1 and layer.batch_first and layer.hidden_size == 12 for layer in lm.decoder.layers)
    assert arch in repr(lm) and "heads" not in repr(lm)
    assert isinstance(lm.new_kv_cache(), RecurrentState)


@pytest.mark.parametrize("arch", RECURRENT_ARCHITECTURES)
def test_trains_20_steps_with_falling_loss(tok, arch):
    lm = make_lm(tok, layer_architecture=arch, dim=32, dropout=0.1).train()
    rows = [[tok.bos_id] + tok(text)[:20] for text in TEXTS]
    width = max(map(len, rows))
    batch = {"x_indices": torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows]),
             "mask": torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])}
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss, _ = lm.get_losses(batch, loss_requests={"accepted": True})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0] and losses[-1] < min(losses[:10]), losses


@pytest.mark.parametrize("arch", RECURRENT_ARCHITECTURES)
def test_state_carried_step_by_step_equals_the_full_forward(tok, arch):
    lm = random_lm(tok, arch, tie_embeddings=False)
    x = ids(tok, "the quick brown fox")
    full = lm(x)
    state = lm.new_kv_cache()
    pieces = [lm(x[:, :5], kv_cache=state)] + [lm(x[:, i:i + 1], kv_cache=state) for i in range(5, 9)]
    pieces.append(lm(x[:, 9:], kv_cache=state))
    assert state.length == x.shape[1]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)
    # a state reads on past the context (an RNN has no window); a first read longer than it is refused
    longer = torch.cat([x] * (lm.model_params.max_seq_len // x.shape[1] + 1), dim=1)
    assert lm(longer, kv_cache=state).shape[1] == longer.shape[1]
    with pytest.raises(ValueError, match="longer than the model's context"):
        lm(longer, kv_cache=lm.new_kv_cache())


@pytest.mark.parametrize("arch", RECURRENT_ARCHITECTURES)
def test_cached_sampling_equals_recomputing_the_prefix(tok, arch):
    lm = random_lm(tok, arch)
    for temperature, seed in ((0.0, None), (1.0, 7)):  # full-length samples: no stop at eos
        cached = lm.sample("the", max_seq_len=20, temperature=temperature, seed=seed, as_str=False, stop_at_eos=False)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        context = [tok.bos_id] + tok("the")
        with torch.no_grad():
            while len(context) - 1 < 20:
                logits = lm(torch.tensor([context]))[:, -1]  # the whole prefix again, no state
                context.append(choose_next_token(logits, temperature, generator=generator).item())
        assert cached == context[1:]
        assert temperature == 0 or len(set(cached[3:])) > 3  # a real sample, not one repeated token


@pytest.mark.parametrize("arch", RECURRENT_ARCHITECTURES)
def test_left_padded_batch_gives_each_row_its_prompt_alone(tok, arch):
    lm = random_lm(tok, arch)
    prompts = [tok("hello world"), tok("abc"), tok("xyz, the dog")]
    width = max(map(len, prompts))
    pad_left = torch.tensor([width - len(p) for p in prompts])
    x = torch.tensor([[tok.pad_id] * (width - len(p)) + p for p in prompts])
    state = lm.new_kv_cache(batch_size=3, pad_left=pad_left)
    # read in two pieces: the first is all padding for the shortest prompt (its state must stay untouched)
    out = torch.cat([lm(x[:, :6], kv_cache=state), lm(x[:, 6:], kv_cache=state)], dim=1)
    steps = torch.tensor([[3], [4], [5]])
    after = lm(steps, kv_cache=state)[:, -1]
    for row, prompt in enumerate(prompts):
        alone = lm(torch.tensor([prompt + [steps[row, 0].item()]]))[0]
        assert torch.allclose(out[row, pad_left[row]:], alone[:-1], atol=1e-5)
        assert torch.allclose(after[row], alone[-1], atol=1e-5)
        assert torch.all(out[row, :pad_left[row]] == out[row, :pad_left[row]][:1])  # padding: outputs of zeros


@pytest.mark.parametrize("arch", RECURRENT_ARCHITECTURES)
def test_reorder_keeps_and_repeats_rows(tok, arch):
    lm = random_lm(tok, arch)
    x = torch.tensor([tok("abcd"), tok("wxyz")])
    state = lm.new_kv_cache(batch_size=2, pad_left=torch.tensor([0, 0]))
    lm(x, kv_cache=state)
    state.reorder(torch.tensor([1, 1, 0]))
    assert state.batch_size == 3 and state.pad_left.tolist() == [0, 0, 0] and state.length == 4
    nxt = torch.tensor([[1], [2], [3]])
    got = lm(nxt, kv_cache=state)[:, -1]
    for row, (source, token) in enumerate(zip([1, 1, 0], [1, 2, 3])):
        expected = lm(torch.cat([x[source:source + 1], torch.tensor([[token]])], dim=1))[0, -1]
        assert torch.allclose(got[row], expected, atol=1e-5)
    with pytest.raises(ValueError, match="input has 1 rows but the kv cache was made for 3"):
        lm(nxt[:1], kv_cache=state)


@pytest.mark.parametrize("arch", RECURRENT_ARCHITECTURES)
def test_right_padded_batch_rows_equal_the_rows_alone(tok, arch):
    lm = random_lm(tok, arch)
    a, b = tok("hello world"), tok("abc")
    batch = lm(torch.tensor([a, b + [tok.pad_id] * (len(a) - len(b))]))
    assert torch.allclose(batch[0], lm(torch.tensor([a]))[0], atol=1e-6)
    assert torch.allclose(batch[1, :len(b)], lm(torch.tensor([b]))[0], atol=1e-6)


@pytest.mark.parametrize("arch", RECURRENT_ARCHITECTURES)
def test_embeddings_are_the_input_then_each_layer_and_attention_is_a_clear_error(tok, arch):
    lm = random_lm(tok, arch, n_layers=3)
    x = ids(tok, "the dog")
    out = lm(x, get_embeddings=True)
    emb = out["embeddings"]
    assert set(out) == {"logits", "embeddings"} and emb.shape == (1, 4, x.shape[1], 16)
    assert torch.equal(emb[:, 0], lm.embedding(x))  # no position embedding
    h = emb[:, 0]
    for i, layer in enumerate(lm.decoder.layers):
        h, _ = layer(h)
        assert torch.allclose(emb[:, i + 1], h, atol=1e-6)
    assert torch.allclose(lm.out_proj(lm.decoder.final_norm(emb[:, -1])), out["logits"], atol=1e-6)
    with pytest.raises(ValueError, match="attention does not exist in recurrent models"):
        lm(x, get_attn=True)
    with pytest.raises(ValueError, match="attention does not exist in recurrent models"):
        show_lm_attns(lm, "the dog", show=False)


def test_dropout_acts_between_layers_and_on_the_output(tok):
    lm = make_lm(tok, layer_architecture="lstm", dim=64, dropout=0.5, final_norm=False).train()
    seen = {}
    lm.decoder.layers[1].register_forward_pre_hook(lambda m, args: seen.update(layer1_in=args[0]))
    lm.out_proj.register_forward_pre_hook(lambda m, args: seen.update(out_in=args[0]))
    emb = lm(ids(tok, "the quick brown fox"), get_embeddings=True)["embeddings"]
    for got, clean in ((seen["layer1_in"], emb[:, 1]), (seen["out_in"], emb[:, 2])):
        dropped = got == 0
        assert 0.3 < dropped.float().mean() < 0.7
        assert torch.allclose(got[~dropped], clean[~dropped] * 2)  # kept values scaled by 1 / (1 - p)
    lm.eval()
    emb = lm(ids(tok, "the quick brown fox"), get_embeddings=True)["embeddings"]
    assert torch.equal(seen["layer1_in"], emb[:, 1]) and torch.equal(seen["out_in"], emb[:, 2])


def test_tie_embeddings_and_final_norm(tok):
    tied, untied = (make_lm(tok, layer_architecture="gru", tie_embeddings=t) for t in (True, False))
    assert tied.out_proj.weight is tied.embedding.weight and untied.out_proj.weight is not untied.embedding.weight
    assert untied.n_parameters() - tied.n_parameters() == tied.n_tokens * 16
    plain = make_lm(tok, layer_architecture="gru", final_norm=False)
    assert plain.decoder.final_norm is None and "decoder.final_norm.weight" not in plain.state_dict()


def test_same_seed_same_weights_and_bad_conversions_are_clear_errors(tok):
    a, b = make_lm(tok, seed=3, layer_architecture="lstm"), make_lm(tok, seed=3, layer_architecture="lstm")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(a.with_layer_architecture("lstm")(ids(tok, "abc")), a(ids(tok, "abc")))
    for source, target in (("lstm", "custom-transformer"), ("gru", "lstm"), ("torch-transformer", "rnn")):
        with pytest.raises(ValueError, match="recurrent and transformer models have different weights"):
            make_lm(tok, layer_architecture=source).with_layer_architecture(target)
    with pytest.raises(ValueError, match="unknown layer_architecture 'mamba': choose one of .*lstm, gru, rnn"):
        make_lm(tok, layer_architecture="mamba")


def test_lstm_run_saves_loads_and_resumes_exactly(tmp_path: Path):
    """run_training with an LSTM: the saved model gives the trained model's logits, loads stably, and a
    run stopped by Ctrl-C and resumed ends with the uninterrupted run's weights."""
    model = dict(layer_architecture="lstm", n_layers=2, dim=24, dropout=0.1)
    keep = KeepModel()
    full = run_training(make_namer(tmp_path / "full", sort_task(), SORT_TRAIN, ["--save"], model=model),
                        callbacks=[keep])
    saved = load_run(full["save_folder"])
    assert isinstance(saved.lm.decoder, RecurrentDecoder)
    x = torch.randint(0, saved.lm.n_tokens, (4, 12))
    assert torch.equal(saved.lm.eval()(x), keep.lm.eval().cpu()(x))
    losses = verify_stable_load(full["save_folder"])["val_losses"]
    assert losses["main"] == pytest.approx(full["val_loss"], rel=1e-5)
    stopped = run_training(make_namer(tmp_path / "stopped", sort_task(), SORT_TRAIN, ["--save"], model=model),
                           callbacks=[SigintAtStep(4)])
    resumed = run_training(make_namer(tmp_path / "stopped", sort_task(), SORT_TRAIN,
                                      ["--save", f"--resume={stopped['save_folder']}"], model=model))
    expected, got = saved.lm.state_dict(), load_run(resumed["save_folder"]).lm.state_dict()
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), f"{name} differs after stop + resume"


def test_command_line_lists_sweeps_and_refuses_the_transformer_swap_ablation():
    listed = run_main("--list-params")
    assert listed.returncode == 0 and '"lstm", "gru", "rnn" (tanh)' in listed.stdout
    sweep = run_main("--config=ptb-lstm", "--set", 'layer_architecture=["lstm","gru","rnn"]', "--dry-run")
    assert sweep.returncode == 0, sweep.stderr
    assert [line.split("layer_architecture=")[1] for line in sweep.stdout.splitlines()] == ['"lstm"', '"gru"', '"rnn"']
    ablate = run_main("--config=ptb-lstm", "--ablate", "--dry-run")
    assert ablate.returncode == 2 and "swaps the two transformer paths; a 'lstm' model" in ablate.stderr


@pytest.mark.parametrize("arch", RECURRENT_ARCHITECTURES)
def test_batched_sampling_and_beam_search_carry_the_state_per_row(tok, arch):
    """lm.sample and lm.beam_search over several prompts (left-padded, rows reordered by the beams)
    give what each prompt gives alone: the decoding tests of test_decoding.py, on recurrent models."""
    decoding.test_batched_sampling_equals_one_by_one(tok, arch)
    decoding.test_beam_size_one_is_greedy_and_batched_beams_equal_single(tok, arch)
