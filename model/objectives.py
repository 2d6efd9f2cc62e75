"""Training objectives (ModelParams.objective): how a batch of token rows becomes inputs and targets.

A row is `<eos> tokens ...` (data/samples.py); x = row[:-1] is what the model reads.
  causal  next-token prediction (GPT): y = row[1:], attention causal.
  masked  BERT's masked LM: of x's real tokens (the <eos> framing never), mask_frac are chosen; of those
          80% become <mask>, 10% a random token, 10% stay. y is the original token at the chosen
          positions only (-100 elsewhere), read at the token's own position; attention both ways.
  prefix  prefix LM (T5, UL2's S-denoiser): the first prefix_len positions of x attend both ways, the rest
          causally; y = row[1:] counted only for the tokens after the prefix. The prefix is a synthetic
          task's prompt (<eos> + prompt), else drawn uniformly per sample in 1 .. len(x).
  fim     fill-in-the-middle (Bavarian et al. 2022): fim_rate of the training rows become
          `<eos> <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle <eos>` (PSM), cut at two uniform
          points; trained causally on the whole row. Validation and test rows stay as they are, so a fim
          run's validation loss is the causal loss of a causal run.
Training draws from torch's global random numbers (saved in checkpoints: a resumed run draws the same).
Evaluation (validation, test, perplexities over a DataLoader) uses `fixed_uniform`: numbers that depend
on the row's tokens and the position alone, so every epoch and every run masks and splits a sample alike.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

OBJECTIVES = ("causal", "masked", "prefix", "fim")
BIDIRECTIONAL = ("masked", "prefix")  # attention sees later tokens: no recurrent model can do them
MASK_AS_MASK, MASK_AS_RANDOM = 0.8, 0.1  # BERT's split of the chosen tokens; the remaining 10% stay
_HASH_MODULUS = 0x7FFFFFFF  # 31 bits: a product of two such numbers fits in int64, no overflow


def _mix(x: Tensor) -> Tensor:
    """An integer hash of int64 values in [0, 2**31): a few multiply-xorshift rounds (Knuth's and
    Murmur's constants), every product below 2**62."""
    x = (x * 1103515245 + 12345) & _HASH_MODULUS
    x = x ^ (x >> 13)
    x = (x * 1597334677) & _HASH_MODULUS
    return x ^ (x >> 16)


def fixed_uniform(tokens: Tensor, real: Tensor, salt: int = 0) -> Tensor:
    """Numbers in [0, 1) of the shape of tokens [batch, seq] that depend only on each row's real tokens,
    the position and `salt`: the evaluation's "random" masks and splits, the same in every epoch and run."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    per_token = _mix((tokens.long() * 31 + positions * 7919 + salt) & _HASH_MODULUS)
    row_key = _mix((per_token * real).sum(dim=1, keepdim=True) & _HASH_MODULUS)  # [batch, 1]
    return _mix((row_key + positions * 40503 + salt * 65599) & _HASH_MODULUS).double().div(2 ** 31).float()


def _uniform(tokens: Tensor, real: Tensor, fixed: bool, salt: int) -> Tensor:
    return fixed_uniform(tokens, real, salt) if fixed else torch.rand(tokens.shape, device=tokens.device)


def masked_inputs(x: Tensor, real: Tensor, counted: Tensor, framing: Sequence[int], mask_id: int, vocab_size: int,
                  mask_frac: float, fixed: bool) -> Tuple[Tensor, Tensor]:
    """BERT's masking of x [batch, seq]: (inputs [batch, seq], targets [batch, seq], -100 where no loss).
    real: True on real tokens; counted: True where a target may be taken (real, and a synthetic task's
    answer with loss_on_targets_only); framing: ids never chosen (<eos>, [CLS], [SEP])."""
    eligible = counted & real
    for token in framing:
        eligible = eligible & (x != token)
    chosen = eligible & (_uniform(x, real, fixed, salt=1) < mask_frac)
    how = _uniform(x, real, fixed, salt=2)  # below 0.8: <mask>; 0.8 to 0.9: a random token; else kept
    if fixed:
        random_tokens = (fixed_uniform(x, real, salt=3) * vocab_size).long().clamp(max=vocab_size - 1)
    else:
        random_tokens = torch.randint(vocab_size, x.shape, device=x.device)
    inputs = torch.where(chosen & (how < MASK_AS_MASK), torch.full_like(x, mask_id), x)
    inputs = torch.where(chosen & (how >= MASK_AS_MASK) & (how < MASK_AS_MASK + MASK_AS_RANDOM), random_tokens, inputs)
    return inputs, x.masked_fill(~chosen, -100)


def prefix_lengths(real: Tensor, target_mask: Optional[Tensor], tokens: Tensor, fixed: bool) -> Tensor:
    """Per row of x (real [batch, seq], True on x's real tokens) the prefix length [batch]: a synthetic
    task's prompt (the tokens before its first target, target_mask over the whole row), else uniform in
    1 .. the row's length (1 is a causal read: the prefix is <eos> alone)."""
    if target_mask is not None and target_mask.any(dim=1).all():
        return target_mask.long().argmax(dim=1)  # the first target's index in the row = <eos> + prompt
    n = real.sum(dim=1).clamp(min=1)
    u = fixed_uniform(tokens, real, salt=4)[:, 0] if fixed else torch.rand(n.shape, device=n.device)
    return 1 + (u * n).long().clamp(max=n - 1)


# ---- fill-in-the-middle ---------------------------------------------------------------------------
def fim_prompt(prefix: List[int], suffix: List[int], fim_ids: Tuple[int, int, int]) -> List[int]:
    """`<fim_prefix> prefix <fim_suffix> suffix <fim_middle>`: what an infilling model continues with the middle."""
    fim_prefix, fim_suffix, fim_middle = fim_ids
    return [fim_prefix] + prefix + [fim_suffix] + suffix + [fim_middle]


def fim_row(doc: List[int], start: int, end: int, bos: int, eos: int, fim_ids: Tuple[int, int, int]) -> List[int]:
    """doc's tokens cut at start <= end into prefix / middle / suffix, as a PSM training row:
    `<eos> <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle <eos>` (5 tokens longer than doc)."""
    return [bos] + fim_prompt(doc[:start], doc[end:], fim_ids) + doc[start:end] + [eos]


def fim_parts(row: List[int], fim_ids: Tuple[int, int, int]) -> Tuple[List[int], List[int], List[int]]:
    """A fim_row back into (prefix, middle, suffix): prefix + middle + suffix is the original doc."""
    fim_prefix, fim_suffix, fim_middle = fim_ids
    i, j, k = row.index(fim_prefix), row.index(fim_suffix), row.index(fim_middle)
    return row[i + 1:j], row[k + 1:-1], row[j + 1:k]


def fim_rearranged(tokens: Tensor, real: Tensor, fim_rate: float, bos: int, eos: int,
                   fim_ids: Tuple[int, int, int], max_width: int) -> Tuple[Tensor, Tensor]:
    """Training rows [batch, width] with fim_rate of them (drawn per row) rearranged by fim_row:
    (tokens, real), [batch, new width]. A row's doc is its tokens after the leading <eos>, without a
    final <eos>; the row grows by 4 or 5 tokens, up to max_width (the model's context + 1): a doc too
    long for it loses its last tokens."""
    batch, width = tokens.shape
    draws = torch.rand(batch, 3)  # whether, and the two cut points
    rows = (draws[:, 0] < fim_rate).nonzero().flatten().tolist()
    if not rows or max_width < 6:
        return tokens, real
    ids, lengths = tokens.tolist(), real.sum(dim=1).tolist()  # one read of the batch (one sync on a GPU)
    for r in rows:
        doc = ids[r][1:lengths[r]]
        if doc and doc[-1] == eos:
            doc = doc[:-1]
        doc = doc[:max_width - 5]
        start, end = sorted(int(u * (len(doc) + 1)) for u in draws[r, 1:].tolist())
        ids[r] = fim_row(doc, start, end, bos, eos, fim_ids)
        lengths[r] = len(ids[r])
    new_width = max(width, max(lengths))
    ids = [row[:lengths[r]] + [eos] * (new_width - lengths[r]) for r, row in enumerate(ids)]
    tokens = torch.tensor(ids, dtype=tokens.dtype, device=tokens.device)
    real = torch.arange(new_width, device=tokens.device) < torch.tensor(lengths, device=tokens.device).unsqueeze(1)
    return tokens, real
