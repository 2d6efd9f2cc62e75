"""Natural-text tasks end to end: PTB, Tiny Shakespeare, WikiText (local copy), custom folders,
the token cache, batches and the errors for missing data."""
import os
from pathlib import Path

import pytest
import torch

from data import natural, token_file
from data.dataloader import DataParams, LMDataModule, get_data, mycollate
from data.tokenizer import Tokenizer

SHARED = Path(os.environ["LM_DATA_PATH"])
PTB_LINES = {"train": 42068, "val:main": 3370, "test": 3761}
PTB_TOKENS_WITH_EOS = {"train": 929589, "val:main": 73760, "test": 82430}


@pytest.fixture(scope="module")
def ptb() -> LMDataModule:
    """Full PTB, stream mode (tokenized once per test session; later builds hit the cache)."""
    return LMDataModule(DataParams(dataset_name="ptb"), batch_size=8)


def no_tokenizing(monkeypatch):
    """Make any tokenizer training or split tokenization fail loudly."""
    def boom(*args, **kwargs):
        raise AssertionError("tokenized or trained again although the cache holds the result")
    monkeypatch.setattr(token_file, "encode_chunk", boom)
    monkeypatch.setattr(Tokenizer, "train", boom)


def test_ptb_line_counts_and_vocab():
    data = get_data(DataParams(dataset_name="ptb"))
    assert (len(data.train), len(data.val["main"]), len(data.test)) == tuple(PTB_LINES.values())
    assert data.tokenizer == "word" and data.sample_mode == "stream"


def test_ptb_stream_token_counts(ptb):
    assert ptb.tokenizer.vocab_size == 10000  # 9,999 words incl. <unk>, plus <eos>
    assert ptb.sample_mode == "stream" and ptb.val_names == ["main"]
    L = ptb.data_params.max_seq_len
    for split, n_tokens in PTB_TOKENS_WITH_EOS.items():
        ds = ptb.datasets[split]
        # every token after the leading <eos> is predicted exactly once: words plus one <eos> per line
        assert int((ds.lengths - 1).sum()) == n_tokens
        assert (ds.lengths[:-1] == L + 1).all() and 2 <= ds.lengths[-1] <= L + 1
        x = ds.__getitems__(range(len(ds)))["x_indices"]
        assert torch.equal(x[:-1, -1], x[1:, 0])  # windows overlap by one token
    first = ptb.datasets["train"][0].tolist()
    line0 = ptb.tokenizer(get_data(DataParams(dataset_name="ptb")).train[0])
    assert first[:len(line0) + 2] == [ptb.tokenizer.eos_id] + line0 + [ptb.tokenizer.eos_id]


def test_ptb_second_build_uses_cache_and_lines_mode(ptb, monkeypatch):
    no_tokenizing(monkeypatch)
    dm = LMDataModule(DataParams(dataset_name="ptb", sample_mode="lines"))
    assert [dm.len(s) for s in PTB_LINES] == list(PTB_LINES.values())
    assert dm.tokenizer.hf.to_str() == ptb.tokenizer.hf.to_str()
    tok = dm.tokenizer
    line0 = get_data(DataParams(dataset_name="ptb")).train[0]
    assert dm.datasets["train"][0].tolist() == [tok.eos_id] + tok(line0) + [tok.eos_id]
    cache = Path(os.environ["LM_CACHE_DIR"])
    assert list((cache / "tokens").glob("ptb-*/train.bin")) and list((cache / "tokenizers").glob("ptb-word-*.json"))
    assert sorted(p.name for p in (SHARED / "ptb").iterdir()) == ["PROVENANCE.md", "ptb.test.txt",
                                                                   "ptb.train.txt", "ptb.valid.txt"]


def test_ptb_slices_and_batches(ptb, monkeypatch):
    no_tokenizing(monkeypatch)
    p = DataParams(dataset_name="ptb", max_train_samples=40, max_eval_samples=12)
    dm = LMDataModule(p, batch_size=16, seed=3)
    assert (dm.len("train"), dm.len("val"), dm.len("test")) == (40, 12, 12)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x_indices", "mask"}
    assert batch["x_indices"].dtype == torch.long and batch["mask"].dtype == torch.bool
    assert batch["x_indices"].shape == (16, p.max_seq_len + 1) and batch["mask"].all()
    # the same seed gives the same order, another seed another one
    again = next(iter(LMDataModule(p, batch_size=16, seed=3).train_dataloader()))
    other = next(iter(LMDataModule(p, batch_size=16, seed=4).train_dataloader()))
    assert torch.equal(batch["x_indices"], again["x_indices"])
    assert not torch.equal(batch["x_indices"], other["x_indices"])
    # batches from the tensor path equal mycollate over the single samples
    ds = ptb.datasets["train"]
    idx = [len(ds) - 1, 0, 5]  # the last window is short: padding shows up
    expected = mycollate([ds[i] for i in idx], pad_id=ptb.tokenizer.pad_id)
    got = ds.__getitems__(idx)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    val_loaders = dm.val_dataloader(batch_size=5)
    assert len(val_loaders) == 1 and [len(b["x_indices"]) for b in val_loaders[0]] == [5, 5, 2]
    assert sum(len(b["x_indices"]) for b in dm.test_dataloader()) == 12


def test_ptb_download_path_goes_through_datasets(tmp_path, monkeypatch):
    """No local ptb/: the files come through datasets' text builder (here from a local 'remote' holding
    the first lines of the real files) and read exactly like the local files."""
    remote = tmp_path / "remote"
    for f in natural.PTB_FILES.values():
        write_lines(remote / f, natural.read_lines(SHARED / "ptb" / f)[:50])
    monkeypatch.setattr(natural, "PTB_REMOTE_URL", str(remote) + "/")
    cache = tmp_path / "cache"
    data = get_data(DataParams(dataset_name="ptb"), data_path=tmp_path / "empty", cache_dir=cache)
    local = get_data(DataParams(dataset_name="ptb"))
    assert data.train == local.train[:50] and data.val["main"] == local.val["main"][:50]
    assert data.test == local.test[:50] and data.source == str(remote) + "/"
    # the download is kept in the cache folder, so later runs need no network
    monkeypatch.setattr(natural, "PTB_REMOTE_URL", str(tmp_path / "gone") + "/")
    again = get_data(DataParams(dataset_name="ptb"), data_path=tmp_path / "empty", cache_dir=cache)
    assert again.train == data.train and again.source == str(cache / "ptb")


def test_ptb_missing_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_data(DataParams(dataset_name="ptb"), data_path=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "ptb") in message and "ptb.train.txt" in message and "ptb/" in message
    assert natural.PTB_REMOTE_URL in message and "Fix:" in message


def test_ptb_incomplete_folder(tmp_path):
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.train.txt").write_text("a b\n")
    with pytest.raises(FileNotFoundError, match="lacks ptb.valid.txt, ptb.test.txt"):
        get_data(DataParams(dataset_name="ptb"), data_path=tmp_path)


def test_shakespeare_char_stream():
    dm = LMDataModule(DataParams(dataset_name="shakespeare", max_seq_len=128))
    lines = (SHARED / "tinyshakespeare" / "input.txt").read_text().split("\n")[:-1]
    data = get_data(DataParams(dataset_name="shakespeare"))
    assert data.train + data.val["main"] == lines and len(data.val["main"]) == 4000  # 90/10, contiguous
    assert data.test is data.val["main"]  # test_frac = 0: test = validation
    assert dm.sample_mode == "stream" and dm.tokenizer_kind == "char"
    tok = dm.tokenizer
    assert tok.vocab_size == len(set("".join(lines))) + 2  # every character, <eos>, <unk>
    assert int((dm.datasets["train"].lengths - 1).sum()) == sum(len(l) + 1 for l in data.train)
    text = tok.decode(dm.datasets["train"][0]).replace("<eos>", "\n")
    assert text == "\n" + "\n".join(lines)[:128]
    assert tok.decode(tok("First Citizen:")) == "First Citizen:"


def write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def test_custom_data_txt_task(tmp_path):
    lines = [f"w{i % 7} w{i % 5} w{i % 3}" for i in range(100)]
    write_lines(tmp_path / "mytask" / "data.txt", lines)
    p = DataParams(dataset_name="mytask", val_frac=0.1, test_frac=0.2, split_seed=1)
    data = get_data(p, data_path=tmp_path)
    assert (len(data.train), len(data.val["main"]), len(data.test)) == (70, 10, 20)
    assert sorted(data.train + data.val["main"] + data.test) == sorted(lines)
    assert get_data(p, data_path=tmp_path) == data  # deterministic
    p.split_seed = 2
    data = get_data(p, data_path=tmp_path)
    assert data.val["main"] != get_data(DataParams(dataset_name="mytask", test_frac=0.2, split_seed=1),
                                        data_path=tmp_path).val["main"]
    dm = LMDataModule(p, batch_size=4, data_path=tmp_path)
    assert dm.sample_mode == "lines" and dm.tokenizer_kind == "word"
    tok = dm.tokenizer
    assert tok.vocab_size == 2 + len({w for line in data.train for w in line.split()})  # + <eos>, <unk>
    assert dm.datasets["train"][0].tolist() == [tok.eos_id] + tok(data.train[0]) + [tok.eos_id]
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch["x_indices"].shape == (4, 5) and batch["mask"].all()


def test_custom_folder_defaults_and_truncation(tmp_path):
    write_lines(tmp_path / "strings" / "data.txt", ["abba", "abab", "aabbaabb", "", "ba"] * 4)
    dm = LMDataModule(DataParams(dataset_name="strings", max_seq_len=6, val_frac=0.25), data_path=tmp_path)
    assert dm.tokenizer_kind == "char"  # no line has two words
    assert all(len(dm.datasets[s]) for s in dm.datasets)
    lengths = dm.datasets["train"].lengths
    assert lengths.max() == 7 and lengths.min() == 4  # "<eos> aabbaa" truncated; "<eos> ba <eos>"
    assert len(dm.datasets["train"]) == 12  # 15 training lines, 3 of them empty


def test_custom_train_valid_test_files(tmp_path):
    folder = tmp_path / "qa"
    write_lines(folder / "train.txt", ["q a b", "q b c", "q c a"])
    write_lines(folder / "valid.txt", ["q a c"])
    data = get_data(DataParams(dataset_name="qa"), data_path=tmp_path)
    assert list(data.train) == ["q a b", "q b c", "q c a"] and list(data.val["main"]) == ["q a c"]
    assert data.test is data.val["main"]
    write_lines(folder / "test.txt", ["q b a", "q c b"])
    assert list(get_data(DataParams(dataset_name="qa"), data_path=tmp_path).test) == ["q b a", "q c b"]
    (folder / "valid.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no valid.txt"):
        get_data(DataParams(dataset_name="qa"), data_path=tmp_path)


def test_wikitext_from_a_local_copy(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = {"train": ["", " = Valkyria = \n", "", " The game is fun . \n"] * 3,
            "validation": ["", " = Homarus = \n", " The lobster is big . \n"],
            "test": [" = Robert = \n", " He was an actor . \n"]}
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    for split, texts in rows.items():
        datasets.Dataset.from_dict({"text": texts}).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    data = get_data(DataParams(dataset_name="wikitext-2"), data_path=tmp_path)
    assert data.train[:4] == ["", " = Valkyria =", "", " The game is fun ."]
    assert list(data.val["main"]) == ["", " = Homarus =", " The lobster is big ."] and len(data.test) == 2
    assert data.tokenizer == "bpe" and data.sample_mode == "stream" and data.source == str(folder)
    dm = LMDataModule(DataParams(dataset_name="wikitext-2", vocab_size=300), data_path=tmp_path)
    tok = dm.tokenizer
    assert tok.decode(tok(" The lobster is big .")) == " The lobster is big ."
    assert int((dm.datasets["val:main"].lengths - 1).sum()) == sum(len(tok(l)) + 1 for l in data.val["main"])


def test_wikitext_missing_says_how_to_provide_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_data(DataParams(dataset_name="wikitext-2"), data_path=tmp_path)
    assert "Salesforce/wikitext" in str(err.value) and "{data folder}/wikitext-2/" in str(err.value)


def test_unknown_dataset_lists_valid_names(tmp_path):
    write_lines(tmp_path / "mytask" / "data.txt", ["a b"] * 10)
    with pytest.raises(ValueError) as err:
        get_data(DataParams(dataset_name="ptbb"), data_path=tmp_path)
    message = str(err.value)
    assert "Did you mean 'ptb'" in message
    for name in ("shakespeare", "wikitext-2", "sort", "dyck", "mytask"):
        assert name in message
    with pytest.raises(ValueError, match="'mytask'"):
        get_data(DataParams(dataset_name="mytsk"), data_path=tmp_path)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="sample_mode='blocks'"):
        get_data(DataParams(dataset_name="copy", sample_mode="blocks"))
    with pytest.raises(ValueError, match="tokenizer='sentencepiece'"):
        get_data(DataParams(dataset_name="copy", tokenizer="sentencepiece"))
    with pytest.raises(ValueError, match="val_frac"):
        get_data(DataParams(dataset_name="copy", val_frac=0.0))
    with pytest.raises(ValueError, match="min_count must be >= 0"):  # not an OverflowError from tokenizers
        get_data(DataParams(dataset_name="copy", min_count=-1))


def test_non_utf8_data_file_names_the_file(tmp_path):
    (tmp_path / "latin1").mkdir()
    (tmp_path / "latin1" / "data.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 20)
    with pytest.raises(ValueError, match=r"latin1/data.txt is not UTF-8 text"):
        get_data(DataParams(dataset_name="latin1"), data_path=tmp_path)


def test_show_sample(ptb, capsys):
    ptb.show_sample(0, split="val")
    out = capsys.readouterr().out
    assert out.startswith("val:main sample 0 of 1153 (stream, 65 tokens)")
    assert "text: <eos> consumers may want" in out
    ids, toks = [line for line in out.splitlines() if line.startswith(" ids:")][0], \
        [line for line in out.splitlines() if line.startswith(" tok:")][0]
    assert ids.split()[1:3] == [str(ptb.tokenizer.eos_id), str(ptb.tokenizer(["consumers"])[0][0])]
    assert toks.split()[1:3] == ["<eos>", "consumers"]
    assert "ptb from" in repr(ptb) and "train 14525" in repr(ptb)
    with pytest.raises(KeyError, match="no split 'dev'"):
        ptb.len("dev")
