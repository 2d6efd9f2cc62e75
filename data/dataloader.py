"""LMDataModule: a task's tokenizer, its samples as tensors, and the DataLoaders over them.

    dm = LMDataModule(DataParams(dataset_name="ptb"), batch_size=32)
    batch = next(iter(dm.train_dataloader()))  # {"x_indices": [B, L] long, "mask": [B, L] bool}
    dm.show_sample(0)                          # text, ids and token strings side by side

All the work happens in `__init__` (no Trainer needed): `get_data` gives the task's text, the
tokenizer is trained on the training split (or loaded from the cache, or given), every split is
tokenized once into memory-mapped token files (or found in the cache, `token_cache.py`). Natural text
is then read from those files batch by batch (`token_windows.py`; with DataParams.memmap=False it is
loaded into padded tensors instead, `samples.py`), synthetic tasks become padded tensors. Batches
come from one index each. A batch holds "x_indices" (right-padded with
pad_id), "mask" (True on real tokens) and, for synthetic tasks with loss_on_targets_only,
"target_mask" (True on the tokens that count as targets).
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import lightning
import numpy as np
import tokenizers
import torch
from torch.utils.data import DataLoader

from .data_params import DataParams
from .data_path import cache_dir as resolve_cache_dir
from .data_path import find_data_path
from .samples import Batch, TokenSamples, line_samples, mycollate, stream_samples, synthetic_samples
from .task_data import TaskData
from .tasks import get_data
from .token_cache import cached_token_files, cached_tokenizer
from .token_file import TokenFile
from .token_windows import TokenWindows
from .tokenizer import Tokenizer

__all__ = ["DataParams", "LMDataModule", "TaskData", "get_data", "mycollate"]

PathLike = Union[str, Path]
SPLIT_ALIASES = {"val": "val:main", "valid": "val:main", "validation": "val:main"}


def _batch_as_is(batch: Batch) -> Batch:
    """collate_fn: `TokenSamples.__getitems__` already returns the padded batch dict."""
    return batch


class LMDataModule(lightning.LightningDataModule):
    """Tokenizer + train / val / test samples of one task, with DataLoaders.

    tokenizer: None trains (or loads from the cache) the one DataParams asks for; pass one to
        reuse it (e.g. a saved run's). seed: the order in which the training samples are shuffled.
    extra_tokens: special tokens a new tokenizer gets after its trained vocabulary (an objective's:
        data.tokenizer.OBJECTIVE_TOKENS[objective]); a given tokenizer must already have them.
    Attributes: tokenizer, val_names (e.g. ["main", "long"]), sample_mode ("stream", "lines" or
    "synthetic"), datasets ({"train", "val:<name>", "test"} -> TokenWindows or TokenSamples), data_params.
    """

    def __init__(self, data_params: DataParams, batch_size: int = 32, tokenizer: Optional[Tokenizer] = None,
                 data_path: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None, seed: int = 0,
                 extra_tokens: Sequence[str] = ()):
        super().__init__()
        self.extra_tokens = tuple(extra_tokens)
        p = self.data_params = data_params
        self.batch_size, self.seed = batch_size, seed
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.data_path = find_data_path(data_path)
        task = get_data(p, data_path, self.cache_dir)
        self.source = task.source
        self.val_names: List[str] = list(task.val)
        self.sample_mode = self._sample_mode(task)
        self.tokenizer_kind = "given" if tokenizer is not None else (
            task.tokenizer if p.tokenizer == "auto" else p.tokenizer)

        splits = task.splits()
        # a split that is the very list of an earlier one (test = val) reuses that one's ids and samples
        first_holder: Dict[int, str] = {}
        same_as = {split: first_holder.setdefault(id(samples), split) for split, samples in splits.items()}
        # split -> the earlier split whose very samples it holds (itself when distinct): the final
        # evaluation measures a test set that is the validation set once
        self.same_split: Dict[str, str] = dict(same_as)
        distinct = {s: splits[s] for s in splits if same_as[s] == s}
        texts = self._texts(distinct, task.synthetic)
        if tokenizer is None:
            # a synthetic task's vocabulary is its symbols: take them from every split (val:long may
            # hold symbols, e.g. counts, that short training samples never show)
            train_lines = ([prompt + target for samples in distinct.values() for prompt, target in samples]
                           if task.synthetic else splits["train"])
            tokenizer = self._make_tokenizer(train_lines)
        missing = [t for t in self.extra_tokens if tokenizer.hf.token_to_id(t) is None]
        if missing:
            raise ValueError(f"the given tokenizer lacks the special tokens {missing} this objective needs: "
                             f"train a new one (pass no tokenizer) or add them with tokenizer.hf.add_special_tokens")
        self.tokenizer = tokenizer
        ids = cached_token_files(texts, self.tokenizer, p.dataset_name, self.cache_dir)
        self.datasets: Dict[str, Union[TokenWindows, TokenSamples]] = {}
        cut: Dict[str, int] = {}  # lines mode: split -> lines longer than max_seq_len, cut to fit
        for split in splits:
            limit = p.max_train_samples if split == "train" else p.max_eval_samples
            built = self._samples(ids, split) if same_as[split] == split else self.datasets[same_as[split]]
            self.datasets[split] = built.head(limit)
            if len(self.datasets[split]) == 0:
                raise ValueError(f"{p.dataset_name}: split {split} has no samples (are all its lines empty?)")
            if self.sample_mode == "lines" and same_as[split] == split:
                lengths = np.asarray(ids[split].line_lengths)
                lengths = lengths[lengths > 0][:limit]  # the lines kept as samples
                cut[split] = int((lengths + 2 > p.max_seq_len + 1).sum())
        if any(cut.values()):
            counts = ", ".join(f"{n:,} of {len(self.datasets[split]):,} in {split}" for split, n in cut.items() if n)
            print(f"{p.dataset_name}: lines longer than max_seq_len={p.max_seq_len} tokens (with their <eos>) were "
                  f"cut to fit: {counts}. Raise DataParams.max_seq_len to keep them whole, or use "
                  f'sample_mode="stream".', flush=True)

    # ---- building ---------------------------------------------------------------------------
    def _sample_mode(self, task: TaskData) -> str:
        mode = self.data_params.sample_mode
        if task.synthetic:
            if mode not in ("auto", "lines"):
                raise ValueError(f"{self.data_params.dataset_name} is a synthetic task with one sample per "
                                 f"problem; sample_mode={mode!r} does not apply (use auto or lines)")
            return "synthetic"
        return task.sample_mode if mode == "auto" else mode

    @staticmethod
    def _texts(splits: Dict[str, list], synthetic: bool) -> Dict[str, List[str]]:
        """What gets tokenized, by cache entry name: each split's lines (prompts and targets apart)."""
        if not synthetic:
            return dict(splits)
        texts = {}
        for split, samples in splits.items():
            texts[f"{split}.prompt"] = [prompt for prompt, _ in samples]
            texts[f"{split}.target"] = [target for _, target in samples]
        return texts

    def _make_tokenizer(self, train_lines: List[str]) -> Tokenizer:
        p, kind = self.data_params, self.tokenizer_kind
        if kind not in ("char", "word", "bpe"):
            tokenizer = pretrained_tokenizer(kind, self.data_path)
            added = [t for t in self.extra_tokens if tokenizer.hf.token_to_id(t) is None]
            if added:  # appended after the checkpoint's ids, which stay as they are
                tokenizer.hf.add_special_tokens(added)
                tokenizer = Tokenizer(tokenizer.hf, tokenizer.eos_id, tokenizer.bos_id, tokenizer.pad_id)
            return tokenizer
        settings = dict(kind=kind, vocab_size=p.vocab_size, min_count=p.min_count, lowercase=p.lowercase,
                        tokenizers_version=tokenizers.__version__)
        if self.extra_tokens:  # causal runs keep today's cache entries
            settings["extra_tokens"] = list(self.extra_tokens)
        return cached_tokenizer(
            lambda: Tokenizer.train(kind, train_lines, p.vocab_size, p.min_count, p.lowercase, self.extra_tokens),
            {"train": train_lines}, settings, p.dataset_name, self.cache_dir)

    def _samples(self, ids: Dict[str, TokenFile], split: str) -> Union[TokenWindows, TokenSamples]:
        p, eos = self.data_params, self.tokenizer.eos_id
        if self.sample_mode == "synthetic":
            return synthetic_samples(ids[f"{split}.prompt"].ragged(), ids[f"{split}.target"].ragged(), eos,
                                     p.max_seq_len, p.loss_on_targets_only, f"{p.dataset_name} {split}")
        if p.memmap:
            windows = TokenWindows.stream if self.sample_mode == "stream" else TokenWindows.lines
            return windows(ids[split], eos, p.max_seq_len)
        in_memory = stream_samples if self.sample_mode == "stream" else line_samples
        return in_memory(ids[split].ragged(), eos, p.max_seq_len)

    # ---- using ------------------------------------------------------------------------------
    def train_dataloader(self, batch_size: Optional[int] = None) -> DataLoader:
        """Shuffled with a generator seeded by `seed`: the same order on every run."""
        return DataLoader(self.datasets["train"], batch_size=batch_size or self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed), collate_fn=_batch_as_is)

    def val_dataloader(self, batch_size: Optional[int] = None) -> List[DataLoader]:
        """One DataLoader per validation set, in the order of `val_names`."""
        return [self._eval_loader(f"val:{name}", batch_size) for name in self.val_names]

    def test_dataloader(self, batch_size: Optional[int] = None) -> DataLoader:
        return self._eval_loader("test", batch_size)

    def _eval_loader(self, split: str, batch_size: Optional[int]) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=batch_size or self.batch_size, shuffle=False,
                          collate_fn=_batch_as_is)

    def split_name(self, split: str) -> str:
        """"train", "test", "val:<name>"; also accepts "val" / "valid" (= "val:main") and a bare val name."""
        name = SPLIT_ALIASES.get(split, split)
        if name not in self.datasets and f"val:{name}" in self.datasets:
            name = f"val:{name}"
        if name not in self.datasets:
            raise KeyError(f"no split {split!r}; choose one of {', '.join(self.datasets)} (or val, valid)")
        return name

    def len(self, split: str = "train") -> int:
        """Number of samples in a split."""
        return len(self.datasets[self.split_name(split)])

    def format_sample(self, i: int, split: str = "train", width: int = 100) -> str:
        """Sample i as text, then its ids over its token strings in aligned columns."""
        name = self.split_name(split)
        ds = self.datasets[name]
        if not -len(ds) <= i < len(ds):
            raise IndexError(f"sample {i} of split {name}, which has {len(ds)} samples")
        i = i % len(ds)
        batch = ds.__getitems__([i])
        ids = batch["x_indices"][0].tolist()
        targets = batch["target_mask"][0].tolist() if "target_mask" in batch else None
        header = f"{name} sample {i} of {len(ds)} ({self.sample_mode}, {len(ids)} tokens"
        header += ", ^ = target)" if targets else ")"
        rows = [header, "text: " + self.tokenizer.decode(ids)]
        columns = [[str(id_), _visible(tok)] + (["^" if targets[j] else ""] if targets else [])
                   for j, (id_, tok) in enumerate(zip(ids, self.tokenizer.tokens(ids)))]
        chunk, used = [], 0
        for column in columns:  # wrap the columns into blocks of rows at most `width` wide
            column_width = max(map(len, column)) + 1
            if chunk and used + column_width > width - 6:
                rows += _aligned_rows(chunk)
                chunk, used = [], 0
            chunk.append(column)
            used += column_width
        rows += _aligned_rows(chunk)
        return "\n".join(rows)

    def show_sample(self, i: int = 0, split: str = "train") -> None:
        """Print sample i of a split: its text, its token ids and token strings side by side."""
        print(self.format_sample(i, split))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name} {len(ds)}" for name, ds in self.datasets.items())
        return (f"LMDataModule({self.data_params.dataset_name} from {self.source}; {self.sample_mode} samples "
                f"of up to {self.data_params.max_seq_len + 1} tokens; tokenizer {self.tokenizer_kind}, "
                f"vocab {self.tokenizer.vocab_size}; {sizes})")

    __str__ = __repr__  # LightningDataModule's __str__ lists dataloader sizes only


def _aligned_rows(columns: List[List[str]]) -> List[str]:
    widths = [max(map(len, c)) for c in columns]
    labels = ["ids", "tok", "tgt"][:len(columns[0])] if columns else []
    if len(labels) == 3 and not any(c[2] for c in columns):
        labels = labels[:2]  # no target token in this stretch
    return [f"{label:>4}: " + " ".join(c[r].ljust(w) for c, w in zip(columns, widths)).rstrip()
            for r, label in enumerate(labels)]


def _visible(token: Optional[str]) -> str:
    """Whitespace tokens made visible for show_sample."""
    if token is None:
        return "?"
    return token.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t") or "''"


def pretrained_tokenizer(kind: str, data_folder: Optional[Path]) -> Tokenizer:
    """"gpt2" ({data folder}/gpt2-tokenizer, else the Hub's gpt2), or a path to a tokenizer.json,
    a folder holding one, or a folder with GPT-2 style vocab.json + merges.txt."""
    if kind == "gpt2":
        local = data_folder / "gpt2-tokenizer" if data_folder else None
        name = str(local) if local is not None and local.is_dir() else "gpt2"
        try:
            return Tokenizer.gpt2(name)
        except Exception as e:
            raise FileNotFoundError(
                f"GPT-2 tokenizer: no folder {local or '{data folder}/gpt2-tokenizer'} with vocab.json + "
                f"merges.txt, and loading the Hub's 'gpt2' failed: {type(e).__name__}: {e}. Fix: put "
                f"vocab.json and merges.txt into {{data folder}}/gpt2-tokenizer/, or allow network access once."
            ) from e
    path = Path(kind).expanduser()
    if path.is_file() or (path / "tokenizer.json").is_file():
        return Tokenizer.load(path)
    if (path / "vocab.json").is_file():
        return Tokenizer.gpt2(str(path))
    raise FileNotFoundError(f"tokenizer={kind!r}: {path} is neither a tokenizer.json nor a folder holding "
                            "tokenizer.json or vocab.json + merges.txt")
