"""Beam search (against transformers' generate on the same GPT-2 weights) and batched prompts
(against sampling each prompt alone) for lm.sample and lm.beam_search."""
import copy
import io

import pytest
import torch
from transformers import GPT2LMHeadModel

from data.tokenizer import Tokenizer
from gpt2 import convert_gpt2
from model.lm import LM
from model.decoding.cpu_speedups import (_COPIES, DOUBLED_ROW_WEIGHT, FEW_ROWS, FEW_ROWS_WEIGHT, MANY_ROWS,
                                         MEASURED_FASTER_ON, ONEDNN_WEIGHT, TRICKS, FastProducts, cpu_decoding,
                                         cpu_vendor, drop_copies, linear_weights, onednn_available, trick_pays)
from model_helpers import ARCHS, char_tokenizer
from model_helpers import make_spread_lm as make_lm
from test_gpt2 import EOS, random_gpt2, tokenizer_folder

GPT2_PROMPTS = ["Well the weather", "Hello", "A B C D E F"]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return char_tokenizer()


@pytest.fixture(scope="module")
def gpt2_pair():
    """(transformers' GPT-2, our LM) on the same random weights, where eos's lm_head row is a slightly
    scaled copy of another token's: eos often ranks high, so that beams end at different steps."""
    hf = random_gpt2(n_positions=64, tie_word_embeddings=False)
    with torch.no_grad():
        hf.lm_head.weight[EOS] = 1.03 * hf.lm_head.weight[38833]
    return hf, convert_gpt2(hf, Tokenizer.gpt2(str(tokenizer_folder())))


def hf_beam_search(hf: GPT2LMHeadModel, context, beam_size, length_penalty, n_best):
    """transformers' n_best (new ids without the eos they end with, score), best first."""
    out = hf.generate(torch.tensor([context]), num_beams=beam_size, do_sample=False, length_penalty=length_penalty,
                      early_stopping=True, num_return_sequences=n_best, max_new_tokens=NEW_TOKENS,
                      pad_token_id=EOS, eos_token_id=EOS, output_scores=True, return_dict_in_generate=True)
    scores = out.sequences_scores.tolist() if beam_size > 1 else [None]
    results = []
    for sequence, score in zip(out.sequences, scores):
        new = sequence[len(context):].tolist()
        results.append((new[:new.index(EOS)] if EOS in new else new, score))
    return results


@pytest.mark.parametrize("beam_size", (1, 3, 5))
def test_beam_search_equals_transformers(gpt2_pair, beam_size):
    hf, lm = gpt2_pair
    n_ended_early = 0
    for prompt in GPT2_PROMPTS:
        ids = lm.tokenizer(prompt)
        for length_penalty in (0.5, 1.0, 2.0):
            expected = hf_beam_search(hf, [EOS] + ids, beam_size, length_penalty, beam_size)
            ours = lm.beam_search(prompt, beam_size=beam_size, max_seq_len=len(ids) + NEW_TOKENS,
                                  length_penalty=length_penalty, n_best=beam_size, as_str=False)
            if beam_size == 1:
                assert ours == ids + expected[0][0]
                continue
            assert [sample for sample, _ in ours] == [ids + new for new, _ in expected]
            assert [score for _, score in ours] == pytest.approx([score for _, score in expected], rel=1e-4)
            n_ended_early += sum(len(new) < NEW_TOKENS for new, _ in expected)
            best_text = lm.beam_search(prompt, beam_size=beam_size, max_seq_len=len(ids) + NEW_TOKENS,
                                       length_penalty=length_penalty)
            assert best_text == lm.tokenizer.decode(ours[0][0])
    assert beam_size == 1 or n_ended_early >= 3  # the eos handling was exercised


@pytest.mark.parametrize("arch", ARCHS)
def test_beam_size_one_is_greedy_and_batched_beams_equal_single(tok, arch):
    lm = make_lm(tok, layer_architecture=arch)
    for prompt in ("", "the", "hello world"):
        assert lm.beam_search(prompt, beam_size=1, max_seq_len=20) == lm.sample(prompt, max_seq_len=20, temperature=0)
    prompts = ["the quick", "", "abc, x", tok("hel")]
    batched = lm.beam_search(prompts, beam_size=3, n_best=2, max_seq_len=18, as_str=False)
    alone = [lm.beam_search(p, beam_size=3, n_best=2, max_seq_len=18, as_str=False) for p in prompts]
    assert [[ids for ids, _ in best] for best in batched] == [[ids for ids, _ in best] for best in alone]
    assert [s for best in batched for _, s in best] == pytest.approx([s for best in alone for _, s in best], rel=1e-5)
    assert lm.training  # the mode it found


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_sampling_equals_one_by_one(tok, arch):
    lm = make_lm(tok, layer_architecture=arch)
    prompts = ["the quick brown", "", "a", tok("hello wor"), [tok.bos_id] + tok("xy"), torch.tensor(tok("lazy"))]
    for kwargs in (dict(temperature=0), dict(seed=3), dict(seed=4, top_k=3), dict(seed=5, nucleus=0.8)):
        batched = lm.sample(prompts, max_seq_len=22, **kwargs)
        assert batched == [lm.sample(p, max_seq_len=22, **kwargs) for p in prompts]
        assert len(set(batched)) == len(prompts)
    # the same prompt twice with one seed gives the same sample twice; ids in, ids out
    assert lm.sample(["ab", "ab"], seed=1, as_str=False) == [lm.sample("ab", seed=1, as_str=False)] * 2
    assert lm.sample(tok("ab"), temperature=0) == lm.sample("ab", temperature=0)  # a list of ints is one prompt


def test_batched_sampling_past_the_context_limit(tok):
    """Padding a short prompt to a long one must not cost it tokens: each row slides over its own tokens."""
    lm = make_lm(tok, layer_architecture="custom-transformer")
    with torch.no_grad():
        lm.out_proj.weight[tok.eos_id] = -10.0  # eos never wins: samples run to max_seq_len
    prompts = ["the quick brown fox", "a"]
    out = lm.sample(prompts, max_seq_len=60, temperature=0, as_str=False)
    assert [len(ids) for ids in out] == [60, 60]
    assert out == [lm.sample(p, max_seq_len=60, temperature=0, as_str=False) for p in prompts]


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_grows_and_shrinks_in_place_with_the_same_logits(tok, arch, monkeypatch):
    """The cache's buffers start small and double as positions are added (copying what they hold); rows
    dropped by reorder are compacted into the same buffers. Step by step, the cached logits equal those of
    reading the whole sequence at once."""
    from model.decoding.kv_cache import LayerKVCache
    monkeypatch.setattr(LayerKVCache, "MIN_POSITIONS", 2)  # grow at 2, 4, 8, 16
    lm = make_lm(tok, layer_architecture=arch).eval()
    ids = torch.tensor([tok("the quick brown fox"), tok("a lazy dog jumps ov")])  # 2 rows of 19
    with torch.no_grad():
        full = lm(ids)
        cache = lm.new_kv_cache(batch_size=2)
        steps = [lm(ids[:, :3], kv_cache=cache)] + [lm(ids[:, i:i + 1], kv_cache=cache) for i in range(3, 12)]
        sizes, memory = [cache[0].k.shape[2]], cache[0].k.data_ptr()
        cache.reorder([1])  # keep the second row only: in place, in the same memory
        assert cache[0].k.shape[0] == 1 and cache[0].k.data_ptr() == memory
        steps_row1 = [lm(ids[1:, i:i + 1], kv_cache=cache) for i in range(12, 19)]
        sizes.append(cache[0].k.shape[2])
    assert sizes == [12, 24]  # 3 positions, then 6, 12 (after 12 steps), 24
    assert torch.allclose(torch.cat(steps, dim=1), full[:, :12], atol=1e-5)
    assert torch.allclose(torch.cat(steps_row1, dim=1), full[1:, 12:], atol=1e-5)


def test_logits_to_keep_gives_the_last_positions_logits(tok):
    lm = make_lm(tok, layer_architecture="custom-transformer").eval()
    x = torch.tensor([tok("hello world"), tok("a lazy dogs")])
    with torch.no_grad():
        full = lm(x)
        assert torch.allclose(lm(x, logits_to_keep=1), full[:, -1:], atol=1e-6)
        assert torch.allclose(lm(x, logits_to_keep=3, get_embeddings=True)["logits"], full[:, -3:], atol=1e-6)
        assert torch.equal(lm(x, logits_to_keep=0), full)
    with pytest.raises(ValueError, match="logits_to_keep must be >= 0"):
        lm(x, logits_to_keep=-1)


def test_decoding_argument_errors(tok):
    lm = make_lm(tok)
    with pytest.raises(ValueError, match="beam_size must be an int >= 1"):
        lm.beam_search("a", beam_size=0)
    with pytest.raises(ValueError, match=r"n_best \(5\) cannot exceed beam_size \(4\)"):
        lm.beam_search("a", n_best=5)
    with pytest.raises(ValueError, match="n_best must be an int >= 1"):
        lm.beam_search("a", n_best=0)
    for name, value in (("temperature", 0.7), ("top_k", 5), ("nucleus", 0.9)):
        with pytest.raises(ValueError, match=f"beam search is deterministic .* takes no {name}"):
            lm.beam_search("a", **{name: value})
    with pytest.raises(TypeError, match="did you mean 'beam_size'"):
        lm.beam_search("a", beam_sizes=3)
    with pytest.raises(ValueError, match="mixes token ids with prompts"):
        lm.sample(["ab", 3])
    with pytest.raises(ValueError, match="prompt 1: prefix of 31 tokens .* longer than the model's context"):
        lm.sample(["ab", "a" * 30])
    with pytest.raises(ValueError, match=r"prompt 0 token ids must be in \[0, "):
        lm.sample([[999], [3]])


@pytest.fixture
def every_trick(monkeypatch):
    """cpu_decoding with every trick on, whatever this CPU is (trick_pays): their results are tested everywhere."""
    monkeypatch.setattr("model.decoding.cpu_speedups.trick_pays", lambda trick: True)


def test_tricks_run_where_they_measured_faster_and_none_elsewhere(tok, monkeypatch):
    """The CPU tricks run on the CPUs they were measured faster on (AMD) only; elsewhere decoding is plain."""
    assert all(trick_pays(t) == (cpu_vendor() in MEASURED_FASTER_ON and (t != "onednn" or onednn_available()))
               for t in TRICKS)
    with pytest.raises(ValueError, match="unknown trick 'fast'"):
        trick_pays("fast")
    monkeypatch.setattr("model.decoding.cpu_speedups.trick_pays", lambda trick: False)
    lm = make_lm(tok, layer_architecture="custom-transformer", n_layers=1, dim=640, n_heads=8)
    drop_copies(lm)
    with cpu_decoding(lm):
        assert all(w.is_contiguous() and w not in _COPIES for w in linear_weights(lm))
        assert not isinstance(torch.overrides._get_current_function_mode(), FastProducts)
    assert lm.sample("the", max_seq_len=8, temperature=0, as_str=False) == uncached_greedy(lm, tok, "the", 8)


def fast_linear(x, weight, bias=None, onednn_copies=None):
    """F.linear as FastProducts computes it while decoding (no gradients)."""
    with torch.no_grad(), FastProducts(onednn_copies or {}):
        return torch.nn.functional.linear(x, weight, bias)


def test_fast_products_equal_f_linear():
    """While decoding, F.linear on a large weight is weight @ x.T for 2 to 64 rows, and a large bias-free
    head's one row is doubled: the same values as F.linear (to float rounding), with and without bias, for
    any leading shape; with gradients on it is F.linear itself."""
    torch.manual_seed(0)
    layer, head = torch.nn.Linear(512, 1024), torch.nn.Linear(64, 70000, bias=False)
    assert layer.weight.numel() >= FEW_ROWS_WEIGHT and head.weight.numel() >= DOUBLED_ROW_WEIGHT
    for weight, biases in ((layer.weight, (layer.bias, None)), (head.weight, (None,))):
        for shape in ((1, weight.shape[1]), (2, weight.shape[1]), (4, 1, weight.shape[1]), (2, 3, weight.shape[1]),
                      (FEW_ROWS, weight.shape[1]), (FEW_ROWS + 1, weight.shape[1])):
            x = torch.randn(shape)
            for bias in biases:
                expected = torch.nn.functional.linear(x, weight, bias)
                got = fast_linear(x, weight, bias)
                assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4)
                with FastProducts({}):
                    assert torch.equal(torch.nn.functional.linear(x, weight, bias), expected)  # gradients on


def uncached_greedy(lm: LM, tok: Tokenizer, prompt: str, max_seq_len: int) -> list:
    """Greedy sampling the plain way: the whole sequence through lm at each step, no cache, no decoding copies."""
    with torch.no_grad():
        ids = [tok.bos_id] + tok(prompt)
        while len(ids) - 1 < max_seq_len:
            ids.append(lm(torch.tensor([ids]))[0, -1].argmax().item())
    return ids[1:]


@pytest.mark.parametrize("arch", ARCHS)
def test_cpu_decoding_swaps_in_equal_copies_and_sees_edits(tok, arch, every_trick):
    """Decoding on a CPU multiplies the large weights through oneDNN copies and reads the other block
    weights from [in, out]-ordered copies: the same values, undone afterwards, and remade after any
    edit (in place, or through .data); greedy sampling after the edits equals a plain forward loop."""
    lm = make_lm(tok, layer_architecture=arch, n_layers=1, dim=640, n_heads=8)
    weights = linear_weights(lm.decoder)
    assert {tuple(w.shape) for w in weights} == {(1920, 640), (640, 640), (2560, 640), (640, 2560)}
    large = [w for w in weights if w.numel() >= ONEDNN_WEIGHT] if onednn_available() else []
    small = [w for w in weights if all(w is not v for v in large)]
    assert len(large) in (0, 3) and small
    values = [w.detach().clone() for w in weights]

    def check_copies(expected):
        for w, v in zip(weights, expected):
            assert torch.equal(w, v)
            if any(w is u for u in large):
                assert torch.equal(_COPIES[w]["onednn"][2].to_dense(), v) and w.is_contiguous()
            else:
                assert not w.is_contiguous()

    with cpu_decoding(lm):
        check_copies(values)
    assert all(w.is_contiguous() for w in weights)
    lm.sample("the", max_seq_len=12, temperature=0)  # a decoding run before the edits: nothing of it may stay
    with torch.no_grad():
        large_or_small = large[0] if large else small[0]
        large_or_small[0, 0] += 1.0
        small[0][1, 1] += 1.0
    weights[1].data[3, 4] -= 1.0  # not seen by the version counter
    values = [w.detach().clone() for w in weights]
    with cpu_decoding(lm):
        check_copies(values)
    with cpu_decoding(lm, rows=4):  # several rows: oneDNN copies, weights as they are
        assert all(w.is_contiguous() for w in weights)
    greedy = lm.sample("the", max_seq_len=12, temperature=0, as_str=False)
    assert isinstance(copy.deepcopy(lm), LM)  # the copies are not on the LM: it still copies and pickles
    torch.save(lm, io.BytesIO())
    drop_copies(lm)
    assert greedy == uncached_greedy(lm, tok, "the", 12)


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")
def test_onednn_products_agree_with_f_linear():
    """With a oneDNN copy (as cpu_decoding makes them), F.linear while decoding gives F.linear's values (to
    float rounding) for one row and for many rows, and the BLAS products in between."""
    torch.manual_seed(0)
    layer, head = torch.nn.Linear(512, 1024), torch.nn.Linear(64, 9000, bias=False)
    for weight, bias in ((layer.weight, layer.bias), (layer.weight, None), (head.weight, None)):
        copies = {id(weight): weight.detach().to_mkldnn()}
        for shape in ((1, weight.shape[1]), (1, 1, weight.shape[1]), (3, weight.shape[1]),
                      (2, MANY_ROWS, weight.shape[1]), (70, weight.shape[1])):
            x = torch.randn(shape)
            expected = torch.nn.functional.linear(x, weight, bias)
            got = fast_linear(x, weight, bias, copies)
            assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4)


def test_cpu_decoding_leaves_other_dtypes_to_blas(tok, every_trick):
    """oneDNN's bf16 product needs CPU features that not every machine has: a bfloat16 model decodes
    through the BLAS products, with no oneDNN copies, and gives its plain forward loop's tokens."""
    lm = make_lm(tok, layer_architecture="custom-transformer", n_layers=1, dim=640, n_heads=8).to(torch.bfloat16)
    drop_copies(lm)
    with cpu_decoding(lm):
        assert not any("onednn" in _COPIES.get(w, {}) for w in linear_weights(lm))
    assert lm.sample("the", max_seq_len=8, temperature=0, as_str=False) == uncached_greedy(lm, tok, "the", 8)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_prompts_and_beams_through_onednn_match_one_by_one(tok, arch, monkeypatch, every_trick):
    """Weights large enough for oneDNN's product (cpu_speedups.ONEDNN_WEIGHT): 9 prompts as one batch
    (9 rows, fewer as rows finish) give the tokens of sampling each alone (one row), and beam search (5
    beams; its prompt read as 9 positions) the sequences and scores it finds without oneDNN."""
    lm = make_lm(tok, layer_architecture=arch, n_layers=2, dim=640, n_heads=8)
    assert sum(w.numel() >= ONEDNN_WEIGHT for w in linear_weights(lm)) >= 4
    prompts = ["the", "a", "bb", "ccc", "dd", "e", "ffff", "g", "hh"]
    alone = [lm.sample(p, max_seq_len=12, temperature=0) for p in prompts]
    assert lm.sample(prompts, max_seq_len=12, temperature=0) == alone
    beams = lm.beam_search("abcdefgh", beam_size=5, max_seq_len=14, n_best=3, as_str=False)
    monkeypatch.setattr("model.decoding.cpu_speedups.onednn_available", lambda: False)
    plain = lm.beam_search("abcdefgh", beam_size=5, max_seq_len=14, n_best=3, as_str=False)
    assert [ids for ids, _ in beams] == [ids for ids, _ in plain]
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(beams, plain))
