"""Synthetic tasks: every sample is a correct instance of its task, deterministic by seed, and the
tensors mark exactly the target tokens."""
from collections import Counter

import pytest
import torch

from data import syntheticdata
from data.dataloader import DataParams, LMDataModule, get_data
from data.syntheticdata import TASKS, registered

SMALL = dict(n_train_samples=300, n_eval_samples=40, min_len=1, max_len=8, long_len=16)
CLOSE = {")": "(", "]": "[", "}": "{", ">": "<"}


def balanced(tokens) -> bool:
    stack = []
    for t in tokens:
        if t in CLOSE:
            if not stack or stack.pop() != CLOSE[t]:
                return False
        else:
            stack.append(t)
    return not stack


def check_copy(xs, ys): return ys == xs
def check_reverse(xs, ys): return ys == xs[::-1]
def check_sort(xs, ys): return ys == sorted(xs, key=int) and Counter(xs) == Counter(ys)
def check_histogram(xs, ys): return ys == [str(xs.count(x)) for x in xs]
def check_parity(xs, ys): return set(xs) <= {"0", "1"} and ys == [str(xs.count("1") % 2)]


def check_addition(xs, ys):
    plus = xs.index("+")
    a, b = "".join(xs[:plus]), "".join(xs[plus + 1:])
    return len(a) == len(b) and int("".join(ys)) == int(a) + int(b) and (len(a) == 1 or a[0] != "0")


def check_dyck(xs, ys):
    return all(y in CLOSE for y in ys) and balanced(xs + ys) and not balanced(xs) and len(ys) >= 1


def check_associative_recall(xs, ys):
    keys, values, query = xs[:-1:2], xs[1:-1:2], xs[-1]
    return len(set(keys)) == len(keys) and ys == [values[keys.index(query)]]


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def problem_size(name, prompt):
    if name == "addition":
        return prompt.index("+")  # digits per operand
    if name == "associative_recall":
        return (len(prompt) - 1) // 2  # key-value pairs
    return len(prompt)


def test_every_task_has_a_check():
    assert set(CHECKS) == set(TASKS) >= {"copy", "reverse", "histogram", "sort", "parity", "addition",
                                         "dyck", "associative_recall"}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_samples_are_valid(name):
    data = get_data(DataParams(dataset_name=name, **SMALL))
    assert data.synthetic and list(data.val) == ["main", "long"]
    for split, samples in data.splits().items():
        assert len(samples) == (300 if split == "train" else 40)
        for prompt, target in samples:
            xs, ys = prompt.split(), target.split()
            assert xs[-1] == "=" and target.startswith(" ")
            assert CHECKS[name](xs[:-1], ys), (split, prompt, target)
            size = problem_size(name, xs[:-1])
            assert size == 16 if split == "val:long" else 1 <= size <= 8, (split, prompt)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_batches_mark_the_targets(name):
    p = DataParams(dataset_name=name, max_seq_len=64, **SMALL)
    dm = LMDataModule(p, batch_size=16)
    assert dm.sample_mode == "synthetic" and dm.val_names == ["main", "long"]
    data = get_data(p)
    tok = dm.tokenizer
    assert tok.unk_id not in dm.datasets["val:long"].ids  # the vocabulary covers every split
    batch = dm.val_dataloader()[1].dataset.__getitems__([0, 1, 2])
    for row in range(3):
        prompt, target = data.val["long"][row]
        ids = batch["x_indices"][row][batch["mask"][row]].tolist()
        assert ids == [tok.eos_id] + tok(prompt) + tok(target) + [tok.eos_id]
        targets = batch["x_indices"][row][batch["target_mask"][row]].tolist()
        assert targets == tok(target) + [tok.eos_id]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x_indices", "mask", "target_mask"}
    assert not (batch["target_mask"] & ~batch["mask"]).any() and not batch["target_mask"][:, 0].any()


def test_deterministic_by_seed():
    p = DataParams(dataset_name="sort", **SMALL)
    assert get_data(p) == get_data(p)
    p2 = DataParams(dataset_name="sort", data_seed=1, **SMALL)
    assert get_data(p2).train != get_data(p).train
    assert get_data(p).train[:10] == get_data(DataParams(dataset_name="sort", **{**SMALL, "n_train_samples": 10})).train


def test_loss_on_everything_and_no_long_set():
    dm = LMDataModule(DataParams(dataset_name="copy", loss_on_targets_only=False, long_len=0, **{
        k: v for k, v in SMALL.items() if k != "long_len"}))
    assert dm.val_names == ["main"] and len(dm.val_dataloader()) == 1
    assert set(next(iter(dm.train_dataloader()))) == {"x_indices", "mask"}


def test_too_long_samples_and_stream_mode_are_refused():
    with pytest.raises(ValueError, match="raise max_seq_len to at least 34"):
        LMDataModule(DataParams(dataset_name="copy", max_seq_len=20, **SMALL))
    with pytest.raises(ValueError, match="sample_mode='stream' does not apply"):
        LMDataModule(DataParams(dataset_name="copy", sample_mode="stream", **SMALL))
    with pytest.raises(ValueError, match="min_len <= max_len"):
        get_data(DataParams(dataset_name="copy", min_len=5, max_len=3))


def test_registered_function_becomes_a_task(monkeypatch):
    monkeypatch.setitem(TASKS, "double", TASKS.get("double"))  # restored after the test

    @registered
    def double(rng, size, p):
        xs = syntheticdata.symbols(rng, size, p.n_symbols)
        return xs + ["="], xs + xs

    dm = LMDataModule(DataParams(dataset_name="double", **SMALL))
    prompt, target = get_data(DataParams(dataset_name="double", **SMALL)).train[0]
    assert target.split() == prompt.split()[:-1] * 2
    assert dm.len("val:long") == 40 and torch.is_tensor(dm.datasets["train"][0])


@pytest.fixture
def readme_task():
    """The README's `@registered def double(...)` snippet, run in data/syntheticdata.py's namespace."""
    from readme_blocks import blocks
    [snippet] = [b.code for b in blocks() if b.lang == "python" and "@registered" in b.code]
    exec(snippet, dict(vars(syntheticdata)))
    yield "double"
    TASKS.pop("double")  # keep the registry as it was for other tests


def test_readme_synthetic_task_example_becomes_a_task(readme_task):
    dm = LMDataModule(DataParams(dataset_name="double", n_train_samples=20, n_eval_samples=5, max_len=4,
                                 long_len=0, max_seq_len=32), batch_size=4)
    prompt, target = get_data(dm.data_params).train[0]
    assert target.split() == prompt.split()[:-1] * 2 and prompt.split()[-1] == "="
    assert next(iter(dm.train_dataloader()))["target_mask"].any()
