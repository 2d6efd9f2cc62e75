"""Corpora larger than memory: memory-mapped token files, lazy line sources, `hf:` datasets, flat memory."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data import line_sources
from data.dataloader import DataParams, LMDataModule, get_data
from data.line_sources import TextFileLines
from data.natural import read_lines
from data.token_file import TokenFile, write_token_file
from data.token_windows import TokenWindows
from data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]


def all_rows(ds):
    return ds.__getitems__(range(len(ds)))


@pytest.mark.parametrize("mode", ["stream", "lines"])
def test_memmap_batches_equal_the_in_memory_path_on_ptb(mode):
    mapped = LMDataModule(DataParams(dataset_name="ptb", sample_mode=mode), batch_size=16, seed=1)
    in_ram = LMDataModule(DataParams(dataset_name="ptb", sample_mode=mode, memmap=False), batch_size=16, seed=1)
    assert isinstance(mapped.datasets["train"], TokenWindows) and not isinstance(in_ram.datasets["train"], TokenWindows)
    assert mapped.datasets["train"].token_file.dtype == np.uint16  # a 10k vocabulary fits
    for split in mapped.datasets:
        a, b = mapped.datasets[split], in_ram.datasets[split]
        assert len(a) == len(b) and torch.equal(a.lengths, b.lengths.long())
        rows_a, rows_b = all_rows(a), all_rows(b)
        assert rows_a.keys() == rows_b.keys() and all(torch.equal(rows_a[k], rows_b[k]) for k in rows_a)
        assert torch.equal(a[len(a) - 1], b[len(b) - 1])
    for batch_a, batch_b, _ in zip(mapped.train_dataloader(), in_ram.train_dataloader(), range(20)):
        assert all(torch.equal(batch_a[k], batch_b[k]) for k in ("x_indices", "mask"))


def test_token_ids_are_uint32_when_the_vocabulary_outgrows_uint16(tmp_path):
    words = [f"w{i}" for i in range(70_000)]
    tok = Tokenizer.train("word", [" ".join(words)], vocab_size=80_000)
    assert tok.vocab_size > 65_536
    lines = [" ".join(words[i:i + 7]) for i in range(0, 70_000, 7000)] + ["", "w69999 w1"]
    token_file, n_lines = write_token_file(tmp_path, "train", lines, tok)
    assert n_lines == len(lines) and token_file.dtype == np.uint32
    ragged = TokenFile(tmp_path, "train", np.uint32).ragged()  # read back through a fresh map
    assert [ragged.ids[a:b].tolist() for a, b in zip(ragged.offsets[:-1], ragged.offsets[1:])] == tok(lines)
    assert int(token_file.tokens.max()) >= 65_536 and token_file.tokens[0] == tok.eos_id


def test_text_file_lines_split_like_read_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(line_sources, "READ_CHUNK", 5)  # lines cross chunk boundaries
    path = tmp_path / "t.txt"
    for text in ("ab\r\ncd\n\nefghijklm\nno", "x\n", "", "\n\n", "été\r\n∑ä\n"):
        path.write_bytes(text.encode())
        assert list(TextFileLines(path)) == read_lines(path)


def test_hf_dataset_from_a_local_folder_with_a_text_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"train": [f"the cat {i} sat" for i in range(30)], "validation": ["a cat sat", "the dog"]}
    folder = tmp_path / "data" / "mydocs"
    folder.mkdir(parents=True)
    for split, texts in rows.items():
        datasets.Dataset.from_dict({"id": list(range(len(texts))), "body": texts}).to_json(
            str(folder / f"{split}.jsonl"))
    # by path, and by name inside the data folder; no test split: test = validation
    for name in (f"hf:{folder}", "hf:mydocs"):
        data = get_data(DataParams(dataset_name=name, text_column="body"), data_path=tmp_path / "data")
        assert list(data.train) == rows["train"] and list(data.test) == rows["validation"]
        assert data.sample_mode == "stream" and data.tokenizer == "bpe"
    dm = LMDataModule(DataParams(dataset_name="hf:mydocs", text_column="body", tokenizer="word", max_seq_len=8),
                      data_path=tmp_path / "data")
    tok = dm.tokenizer
    assert int((dm.datasets["val:main"].lengths - 1).sum()) == sum(len(tok(t)) + 1 for t in rows["validation"])
    with pytest.raises(ValueError, match=r"no column 'text'.*columns are id, body.*text_column"):
        get_data(DataParams(dataset_name="hf:mydocs"), data_path=tmp_path / "data")


def test_building_on_a_big_corpus_keeps_memory_flat():
    """bench/bench_tokenize.py on generated corpora of 0.3M and 1.5M words, one after the other: the peak
    RSS of building the data module (tokenizer training + streamed tokenization into the memory-mapped
    cache) stays under 150 MB above the RSS before the build, and the 5x larger corpus costs under
    40 MB more. Measured here: about 45 and 65 MB; the growth is the `tokenizers` trainer's (about 5 MB
    per million words for word-level); the token stream is never held in memory, only 1 Mi-character
    chunks of text are. (The 50M-token version of this is in bench/RESULTS.md.)"""
    small, big = [json.loads(subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_tokenize.py"), "--tokens", str(n), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=True).stdout.strip().splitlines()[-1])
        for n in (3e5, 1.5e6)]
    assert big["tokens"] > 4.5 * small["tokens"] and big["token_dtype"] == "uint16"
    assert small["peak_above_before_mb"] < 150 and big["peak_above_before_mb"] < 150, json.dumps([small, big])
    assert big["peak_above_before_mb"] - small["peak_above_before_mb"] < 40, json.dumps([small, big])
    assert big["second_build_s"] < 5  # the cache hit


def test_a_token_cache_entry_stored_by_a_parallel_run_is_kept_not_replaced(tmp_path, monkeypatch):
    """Two DDP ranks (or sweep runs) tokenize the same corpus at once: the one that finishes second must
    keep the first one's entry (that run may be reading it already), not delete and replace it."""
    from data import token_cache
    lines = [f"line {i} says {i % 7}" for i in range(200)]
    tok = Tokenizer.train("word", lines, vocab_size=50)
    texts = {"train": lines, "val": lines[:20]}
    write, seen = token_cache.write_token_file, {}

    def write_while_a_parallel_run_finishes(folder, name, split_lines, tokenizer):
        if not seen:  # the parallel run starts and finishes while this one is writing its first split
            seen["started"] = True
            seen["files"] = token_cache.cached_token_files(texts, tok, "parallel", tmp_path)
            seen["inode"] = (seen["files"]["train"].bin_path).stat().st_ino
        return write(folder, name, split_lines, tokenizer)

    monkeypatch.setattr(token_cache, "write_token_file", write_while_a_parallel_run_finishes)
    files = token_cache.cached_token_files(texts, tok, "parallel", tmp_path)
    assert files["train"].bin_path.stat().st_ino == seen["inode"]  # the parallel run's file, untouched
    assert np.array_equal(files["train"].tokens, seen["files"]["train"].tokens)
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == [files["train"].bin_path.parent.name]  # no tmp left


def test_only_rank_zero_says_it_is_tokenizing(tmp_path, monkeypatch, capsys):
    """Under srun or torchrun every rank starts at once and tokenizes a cold cache: one report is enough."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from data import token_cache
    lines = [f"line {i} says {i % 7}" for i in range(50)]
    tok = Tokenizer.train("word", lines, vocab_size=50)
    for rank, cache in ((1, tmp_path / "rank1"), (0, tmp_path / "rank0")):
        monkeypatch.setattr(rank_zero_only, "rank", rank, raising=False)
        files = token_cache.cached_token_files({"train": lines}, tok, "ranks", cache)
        assert len(files["train"].tokens) > 0  # every rank tokenizes and reads the same files
        said = capsys.readouterr().out
        assert ("tokenizing ranks" in said and "tokenized train" in said) == (rank == 0), (rank, said)
