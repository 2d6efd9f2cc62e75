"""Tokenizers (char, word, bpe, gpt2), tokenizer.json, mycollate, and where the data folder is found."""
import json
import os
from pathlib import Path

import pytest
import torch

from data.data_path import DEFAULT_CACHE_DIR, cache_dir, data_path_files, find_data_path
from data.dataloader import DataParams, LMDataModule, mycollate
from data.tokenizer import Tokenizer

GPT2_DIR = Path(os.environ["LM_DATA_PATH"]) / "gpt2-tokenizer"
TEXTS = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"]


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_trained_tokenizers_round_trip(kind, tmp_path):
    tok = Tokenizer.train(kind, TEXTS, vocab_size=300)
    assert tok.pad_id == tok.bos_id == tok.eos_id == tok.hf.token_to_id("<eos>")
    ids = tok("the cat sat on the log")
    assert tok.decode(ids) == "the cat sat on the log" and ids[0] != tok.bos_id  # no BOS added
    assert tok(["the cat", "a dog"]) == [tok("the cat"), tok("a dog")]
    assert sorted(tok.hf.get_vocab().values()) == list(range(tok.vocab_size))  # no holes
    tok.save(tmp_path)
    json.loads((tmp_path / "tokenizer.json").read_text())  # plain JSON, no pickle
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded("the cat sat") == tok("the cat sat") and loaded.vocab_size == tok.vocab_size


def test_word_tokenizer_unk_and_caps():
    tok = Tokenizer.train("word", ["a a a b b c <unk> <unk>"], vocab_size=4)
    assert tok.vocab_size == 4 and tok.unk_id == 1  # <eos>, <unk>, a, b
    assert tok("a b c zebra <unk>") == [tok("a")[0], tok("b")[0], 1, 1, 1]
    assert Tokenizer.train("word", ["a a b"], min_count=2).vocab_size == 3
    assert Tokenizer.train("word", ["The THE the"], lowercase=True).vocab_size == 3


def test_bpe_is_lossless_on_any_text():
    tok = Tokenizer.train("bpe", TEXTS, vocab_size=280)
    text = "Zürich — naïve 東京 \t tabs"
    assert tok.decode(tok(text)) == text and tok.unk_id is None


def test_gpt2_ids():
    tok = Tokenizer.gpt2(GPT2_DIR)
    assert tok("Well the weather") == [5779, 262, 6193]
    assert tok.eos_id == tok.pad_id == 50256 and tok.vocab_size == 50257
    assert tok.decode(tok(" Hello, world!")) == " Hello, world!"
    assert tok.tokens([5779, 262]) == ["Well", "Ġthe"]


def test_gpt2_tokenizer_for_a_task():
    dm = LMDataModule(DataParams(dataset_name="copy", tokenizer="gpt2", n_train_samples=50, n_eval_samples=10))
    assert dm.tokenizer.vocab_size == 50257 and dm.tokenizer("Well the weather") == [5779, 262, 6193]
    batch = next(iter(dm.train_dataloader()))
    assert batch["x_indices"][:, 0].eq(50256).all()


def test_given_tokenizer_and_tokenizer_path(tmp_path):
    tok = Tokenizer.train("word", ["0 1 2 3 4 5 6 7 8 9 = + ( ) [ ] { } < >"] * 2)
    dm = LMDataModule(DataParams(dataset_name="copy", n_train_samples=50, n_eval_samples=10), tokenizer=tok)
    assert dm.tokenizer is tok and dm.tokenizer_kind == "given"
    tok.save(tmp_path)
    dm = LMDataModule(DataParams(dataset_name="copy", tokenizer=str(tmp_path), n_train_samples=50, n_eval_samples=10))
    assert dm.tokenizer.hf.to_str() == tok.hf.to_str()


def test_mycollate_shapes_and_masks():
    batch = mycollate([[5, 6, 7], [8], torch.tensor([9, 10])], pad_id=0)
    assert torch.equal(batch["x_indices"], torch.tensor([[5, 6, 7], [8, 0, 0], [9, 10, 0]]))
    assert torch.equal(batch["mask"], torch.tensor([[True, True, True], [True, False, False], [True, True, False]]))
    assert batch["x_indices"].dtype == torch.long and batch["mask"].dtype == torch.bool
    assert mycollate([[1, 2]], pad_id=50256)["x_indices"].shape == (1, 2)
    assert mycollate([[3], [1, 2]], pad_id=50256)["x_indices"][0, 1] == 50256


def test_data_path_precedence(tmp_path, monkeypatch):
    repo = tmp_path / "a" / "b" / "repo"
    repo.mkdir(parents=True)
    far, near = data_path_files(repo)
    assert far == repo / "data-path.txt" and near == tmp_path / "a" / "data-path.txt"
    monkeypatch.delenv("LM_DATA_PATH", raising=False)
    assert find_data_path(None, repo) is None
    near.write_text("# shared corpora\nshared/data\n")  # relative to the file's folder
    assert find_data_path(None, repo) == tmp_path / "a" / "shared" / "data"
    far.write_text(str(tmp_path / "repo-root-data") + "\n")
    assert find_data_path(None, repo) == tmp_path / "repo-root-data"
    monkeypatch.setenv("LM_DATA_PATH", str(tmp_path / "env-data"))
    assert find_data_path(None, repo) == tmp_path / "env-data"
    assert find_data_path(str(tmp_path / "flag-data"), repo) == tmp_path / "flag-data"


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    assert cache_dir(tmp_path / "d") == tmp_path / "d"
    assert DEFAULT_CACHE_DIR == "~/.cache/lm-scaffold"
