"""lm-evaluation-harness on our LM (train/lm_eval_adapter.py): parity with lm-eval's HF backend (HFLM) on tiny
random GPT-2 / Llama checkpoints and an exported trained run, recurrent runs, hooks, generation, the local
eval_tasks/, model_explorer.evaluate, main.py --eval, TrainParams.eval_tasks while training, and the errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from data.data_params import DataParams
from main import build_arg_parser, main
from model.model_params import ModelParams
from model_helpers import TEXTS as CHAR_TEXTS, char_tokenizer, make_spread_lm
from pretrained import export_hf, get_pretrained
from pretrained_helpers import CHECKPOINTS, TEXTS, make_checkpoint, randomize, save_tokenizer
from train.lm_eval_adapter import ScaffoldLM, check_eval_request, evaluate, evaluate_full
from train.run import run_training
from train.run_folder import read_final, read_train_stats
from train.runs import Namer
from train.train_params import TrainParams, check_train_params

REPO = Path(__file__).resolve().parents[1]
LOCAL = ["ptb_next_word", "ptb_perplexity"]


def requests(pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def rolling(texts):
    return [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]


def assert_same_loglikelihoods(ours, theirs, pairs, texts):
    a, b = ours.loglikelihood(requests(pairs)), theirs.loglikelihood(requests(pairs))
    assert [g for _, g in a] == [g for _, g in b]
    torch.testing.assert_close(torch.tensor([v for v, _ in a]), torch.tensor([v for v, _ in b]), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(ours.loglikelihood_rolling(rolling(texts))),
                               torch.tensor(theirs.loglikelihood_rolling(rolling(texts))), atol=1e-4, rtol=1e-6)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """A random 2-layer GPT-2 with a 48-token context (so long requests are left-truncated)."""
    folder = tmp_path_factory.mktemp("gpt2")
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=48, vocab_size=50257, bos_token_id=50256,
                        eos_token_id=50256)
    randomize(GPT2LMHeadModel(config)).save_pretrained(folder)
    save_tokenizer(folder, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    return folder


GPT2_PAIRS = [("Well the weather", " for the whole area"), ("Hello", " world!"), ("", "A third line"),
              ("A third, longer line ", "of text"), (" ".join(TEXTS * 3), " here."), ("Hello", " there")]


def test_gpt2_matches_hflm_per_request_and_on_the_local_tasks(gpt2_folder):
    ours, theirs = ScaffoldLM(get_pretrained(gpt2_folder), batch_size=4), HFLM(pretrained=str(gpt2_folder),
                                                                               batch_size=4, device="cpu")
    assert_same_loglikelihoods(ours, theirs, GPT2_PAIRS, TEXTS + [" ".join(TEXTS * 4)])  # the last: 3 windows
    a = evaluate(ours, LOCAL, limit=12)
    b = evaluate(theirs, LOCAL, limit=12)
    assert a["ptb_next_word"]["acc,none"] == b["ptb_next_word"]["acc,none"]
    assert a["ptb_next_word"]["acc_norm,none"] == b["ptb_next_word"]["acc_norm,none"]
    assert a["ptb_perplexity"]["bits_per_byte,none"] == pytest.approx(b["ptb_perplexity"]["bits_per_byte,none"],
                                                                      rel=1e-5)


def test_llama_with_its_own_bos_matches_hflm(tmp_path):
    model_class, config, _ = CHECKPOINTS["llama"]
    folder = make_checkpoint(tmp_path / "llama", model_class, config)
    ours, theirs = ScaffoldLM(get_pretrained(folder), batch_size=3), HFLM(pretrained=str(folder), batch_size=3,
                                                                          device="cpu")
    assert ours.prefix_token_id == theirs.prefix_token_id == 1
    pairs = [("Well the weather", " for the whole"), ("", "Hello world!"), ("the", " weather"), ("A third", ", longer")]
    assert_same_loglikelihoods(ours, theirs, pairs, TEXTS)


def test_hooks_apply_and_generation_follows_sample(gpt2_folder):
    lm = get_pretrained(gpt2_folder)
    adapter = ScaffoldLM(lm, batch_size=2)
    pairs = [("Well the weather", " for the"), ("Hello", " world!")]
    plain = adapter.loglikelihood(requests(pairs))
    zero_block = {"blocks.0.hook_resid_post": lambda t, name: torch.zeros_like(t)}
    with lm.hooks(zero_block):
        hooked = adapter.loglikelihood(requests(pairs))
    ids = [lm.tokenizer("Hello world!")]
    with torch.no_grad():
        logits = lm.run_with_hooks(ids, zero_block)
    logprobs = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, torch.tensor(ids[0][1:])[:, None]).sum()
    assert hooked[1][0] == pytest.approx(float(logprobs), abs=1e-4)
    assert hooked[1][0] != pytest.approx(plain[1][0], abs=1e-3)

    greedy = lm.sample("Well the weather", max_seq_len=len(lm.tokenizer("Well the weather")) + 6, temperature=0,
                       as_str=False)
    expected = lm.tokenizer.decode(greedy[len(lm.tokenizer("Well the weather")):], skip_special_tokens=True)
    stop = expected[3:6]
    gen = [Instance("generate_until", {}, ("Well the weather", {"until": [], "max_gen_toks": 6}), 0),
           Instance("generate_until", {}, ("Well the weather", {"until": [stop], "max_gen_toks": 6}), 1)]
    assert adapter.generate_until(gen) == [expected, expected.split(stop)[0]]


def test_recurrent_rolling_loglikelihood_equals_perplexities():
    lm = make_spread_lm(char_tokenizer(), layer_architecture="lstm", max_seq_len=64).eval()
    adapter = ScaffoldLM(lm, batch_size=2)
    totals = adapter.loglikelihood_rolling(rolling(CHAR_TEXTS))
    for text, total in zip(CHAR_TEXTS, totals):
        mean_ce, _, _, n, _ = lm.perplexities([text], before_exp=True)
        assert n == len(lm.tokenizer(text))
        assert -total == pytest.approx(mean_ce * n, rel=1e-5)


def test_bad_requests_fail_clearly_before_any_model_work(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown lm-eval task\(s\) \['ptb_next_wrd'\].*ptb_next_word"):
        check_eval_request(["ptb_next_wrd"])
    with pytest.raises(ValueError, match="include path .* is not a folder"):
        check_eval_request(LOCAL, include_path=tmp_path / "missing")
    with pytest.raises(ValueError, match="limit must be > 0"):
        evaluate(object(), LOCAL, limit=0)
    for argv, message in ((["--tasks", "ptb_next_word", "--limit", "0"], "--eval: limit must be > 0"),
                          (["--tasks", "ptb_nxt_word"], "unknown lm-eval task"), ([], "--eval needs --tasks")):
        with pytest.raises(SystemExit):  # the run does not exist either: it is never looked for
            main(["--eval", "no-such-run", *argv])
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="eval_limit=0"):
        check_train_params(TrainParams(eval_tasks=["ptb_next_word"], eval_limit=0))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A GPT-2-shaped run trained a few steps on PTB, scoring ptb_next_word at each validation."""
    save_dir = tmp_path_factory.mktemp("saved")
    args = build_arg_parser().parse_args(["--config=lm-eval", "--no-wandb", "--save", f"--save-dir={save_dir}"])
    namer = Namer(DataParams(dataset_name="ptb", max_seq_len=32, max_train_samples=64, max_eval_samples=16),
                  ModelParams(n_layers=2, n_heads=2, dim=32, activation="gelu_tanh"),
                  TrainParams(max_steps=4, batch_size=16, lr=1e-2, n_print_samples=0, val_check_interval=2,
                              eval_tasks=["ptb_next_word"], eval_limit=6), args, config_name="lm-eval")
    return Path(run_training(namer)["save_folder"])


def test_eval_tasks_are_tracked_while_training(trained_run):
    stats = read_train_stats(trained_run)
    steps = [entry[0] for entry in stats["eval/ptb_next_word/acc"]]
    assert steps == [2, 4]  # each validation; the end of training (step 4) is not scored twice
    assert read_final(trained_run)["eval/ptb_next_word/acc"] == stats["eval/ptb_next_word/acc"][-1][-1]


def test_exported_trained_run_matches_hflm(trained_run, tmp_path):
    from train.run_folder import load_run
    lm = load_run(trained_run).lm
    out = export_hf(lm, tmp_path / "exported")
    pairs = [("no it was n't black", " monday"), ("but while the new york stock exchange", " did n't fall"),
             ("", "the dow jones")]
    assert_same_loglikelihoods(ScaffoldLM(lm), HFLM(pretrained=str(out), batch_size=2, device="cpu"), pairs,
                               ["some circuit breakers installed after the october N crash failed"])


def test_model_explorer_and_command_line_evaluate_a_run(trained_run):
    import model_explorer
    results = model_explorer.evaluate(trained_run, ["ptb_next_word"], limit=5)
    assert set(results["ptb_next_word"]) >= {"acc,none", "acc_norm,none"}
    saved = sorted((trained_run / "eval").glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["results"] == results
    command = [sys.executable, "main.py", "--eval", trained_run.name, "--tasks", "ptb_next_word,ptb_perplexity",
               "--limit", "4", "--batch-size", "8", f"--save-dir={trained_run.parents[3]}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "|ptb_next_word |" in done.stdout and "word_perplexity" in done.stdout
    assert len(list((trained_run / "eval").glob("*.json"))) == 2


def test_include_path_adds_tasks(tmp_path, gpt2_folder):
    (tmp_path / "copy.yaml").write_text((REPO / "eval_tasks" / "ptb" / "ptb_next_word.yaml").read_text()
                                        .replace("task: ptb_next_word", "task: ptb_next_word_copy"))
    (tmp_path / "utils.py").write_text((REPO / "eval_tasks" / "ptb" / "utils.py").read_text())
    out = evaluate_full(get_pretrained(gpt2_folder), "ptb_next_word_copy", limit=3, include_path=tmp_path,
                        save_folder=tmp_path / "out")
    assert Path(out["saved_to"]).parent == tmp_path / "out" / "eval"
    assert "acc,none" in out["results"]["ptb_next_word_copy"]
