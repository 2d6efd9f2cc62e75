"""One tokenizer interface for every model: char, word, BPE (trained with `tokenizers`) or GPT-2's.

    tok("some text")        -> [ids]          (no BOS is prepended; see below)
    tok(["a", "b"])          -> [[ids], [ids]]
    tok.decode(ids)          -> "text"
    tok.tokens(ids)          -> ["tok", ...]   (token strings, for display)
    tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id
    tok.mask_token, tok.mask_id  (None unless trained for objective "masked"), tok.fim_ids (objective "fim")

BOS convention: encoding never adds tokens. There is a single separator token, `<eos>`
(GPT-2: `<|endoftext|>`), that ends every line and also serves as BOS and padding
(padding is always masked out). Training samples start with it, so to score a text the way
training saw it, put `tok.bos_id` in front: `LM.perplexities` and `LM.sample` do this.
A pretrained checkpoint's tokenizer (pretrained.py) keeps the checkpoint's own ids instead
(Llama: bos `<s>`, eos `</s>`) and may have a vocab_size larger than its tokens (a padded embedding).

Objectives beyond next-token prediction need tokens of their own (OBJECTIVE_TOKENS): `<mask>` for
"masked", `<fim_prefix>` `<fim_suffix>` `<fim_middle>` for "fim". `Tokenizer.train(..., extra_tokens=...)`
appends them after the trained vocabulary, so every other id is the same as without them.

Saved as one `tokenizer.json` (the `tokenizers` library's own format, no pickles).
"""
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

EOS = "<eos>"
UNK = "<unk>"
GPT2_EOS = "<|endoftext|>"
KINDS = ("char", "word", "bpe", "gpt2")
MASK = "<mask>"
FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<fim_prefix>", "<fim_suffix>", "<fim_middle>"
OBJECTIVE_TOKENS = {"causal": (), "prefix": (), "masked": (MASK,), "fim": (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)}


class Tokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` with the special ids every model needs."""

    def __init__(self, hf_tokenizer: HFTokenizer, eos_id: Optional[int] = None, bos_id: Optional[int] = None,
                 pad_id: Optional[int] = None, vocab_size: Optional[int] = None, mask_token: Optional[str] = None):
        """eos_id, bos_id, pad_id: a pretrained checkpoint's own special ids (pretrained.py passes them);
        by default `<eos>` (or `<|endoftext|>`) is all three. vocab_size: the model's vocabulary when
        it is larger than the tokenizer's (checkpoints often pad their embedding matrix).
        mask_token: the masked LM's mask token (a checkpoint's, e.g. "[MASK]"); by default `<mask>` when
        the tokenizer has it."""
        self.hf = hf_tokenizer
        if eos_id is None:
            eos = EOS if hf_tokenizer.token_to_id(EOS) is not None else GPT2_EOS
            eos_id = hf_tokenizer.token_to_id(eos)
            if eos_id is None:
                raise ValueError(f"tokenizer has neither {EOS!r} nor {GPT2_EOS!r}: cannot mark line ends")
        self.eos_id: int = eos_id
        self.bos_id: int = self.eos_id if bos_id is None else bos_id
        self.pad_id: int = self.eos_id if pad_id is None else pad_id
        unk = UNK if hf_tokenizer.token_to_id(UNK) is not None else getattr(hf_tokenizer.model, "unk_token", None)
        self.unk_id: Optional[int] = hf_tokenizer.token_to_id(unk) if unk else None  # BERT's is [UNK]
        self.mask_token: Optional[str] = mask_token if mask_token is not None else (
            MASK if hf_tokenizer.token_to_id(MASK) is not None else None)
        self.mask_id: Optional[int] = hf_tokenizer.token_to_id(self.mask_token) if self.mask_token else None
        # what the tokenizer's own post-processor appends after a text (an encoder checkpoint's: BERT's [SEP],
        # RoBERTa's </s>; () for tokenizers trained here): a masked read frames a text as bos + ids + suffix_ids,
        # as transformers' fill-mask pipeline does (model/decoding/masked.py)
        self.suffix_ids: Tuple[int, ...] = appended_ids(hf_tokenizer)
        # fill-in-the-middle: (<fim_prefix>, <fim_suffix>, <fim_middle>) ids, or None without them
        fim = [hf_tokenizer.token_to_id(t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)]
        self.fim_ids: Optional[Tuple[int, int, int]] = None if None in fim else (fim[0], fim[1], fim[2])
        # one past the largest id, so an embedding of this size can hold every id even if the
        # vocabulary has holes (a tokenizer.json written elsewhere may have them)
        own_size = max(hf_tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        if vocab_size is not None and vocab_size < own_size:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer's {own_size} tokens")
        self.vocab_size: int = own_size if vocab_size is None else vocab_size
        for name in ("eos_id", "bos_id", "pad_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is not a token id (vocabulary of {self.vocab_size})")

    # ---- building -------------------------------------------------------------------
    @classmethod
    def train(cls, kind: str, texts: Iterable[str], vocab_size: int = 10000, min_count: int = 1,
              lowercase: bool = False, extra_tokens: Sequence[str] = ()) -> "Tokenizer":
        """Train a char, word or bpe tokenizer on `texts` (the training split). extra_tokens: special
        tokens appended after the trained ones (an objective's, OBJECTIVE_TOKENS), never split."""
        if kind == "char":
            tok = HFTokenizer(models.WordLevel(unk_token=UNK))
            tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
            tok.decoder = decoders.Fuse()
            trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_count,
                                                special_tokens=[EOS, UNK], show_progress=False)
        elif kind == "word":
            tok = HFTokenizer(models.WordLevel(unk_token=UNK))
            tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
            trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_count,
                                                special_tokens=[EOS, UNK], show_progress=False)
            # The trainer would count a literal "<unk>" in the text (PTB has 45k) as a word, give it a
            # frequency-ranked id and leave its reserved id unused (ids up to vocab_size, one too many).
            texts = (t.replace(UNK, " ").replace(EOS, " ") for t in texts)
        elif kind == "bpe":
            tok = HFTokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=max(min_count, 2),
                                          special_tokens=[EOS], show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        else:
            raise ValueError(f"unknown tokenizer kind {kind!r}: choose one of {', '.join(KINDS)}")
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.train_from_iterator(texts, trainer=trainer)
        if extra_tokens:
            tok.add_special_tokens(list(extra_tokens))
        return cls(tok)

    @classmethod
    def gpt2(cls, name_or_path: str = "gpt2") -> "Tokenizer":
        """GPT-2's byte-level BPE through `transformers`: a local folder (vocab.json + merges.txt
        or tokenizer.json) or a hub name such as "gpt2"."""
        from transformers import GPT2TokenizerFast
        return cls(GPT2TokenizerFast.from_pretrained(str(name_or_path)).backend_tokenizer)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Tokenizer":
        """Load from a `tokenizer.json` file (or a folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        return cls(HFTokenizer.from_file(str(path)))

    def save(self, path: Union[str, Path]) -> None:
        """Write `tokenizer.json` (give a file path or a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        self.hf.save(str(path))

    # ---- using ----------------------------------------------------------------------
    def __call__(self, text: Union[str, List[str]]) -> Union[List[int], List[List[int]]]:
        if isinstance(text, str):
            return self.hf.encode(text, add_special_tokens=False).ids
        return [e.ids for e in self.hf.encode_batch(list(text), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def tokens(self, ids: Iterable[int]) -> List[str]:
        """The token string of each id (for labels and `show_sample`); "<id N>" for an id past the tokenizer's
        own tokens (a pretrained model's padded vocabulary has them)."""
        return [self.hf.id_to_token(int(i)) or f"<id {int(i)}>" for i in ids]

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        extra = f", mask={self.mask_id}" if self.mask_id is not None else ""
        extra += f", fim={self.fim_ids}" if self.fim_ids is not None else ""
        if self.bos_id == self.eos_id == self.pad_id:
            special = f"eos/bos/pad={self.eos_id}"
        else:
            special = f"bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id}"
        return f"Tokenizer(vocab_size={self.vocab_size}, {special}, unk={self.unk_id}{extra})"


def appended_ids(hf_tokenizer: HFTokenizer) -> Tuple[int, ...]:
    """The ids hf_tokenizer's post-processor puts after a text (encode(..., add_special_tokens=True))."""
    plain = hf_tokenizer.encode("a", add_special_tokens=False).ids
    framed = hf_tokenizer.encode("a", add_special_tokens=True).ids
    for start in range(len(framed) - len(plain) + 1):
        if plain and framed[start:start + len(plain)] == plain:
            return tuple(framed[start + len(plain):])
    return ()
