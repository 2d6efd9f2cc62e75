"""Synthetic tasks: a function decorated `@registered` generates one sample and is a task by its name.

A generator gets a seeded `random.Random`, the problem size and the `DataParams`, and returns
(prompt tokens, target tokens) as lists of strings. The prompt ends with "=". Tokens are joined
with spaces, so the default word-level tokenizer makes each one a single token; the model sees
`<eos> prompt target <eos>` and, with `loss_on_targets_only`, is scored on the target and the final
`<eos>` alone. To add a task:

    @registered
    def double(rng, size, p):
        xs = symbols(rng, size, p.n_symbols)
        return xs + ["="], xs + xs

Problem sizes are drawn uniformly from [min_len, max_len] for train, val:main and test; the extra
validation set val:long uses size long_len (0 disables it). Every split has its own seeded stream,
so samples depend only on the task name, the split and `data_seed`.
"""
import random
import string
from typing import Callable, Dict, List, Tuple

from .data_params import DataParams
from .task_data import TaskData

Tokens = List[str]
Generator = Callable[[random.Random, int, DataParams], Tuple[Tokens, Tokens]]
TASKS: Dict[str, Generator] = {}
SEP = "="
BRACKETS = ["()", "[]", "{}", "<>"]


def registered(fn: Generator) -> Generator:
    """Make `fn` a task named `fn.__name__`."""
    TASKS[fn.__name__] = fn
    return fn


def symbols(rng: random.Random, size: int, n_symbols: int) -> Tokens:
    """`size` random symbols "0" .. str(n_symbols - 1)."""
    return [str(rng.randrange(n_symbols)) for _ in range(size)]


def key_names(n: int) -> Tokens:
    """n distinct key tokens: letters while they last, then k26, k27, ..."""
    return list(string.ascii_lowercase[:n]) + [f"k{i}" for i in range(26, n)]


@registered
def copy(rng: random.Random, size: int, p: DataParams) -> Tuple[Tokens, Tokens]:
    """3 1 4 = -> 3 1 4"""
    xs = symbols(rng, size, p.n_symbols)
    return xs + [SEP], xs


@registered
def reverse(rng: random.Random, size: int, p: DataParams) -> Tuple[Tokens, Tokens]:
    """3 1 4 = -> 4 1 3"""
    xs = symbols(rng, size, p.n_symbols)
    return xs + [SEP], xs[::-1]


@registered
def histogram(rng: random.Random, size: int, p: DataParams) -> Tuple[Tokens, Tokens]:
    """For each position, how often its symbol occurs: 3 1 3 = -> 2 1 2"""
    xs = symbols(rng, size, p.n_symbols)
    return xs + [SEP], [str(xs.count(x)) for x in xs]


@registered
def sort(rng: random.Random, size: int, p: DataParams) -> Tuple[Tokens, Tokens]:
    """Numeric order: 3 1 4 = -> 1 3 4"""
    xs = symbols(rng, size, p.n_symbols)
    return xs + [SEP], sorted(xs, key=int)


@registered
def parity(rng: random.Random, size: int, p: DataParams) -> Tuple[Tokens, Tokens]:
    """Parity of the number of ones: 1 0 1 1 = -> 1"""
    bits = [rng.choice("01") for _ in range(size)]
    return bits + [SEP], [str(bits.count("1") % 2)]


@registered
def addition(rng: random.Random, size: int, p: DataParams) -> Tuple[Tokens, Tokens]:
    """Two `size`-digit numbers, most significant digit first: 4 7 + 2 5 = -> 7 2"""
    a, b = (rng.randrange(10 ** (size - 1) if size > 1 else 0, 10 ** size) for _ in range(2))
    return list(str(a)) + ["+"] + list(str(b)) + [SEP], list(str(a + b))


@registered
def dyck(rng: random.Random, size: int, p: DataParams) -> Tuple[Tokens, Tokens]:
    """Close a Dyck prefix of length `size`: ( [ ] ( = -> ) )

    Bracket kinds: min(4, n_symbols // 2), at least 1. The prefix has at least one open bracket."""
    kinds = BRACKETS[:max(1, min(len(BRACKETS), p.n_symbols // 2))]
    while True:
        prefix, stack = [], []
        for _ in range(size):
            if stack and rng.random() < 0.5:
                prefix.append(stack.pop()[1])
            else:
                pair = rng.choice(kinds)
                stack.append(pair)
                prefix.append(pair[0])
        if stack:
            return prefix + [SEP], [pair[1] for pair in reversed(stack)]


@registered
def associative_recall(rng: random.Random, size: int, p: DataParams) -> Tuple[Tokens, Tokens]:
    """`size` key-value pairs, then a key; answer its value: a 3 c 7 b 1 c = -> 7

    Keys are distinct, from max(n_symbols, max_len, long_len) key names; values are symbols."""
    keys = rng.sample(key_names(max(p.n_symbols, p.max_len, p.long_len, size)), size)
    values = symbols(rng, size, p.n_symbols)
    query = rng.randrange(size)
    pairs = [tok for kv in zip(keys, values) for tok in kv]
    return pairs + [keys[query], SEP], [values[query]]


def generate(name: str, n: int, min_size: int, max_size: int, p: DataParams, split: str) -> List[Tuple[str, str]]:
    """n (prompt, target) text pairs of task `name`; deterministic in (name, split, data_seed)."""
    rng = random.Random(f"{name}:{split}:{p.data_seed}")
    samples = []
    for _ in range(n):
        prompt, target = TASKS[name](rng, rng.randint(min_size, max_size), p)
        # the target starts with a space so that prompt + target reads naturally under any tokenizer
        samples.append((" ".join(prompt), " " + " ".join(target)))
    return samples


def check_synthetic_params(p: DataParams) -> None:
    problems = []
    if not 1 <= p.min_len <= p.max_len:
        problems.append(f"need 1 <= min_len <= max_len (got min_len={p.min_len}, max_len={p.max_len})")
    if p.long_len < 0:
        problems.append(f"long_len must be >= 0 (0 disables val:long), got {p.long_len}")
    if p.n_symbols < 2:
        problems.append(f"n_symbols must be >= 2, got {p.n_symbols}")
    if p.n_train_samples < 1 or p.n_eval_samples < 1:
        problems.append(f"n_train_samples and n_eval_samples must be >= 1 "
                        f"(got {p.n_train_samples}, {p.n_eval_samples})")
    if problems:
        raise ValueError(f"synthetic task {p.dataset_name!r}: " + "; ".join(problems))


def synthetic_task(p: DataParams) -> TaskData:
    """The TaskData of the synthetic task `p.dataset_name` (validation sets "main" and, if long_len, "long")."""
    check_synthetic_params(p)
    name = p.dataset_name
    val = {"main": generate(name, p.n_eval_samples, p.min_len, p.max_len, p, "val")}
    if p.long_len:
        val["long"] = generate(name, p.n_eval_samples, p.long_len, p.long_len, p, "val:long")
    return TaskData(train=generate(name, p.n_train_samples, p.min_len, p.max_len, p, "train"), val=val,
                    test=generate(name, p.n_eval_samples, p.min_len, p.max_len, p, "test"),
                    tokenizer="word", sample_mode="lines", synthetic=True, source=f"syntheticdata.{name}")
