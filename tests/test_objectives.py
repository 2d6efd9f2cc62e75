"""Objectives beyond next-token prediction (model/objectives.py): masked, prefix and fim, unit by unit."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from data.samples import mycollate
from data.tokenizer import OBJECTIVE_TOKENS, Tokenizer
from model.lm import LM
from model.model_params import ModelParams
from model.objectives import fim_parts, fim_rearranged, fim_row, fixed_uniform, masked_inputs
from tests.model_helpers import ARCHS, TEXTS

ALL_TOKENS = OBJECTIVE_TOKENS["masked"] + OBJECTIVE_TOKENS["fim"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train("char", TEXTS, extra_tokens=ALL_TOKENS)


def make(tok, objective, seed=0, noise=0.3, **overrides) -> LM:
    params = dict(n_layers=2, n_heads=2, dim=16, max_seq_len=24, dropout=0.0, objective=objective)
    params.update(overrides)
    torch.manual_seed(seed)
    lm = LM(ModelParams(**params), tok).eval()
    with torch.no_grad():  # weights far from the init, so that every position's logits differ clearly
        for p in lm.parameters():
            p.add_(torch.randn_like(p) * noise)
    return lm


def test_objective_tokens_come_after_the_trained_vocabulary():
    plain = Tokenizer.train("char", TEXTS)
    extended = Tokenizer.train("char", TEXTS, extra_tokens=ALL_TOKENS)
    assert plain.mask_id is None and plain.fim_ids is None
    assert extended.vocab_size == plain.vocab_size + 4
    assert extended(TEXTS[0]) == plain(TEXTS[0])  # every trained id stays
    assert extended.mask_id == plain.vocab_size and extended.mask_token == "<mask>"
    assert extended("ab<mask>c") == plain("ab") + [extended.mask_id] + plain("c")  # never split
    assert extended.fim_ids == (plain.vocab_size + 1, plain.vocab_size + 2, plain.vocab_size + 3)


@pytest.mark.parametrize("arch", ARCHS)
def test_masked_attention_sees_both_ways(tok, arch):
    lm = make(tok, "masked", layer_architecture=arch)
    x = torch.tensor([tok("hello world")])
    changed = x.clone()
    changed[0, -1] = tok("z")[0]
    with torch.no_grad():
        assert not torch.allclose(lm(x)[0, 0], lm(changed)[0, 0])  # position 0 reads the last token


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_attention_is_both_ways_inside_and_causal_after(tok, arch):
    lm = make(tok, "prefix", layer_architecture=arch)
    x = torch.tensor([tok("hello world")])
    k = 5
    with torch.no_grad():
        base = lm(x, prefix_len=k)
        inside = x.clone()
        inside[0, k - 1] = tok("z")[0]
        assert not torch.allclose(lm(inside, prefix_len=k)[0, 0], base[0, 0])  # the prefix is read both ways
        for after in range(k, x.shape[1]):
            later = x.clone()
            later[0, after] = tok("z")[0]
            torch.testing.assert_close(lm(later, prefix_len=k)[0, :after], base[0, :after])
        torch.testing.assert_close(lm(x, prefix_len=1), lm(x))  # no prefix_len: causal


def test_both_layer_paths_agree_on_every_objective(tok):
    x = torch.tensor([tok("hello world"), tok("abc, xyz!ab")])
    real = torch.ones_like(x, dtype=torch.bool)
    real[1, -2:] = False
    for objective, kwargs in (("masked", dict(attention_mask=real)), ("prefix", dict(prefix_len=[4, 7])),
                              ("masked", {}), ("fim", {})):
        ours = make(tok, objective)
        theirs = ours.with_layer_architecture("torch-transformer")
        for training in (False, True):
            ours.train(training), theirs.train(training)
            with torch.no_grad():
                torch.testing.assert_close(ours(x, **kwargs), theirs(x, **kwargs), atol=1e-5, rtol=1e-4)
            out = ours(x, get_attn=True, **kwargs)["attns"]
            torch.testing.assert_close(out, theirs(x, get_attn=True, **kwargs)["attns"], atol=1e-5, rtol=1e-4)


def test_padding_is_invisible_to_a_masked_model(tok):
    lm = make(tok, "masked")
    short = tok("hello")
    padded = torch.tensor([short + [tok.pad_id] * 3])
    real = torch.tensor([[True] * len(short) + [False] * 3])
    with torch.no_grad():
        torch.testing.assert_close(lm(padded, attention_mask=real)[0, :len(short)], lm(torch.tensor([short]))[0])


def test_masked_loss_covers_exactly_the_chosen_positions(tok):
    lm = make(tok, "masked")
    batch = mycollate([[tok.bos_id] + tok("hello world") + [tok.eos_id], [tok.bos_id] + tok("abc") + [tok.eos_id]],
                      tok.pad_id)
    torch.manual_seed(3)
    lm.train()
    x, y, z = lm.get_batch_xyz(batch)
    chosen = y != -100
    assert chosen.any()
    original = batch["x_indices"][:, :-1]
    assert torch.equal(y[chosen], original[chosen])  # the targets are the original tokens
    assert not chosen[:, 0].any() and not chosen[~batch["mask"][:, :-1]].any()  # never bos, never padding
    assert torch.equal(x[~chosen], original[~chosen])  # only chosen positions may change
    hand = sum(-F.log_softmax(z[r, i], -1)[original[r, i]] for r, i in chosen.nonzero().tolist()) / chosen.sum()
    torch.manual_seed(3)  # the same draws: the same mask
    loss, _ = lm.get_losses(batch)
    torch.testing.assert_close(loss, hand)


def test_bert_split_of_the_chosen_tokens():
    x = torch.randint(5, 100, (400, 50))
    real = torch.ones_like(x, dtype=torch.bool)
    torch.manual_seed(0)
    inputs, y = masked_inputs(x, real, real, framing=[0], mask_id=1, vocab_size=100, mask_frac=0.15, fixed=False)
    chosen = y != -100
    assert abs(chosen.float().mean() - 0.15) < 0.01
    assert abs((inputs[chosen] == 1).float().mean() - 0.8) < 0.02
    assert abs((inputs[chosen] == x[chosen]).float().mean() - 0.1) < 0.02  # kept (a random draw may also hit it)
    assert (inputs[~chosen] == x[~chosen]).all()


def test_validation_masks_and_splits_are_fixed_per_sample(tok):
    batch = mycollate([[tok.bos_id] + tok(t) + [tok.eos_id] for t in TEXTS], tok.pad_id)
    for objective in ("masked", "prefix"):
        lm = make(tok, objective, max_seq_len=64)
        seen = []
        for seed in (0, 1, 2):  # whatever the global random state (another epoch, another run)
            torch.manual_seed(seed)
            x, y, _ = lm.get_batch_xyz(batch)
            seen.append((x, y))
        assert all(torch.equal(a, b) for (x0, y0), (x1, y1) in zip(seen, seen[1:]) for a, b in ((x0, x1), (y0, y1)))
        # a sample's mask does not depend on the batch it is in
        alone = {k: v[1:2, :len(tok(TEXTS[1])) + 2] for k, v in batch.items()}
        torch.testing.assert_close(lm.get_batch_xyz(alone)[1], seen[0][1][1:2, :alone["x_indices"].shape[1] - 1])
    u = fixed_uniform(batch["x_indices"], batch["mask"])
    assert ((0 <= u) & (u < 1)).all() and u.unique().numel() > u.numel() // 2


def test_fim_rows_round_trip(tok):
    doc = tok("the quick brown fox")
    for start, end in ((0, 0), (3, 9), (5, len(doc)), (len(doc), len(doc))):
        row = fim_row(doc, start, end, tok.bos_id, tok.eos_id, tok.fim_ids)
        prefix, middle, suffix = fim_parts(row, tok.fim_ids)
        assert prefix + middle + suffix == doc and len(row) == len(doc) + 5
        assert tok.decode(prefix + middle + suffix) == "the quick brown fox"
    rows = [[tok.bos_id] + tok(t) + [tok.eos_id] for t in TEXTS]
    batch = mycollate(rows, tok.pad_id)
    torch.manual_seed(0)
    tokens, real = fim_rearranged(batch["x_indices"], batch["mask"], 1.0, tok.bos_id, tok.eos_id, tok.fim_ids,
                                  max_width=30)
    for r, text in enumerate(TEXTS):
        row = tokens[r][real[r]].tolist()
        prefix, middle, suffix = fim_parts(row, tok.fim_ids)
        kept = tok(text)[:30 - 5]  # a doc too long for the context loses its end
        assert prefix + middle + suffix == kept and row[-1] == tok.eos_id


def test_pseudo_perplexity_equals_a_loop_masking_one_position_at_a_time(tok):
    lm = make(tok, "masked")
    texts = ["hello world", "abc"]
    mean, _, _, n, per_token = lm.perplexities(texts, per_token=True, before_exp=True, batch_size=5)
    losses = []
    with torch.no_grad():
        for text in texts:
            ids = [tok.bos_id] + tok(text)
            for i in range(1, len(ids)):
                masked = list(ids)
                masked[i] = tok.mask_id
                logits = lm(torch.tensor([masked]))[0, i]
                losses.append(F.cross_entropy(logits, torch.tensor(ids[i])).item())
    assert n == len(losses) == len(tok("hello world")) + len(tok("abc"))
    assert mean == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert per_token[0, 1].item() == pytest.approx(losses[0], rel=1e-5)


def test_prefix_perplexity_scores_the_tokens_after_the_prefix(tok):
    lm = make(tok, "prefix")
    ids = [tok.bos_id] + tok("hello world")
    _, _, _, n, per_token = lm.perplexities(["hello world"], prefix_len=4, per_token=True, before_exp=True)
    assert n == len(ids) - 1 - 4
    with torch.no_grad():
        logits = lm(torch.tensor([ids[:-1]]), prefix_len=5)[0]
    expected = F.cross_entropy(logits[4:], torch.tensor(ids[5:]), reduction="none")
    torch.testing.assert_close(per_token[0, 4:], expected)
    assert lm.perplexities(["hello world"])[3] == len(ids) - 1  # no prefix_len: a causal read


def test_fill_mask(tok):
    lm = make(tok, "masked")
    text = "he<mask>lo w<mask>rld"
    ids = [tok.bos_id] + tok(text)
    with torch.no_grad():
        probs = lm(torch.tensor([ids]))[0].softmax(-1)
    positions = [i for i, t in enumerate(ids) if t == tok.mask_id]
    best = probs[positions].argmax(-1).tolist()
    filled = lm.fill_mask(text, as_str=False)
    assert [filled[p - 1] for p in positions] == best and len(filled) == len(ids) - 1
    assert lm.fill_mask(text) == tok.decode(filled)
    top = lm.fill_mask(text, top_k=3)
    assert len(top) == 2 and all(len(options) == 3 for options in top)
    assert top[0][0] == (tok.tokens([best[0]])[0], pytest.approx(probs[positions[0]].max().item(), rel=1e-5))
    assert lm.fill_mask([text, "a<mask>c"]) == [lm.fill_mask(text), lm.fill_mask("a<mask>c")]
    with pytest.raises(ValueError, match="holds no mask token"):
        lm.fill_mask("hello")


def test_each_interface_refuses_what_its_objective_cannot_do(tok):
    masked, causal = make(tok, "masked"), make(tok, "causal")
    with pytest.raises(ValueError, match="fill_mask"):
        masked.sample("he")
    with pytest.raises(ValueError, match="fill_mask"):
        masked.beam_search("he")
    with pytest.raises(ValueError, match="objective='masked'"):
        causal.fill_mask("he<mask>")
    with pytest.raises(ValueError, match="objective='fim'"):
        causal.infill("he", "lo")
    with pytest.raises(ValueError, match="prefix_len is for models trained with objective='prefix'"):
        causal(torch.tensor([[1, 2, 3]]), prefix_len=2)
    with pytest.raises(ValueError, match="recurrent model"):
        ModelParams(layer_architecture="lstm", objective="masked", max_seq_len=8) and \
            LM(ModelParams(layer_architecture="lstm", objective="masked", max_seq_len=8), tok)
    with pytest.raises(ValueError, match="unknown objective 'mlm': choose one of causal, masked, prefix, fim"):
        LM(ModelParams(objective="mlm", max_seq_len=8), tok)
    with pytest.raises(ValueError, match="needs the tokenizer's <mask>"):
        LM(ModelParams(objective="masked", max_seq_len=8), Tokenizer.train("char", TEXTS))
    LM(ModelParams(layer_architecture="gru", objective="fim", max_seq_len=8), tok)  # fim is causal: fine


@pytest.mark.parametrize("positional_encoding", ["learned", "rope", "alibi"])
def test_prefix_sampling_with_the_cache_equals_a_loop_without_it(tok, positional_encoding):
    lm = make(tok, "prefix", positional_encoding=positional_encoding, max_seq_len=12)
    for prompt in ("hel", "the quick"):
        ids = [tok.bos_id] + tok(prompt)
        for _ in range(14 - len(ids)):  # past the context too: each window's prompt part is its prefix
            window = ids[-12:]
            prompt_left = max(0, len(window) - (len(ids) - 1 - len(tok(prompt))))
            with torch.no_grad():
                ids.append(lm(torch.tensor([window]), prefix_len=prompt_left)[0, -1].argmax().item())
        assert lm.sample(prompt, max_seq_len=13, temperature=0, stop_at_eos=False, as_str=False) == ids[1:]
    batched = lm.sample(["hel", "the quick"], max_seq_len=13, temperature=0, stop_at_eos=False)
    assert batched == [lm.sample(p, max_seq_len=13, temperature=0, stop_at_eos=False) for p in ("hel", "the quick")]
    assert lm.beam_search("hel", beam_size=2, max_seq_len=8, stop_at_eos=False)


def test_infill_samples_the_middle_after_the_fim_prompt(tok):
    lm = make(tok, "fim")
    prefix, suffix = tok("the qu"), tok(" fox")
    prompt = [tok.bos_id, tok.fim_ids[0]] + prefix + [tok.fim_ids[1]] + suffix + [tok.fim_ids[2]]
    expected = lm.sample(prompt, max_seq_len=len(prompt) + 5, temperature=0, as_str=False)[len(prompt):]
    assert lm.infill("the qu", " fox", max_seq_len=5, as_str=False) == expected
    assert lm.infill([("the qu", " fox"), ("a", "c")], max_seq_len=5) == \
        [lm.infill("the qu", " fox", max_seq_len=5), lm.infill("a", "c", max_seq_len=5)]


def test_fim_training_rows_are_rearranged_only_in_training(tok):
    lm = make(tok, "fim", fim_rate=1.0)
    batch = mycollate([[tok.bos_id] + tok("hello world") + [tok.eos_id]], tok.pad_id)
    x_eval, y_eval, _ = lm.get_batch_xyz(batch)
    assert torch.equal(x_eval, batch["x_indices"][:, :-1])
    lm.train()
    x, y, _ = lm.get_batch_xyz(batch)
    assert x[0, 1].item() == tok.fim_ids[0] and (y != -100).sum() == len(tok("hello world")) + 4
    assert dataclasses.replace(lm.model_params, fim_rate=0.0).fim_rate == 0.0
