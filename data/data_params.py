"""DataParams: what to train on. Kept free of heavy imports so `main.py` parses configs fast.

Every field has a default and a trailing `# description` comment, which
`python3 main.py --list-params` prints. Adding a field here is all it takes for configs,
`--set`, run names, saving and loading to know it.
"""
from dataclasses import dataclass
from typing import Optional


@dataclass
class DataParams:
    dataset_name: str = "ptb"  # task: ptb, shakespeare, wikitext-2, wikitext-103, "hf:NAME[:CONFIG]" (a datasets dataset), a synthetic task (copy, sort, ...) or a folder {data path}/{name}/
    text_column: str = "text"  # hf:NAME datasets: the column holding the text
    max_seq_len: int = 64  # tokens the model reads per sample (a stream block holds one more token, the last target)
    sample_mode: str = "auto"  # "lines" (one sample per line, padded), "stream" (text cut into max_seq_len blocks) or "auto" (the task's default)
    tokenizer: str = "auto"  # "char", "word", "bpe", "gpt2", a path to a tokenizer.json, or "auto" (the task's default)
    vocab_size: int = 16384  # cap on the vocabulary of word and bpe tokenizers (special tokens included)
    min_count: int = 1  # word tokenizer: words seen fewer times in train become <unk>
    lowercase: bool = False  # lowercase text before tokenizing
    val_frac: float = 0.1  # fraction held out for validation when the corpus has no split of its own
    test_frac: float = 0.0  # fraction held out for test when the corpus has no split of its own (0: test = validation)
    split_seed: int = 0  # seed of the deterministic split for corpora without their own
    max_train_samples: Optional[int] = None  # keep only the first N training samples (lines or blocks); None keeps all
    max_eval_samples: Optional[int] = None  # keep only the first N validation and test samples; None keeps all
    memmap: bool = True  # natural text: read batches from the memory-mapped token cache (flat memory); False loads each split into RAM
    # synthetic tasks
    n_train_samples: int = 10000  # synthetic: training samples generated
    n_eval_samples: int = 500  # synthetic: samples in each validation / test set
    min_len: int = 2  # synthetic: shortest problem size (sequence length, digits, ...)
    max_len: int = 10  # synthetic: longest problem size in training and in val:main
    long_len: int = 20  # synthetic: problem size of the extra val:long set (length generalisation); 0 disables it
    n_symbols: int = 10  # synthetic: size of the symbol alphabet
    loss_on_targets_only: bool = True  # synthetic: loss only on the answer tokens, not on the prompt
    data_seed: int = 0  # synthetic: seed of the sample generator
