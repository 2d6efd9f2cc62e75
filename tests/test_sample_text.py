"""Samples that read like the corpus: in stream-mode text <eos> is a line end (a newline in text
samples, and sampling runs on across it by default); lines-mode and synthetic models keep showing
the token and stopping at it. The sample mode is saved with a run and read back."""
import json
from typing import Any, Dict, List

import pytest
import torch
from lightning.pytorch.loggers import Logger

from data.data_params import DataParams
from data.dataloader import LMDataModule
from data.tokenizer import Tokenizer
from model.lm import LM
from model.model_params import ModelParams
from model.decoding.sample_text import render_sample, resolve_stop_at_eos, sample_mode_of_saved_run
from model_helpers import char_tokenizer, make_lm
from train.run import make_trainer
from train.run_folder import load_run, save_run
from train.trainer import LMTrainer, format_sample
from train.train_params import TrainParams


def eos_always_next(lm: LM) -> LM:
    """Make eos the most likely next token at every position."""
    with torch.no_grad():
        lm.decoder.final_norm.weight.fill_(0.0)
        lm.decoder.final_norm.bias.fill_(0.0)
        lm.decoder.final_norm.bias[0] = 1.0
        lm.out_proj.weight[:, 0] = 0.0
        lm.out_proj.weight[lm.tokenizer.eos_id, 0] = 5.0
    return lm


def test_stream_text_renders_eos_as_a_newline():
    char = Tokenizer.train("char", ["ROMEO: What", "JULIET: ho"])
    ids = char("ROMEO:") + [char.eos_id] + char("What") + [char.eos_id]
    assert render_sample(char, ids, "stream") == "ROMEO:\nWhat\n"
    assert render_sample(char, ids, "lines") == "ROMEO:<eos>What<eos>"
    assert render_sample(char, ids, None) == char.decode(ids)
    word = Tokenizer.train("word", ["the company said", "it will be"])
    ids = word("the company") + [word.eos_id] + word("it will")
    assert render_sample(word, ids, "stream") == "the company\nit will"  # no spaces around the line end
    assert render_sample(word, ids, "synthetic") == "the company <eos> it will"


def test_stop_at_eos_defaults_per_sample_mode():
    assert resolve_stop_at_eos(None, "stream") is False
    for mode in ("lines", "synthetic", None):
        assert resolve_stop_at_eos(None, mode) is True
    assert resolve_stop_at_eos(True, "stream") is True and resolve_stop_at_eos(False, "lines") is False


@pytest.mark.parametrize("mode", ["stream", "lines", "synthetic", None])
def test_lm_sample_continues_stream_text_and_stops_elsewhere(mode):
    tok = char_tokenizer()
    lm = eos_always_next(make_lm(tok))
    lm.sample_mode = mode
    text = lm.sample(pref="ab", max_seq_len=5, temperature=0.0)
    ids = lm.sample(pref="ab", max_seq_len=5, temperature=0.0, as_str=False)
    if mode == "stream":  # a bare call continues across line ends, shown as newlines
        assert ids == tok("ab") + [tok.eos_id] * 3 and text == "ab\n\n\n"
        assert lm.sample(pref="ab", max_seq_len=5, temperature=0.0, stop_at_eos=True) == "ab"
    else:  # stops at eos
        assert ids == tok("ab") and text == "ab"
        assert lm.sample(pref="ab", max_seq_len=5, temperature=0.0, stop_at_eos=False) == "ab<eos><eos><eos>"
    assert lm.with_layer_architecture("custom-transformer").sample_mode == mode
    batched = lm.sample(pref=["ab", "a"], max_seq_len=5, temperature=0.0)  # a list of prompts reads the same
    assert batched == [text, lm.sample(pref="a", max_seq_len=5, temperature=0.0)]
    beam = lm.beam_search(pref="ab", beam_size=2, max_seq_len=5, stop_at_eos=False)
    assert beam == ("ab\n\n\n" if mode == "stream" else "ab<eos><eos><eos>")


def test_lm_refuses_an_unknown_sample_mode():
    with pytest.raises(ValueError, match="sample_mode must be one of stream, lines, synthetic"):
        LM(ModelParams(n_layers=1, dim=8, n_heads=2, max_seq_len=8), char_tokenizer(), sample_mode="streams")


def test_sample_mode_is_saved_with_the_run(tmp_path):
    tok = char_tokenizer()
    lm = eos_always_next(LM(ModelParams(n_layers=1, dim=8, n_heads=2, max_seq_len=8), tok, sample_mode="stream"))
    dp = DataParams(dataset_name="shakespeare")
    folder = save_run(tmp_path / "run", lm, dp, lm.model_params, TrainParams(), {}, {"val_loss": 1.0})
    loaded = load_run(folder).lm
    assert loaded.sample_mode == "stream"
    assert loaded.sample(pref="ab", max_seq_len=4, temperature=0.0) == "ab\n\n"
    # a run saved before the mode was recorded: inferred from its data params without reading data
    params = json.loads((folder / "params.json").read_text())
    del params["sample_mode"]
    (folder / "params.json").write_text(json.dumps(params))
    assert load_run(folder).lm.sample_mode == "stream"
    for name, mode, expected in (("ptb", "auto", "stream"), ("sort", "auto", "synthetic"),
                                 ("my-folder", "auto", "lines"), ("my-folder", "stream", "stream")):
        assert sample_mode_of_saved_run({"data_params": DataParams(dataset_name=name, sample_mode=mode)}) == expected


def test_printed_samples_read_like_the_corpus():
    assert format_sample("greedy", "ROMEO:\nWhat", "stream") == "  greedy : ROMEO:\n           What"
    assert format_sample("sampled", "a <eos> b", "lines") == "  sampled: 'a <eos> b'"


class TextLogger(Logger):
    """Records what log_text receives (the samples table wandb gets)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: List[Dict[str, Any]] = []

    name = "text"
    version = "0"

    def log_metrics(self, metrics: Dict[str, float], step: int = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_text(self, key: str, columns: List[str], data: List[List[Any]], step: int = None) -> None:
        self.tables.append({"key": key, "columns": columns, "data": data, "step": step})


def test_training_prints_and_logs_stream_samples_with_line_ends(capsys):
    dp = DataParams(dataset_name="shakespeare", max_seq_len=16, max_train_samples=32, max_eval_samples=16)
    tp = TrainParams(epochs=1, batch_size=16, lr=1e-3, warmup_steps=1, n_print_samples=2, print_sample_len=40)
    dm = LMDataModule(dp, batch_size=tp.batch_size)
    torch.manual_seed(0)
    lm = eos_always_next(LM(ModelParams(n_layers=1, dim=16, n_heads=2, max_seq_len=16), dm.tokenizer,
                            sample_mode=dm.sample_mode))
    logger = TextLogger()
    lm_trainer = LMTrainer(lm, tp, val_names=dm.val_names)
    trainer = make_trainer(tp, torch.device("cpu"), n_train_batches=2, logger=logger, enable_progress_bar=False)
    trainer.fit(lm_trainer, train_dataloaders=dm.train_dataloader(), val_dataloaders=dm.val_dataloader())
    [table] = logger.tables
    assert table["key"] == "samples" and table["columns"] == ["epoch", "step", "kind", "text"]
    texts = [row[3] for row in table["data"]]
    assert [row[2] for row in table["data"]] == ["greedy", "sampled"]
    assert all("<eos>" not in text for text in texts) and "\n" in texts[0]
    printed = capsys.readouterr().out
    assert "  greedy : " in printed and "<eos>" not in printed and "\\n" not in printed
