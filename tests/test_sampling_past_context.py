"""Samples longer than the model's context (issue 26): a transformer goes on past the context by reading the
last context-long window afresh, equal to a plain loop that crops and recomputes (nanoGPT's generate), and
a recurrent model's state reads on, equal to a plain loop over the whole sequence;
and the decoding argument errors of the same round."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_helpers import char_tokenizer, make_lm

REPO = Path(__file__).resolve().parents[1]
POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "none"]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def cropping_loop(lm, prompt_ids, length, temperature=0.0, seed=None):
    """The plain way: the whole (cropped) sequence through lm at every step, no cache. A recurrent model
    reads on past its context (an RNN has no window): the whole sequence, its state carried token by token."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ids = [lm.tokenizer.bos_id] + list(prompt_ids)
    recurrent = lm.model_params.layer_architecture in ("lstm", "gru", "rnn")
    with torch.no_grad():
        while len(ids) - 1 < length:
            if recurrent:
                state = lm.new_kv_cache()
                logits = torch.cat([lm(torch.tensor([[i]]), kv_cache=state) for i in ids], dim=1)[0, -1]
            else:
                logits = lm(torch.tensor([ids[-lm.model_params.max_seq_len:]]))[0, -1]
            if temperature == 0:
                ids.append(int(logits.argmax()))
            else:
                probs = (logits.float() / temperature).softmax(-1)
                ids.append(int(torch.multinomial(probs.unsqueeze(0), 1, generator=generator)))
    return ids[1:]


@pytest.mark.parametrize("positional_encoding", POSITIONS)
def test_greedy_sample_past_the_context_equals_a_cropping_loop(tok, positional_encoding):
    lm = make_lm(tok, max_seq_len=16, positional_encoding=positional_encoding, seed=1).eval()
    got = lm.sample("abc", max_seq_len=45, temperature=0, as_str=False, stop_at_eos=False)
    assert len(got) == 45  # max_seq_len is the sample's length, not "until the context is full"
    assert got == cropping_loop(lm, tok("abc"), 45)


@pytest.mark.parametrize("arch", ["custom-transformer", "torch-transformer", "lstm"])
def test_seeded_and_batched_samples_past_the_context(tok, arch):
    """Each prompt of a batch (different lengths) gives what it gives alone, and with a seed what the
    cropping loop draws with that seed; on both transformer paths and a recurrent model."""
    lm = make_lm(tok, max_seq_len=12, layer_architecture=arch, seed=2).eval()
    prompts = ["a", "hello w", "bcd"]
    alone = [lm.sample(p, max_seq_len=30, temperature=0.9, seed=5, as_str=False, stop_at_eos=False) for p in prompts]
    assert lm.sample(prompts, max_seq_len=30, temperature=0.9, seed=5, as_str=False, stop_at_eos=False) == alone
    assert alone[1] == cropping_loop(lm, tok("hello w"), 30, temperature=0.9, seed=5)


@pytest.mark.parametrize("arch", ["custom-transformer", "torch-transformer", "lstm"])
def test_beam_search_goes_past_the_context(tok, arch):
    """Beam search also runs to max_seq_len past the context (each beam's last context-long window read
    afresh, as sampling crops; a recurrent state reads on): one beam is the greedy sample, a batch of
    prompts of different lengths gives what each gives alone, and more beams find a sequence at least as
    likely as greedy's by the model's own scoring of the same crops."""
    lm = make_lm(tok, max_seq_len=10, layer_architecture=arch, seed=4).eval()
    greedy = lm.sample("abc", max_seq_len=26, temperature=0, as_str=False, stop_at_eos=False)
    assert lm.beam_search("abc", beam_size=1, max_seq_len=26, as_str=False, stop_at_eos=False) == greedy
    prompts = ["a", "hello wo", "bcd"]
    alone = [lm.beam_search(p, beam_size=3, n_best=2, max_seq_len=24, as_str=False, stop_at_eos=False) for p in prompts]
    batched = lm.beam_search(prompts, beam_size=3, n_best=2, max_seq_len=24, as_str=False, stop_at_eos=False)
    assert [[ids for ids, _ in b] for b in batched] == [[ids for ids, _ in a] for a in alone]
    assert all(len(ids) == 24 for b in batched for ids, _ in b)
    best, score = lm.beam_search("abc", beam_size=4, n_best=2, max_seq_len=26, as_str=False, stop_at_eos=False,
                                 length_penalty=0.0)[0]  # length_penalty 0: the score is the log-probability sum

    def cropped_log_prob(ids):  # the log-probability of ids' new tokens as the crops read them
        context, total = [lm.tokenizer.bos_id] + tok("abc"), 0.0
        with torch.no_grad():
            for token in ids[len(tok("abc")):]:
                window = torch.tensor([context[-lm.model_params.max_seq_len:]])
                if arch == "lstm":
                    window = torch.tensor([context])
                    state = lm.new_kv_cache()
                    logits = torch.cat([lm(window[:, i:i + 1], kv_cache=state) for i in range(window.shape[1])], 1)
                else:
                    logits = lm(window)
                total += logits[0, -1].log_softmax(-1)[token].item()
                context.append(token)
        return total

    assert len(best) == 26 and score == pytest.approx(cropped_log_prob(best), abs=1e-3)
    assert cropped_log_prob(best) >= cropped_log_prob(greedy) - 1e-4


def test_hooks_act_past_the_context(tok):
    lm = make_lm(tok, max_seq_len=10, seed=3).eval()
    steps = []
    lm.sample("ab", max_seq_len=20, temperature=0, stop_at_eos=False,
              hooks={"blocks.0.hook_resid_pre": lambda t, n: steps.append(t.shape[1])})
    assert steps[:2] == [3, 1] and steps[-1] == 10  # prompt, one token per step, then the 10-token window


def test_bad_decoding_arguments_are_refused(tok):
    lm = make_lm(tok).eval()
    with pytest.raises(ValueError, match="max_seq_len is the returned sample's length"):
        lm.sample("ab", max_seq_len=-5)
    with pytest.raises(ValueError, match="max_seq_len"):
        lm.beam_search("ab", max_seq_len=2.5)
    assert lm.sample([]) == [] and lm.beam_search([]) == []  # an empty list of prompts
    with pytest.raises(ValueError, match="length_penalty must be a finite number"):
        lm.beam_search("ab", length_penalty=float("nan"))


def test_input_checks_hold_under_python_O():
    """`python -O` drops asserts: the input checks must not depend on them."""
    code = ("import torch, pytest\n"
            "from model_helpers import char_tokenizer, make_lm\n"
            "lm = make_lm(char_tokenizer(), max_seq_len=32)\n"
            "for x, words in ((torch.randint(10, (1, 300)), 'longer than the model'), (torch.tensor([[999]]), 'token ids')):\n"
            "    with pytest.raises(ValueError, match=words):\n"
            "        lm(x)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], cwd=REPO / "tests", capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "ok", out.stderr
