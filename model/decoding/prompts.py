"""The prompts of `lm.sample` and `lm.beam_search`: one prefix, or a list of them sampled as one batch.

    read_prompts(lm, "The", 50)              # one prompt: a string, a list of ids or a 1-D tensor
    read_prompts(lm, ["The", [464, 3290]], 50)   # a list of prompts (a list of ints stays ONE prompt)

Each prompt becomes the ids the model reads, bos + prompt (no second bos), and how many tokens it
may add (also past the model's context: the decoders crop their windows). A batch is left-padded to its
longest prompt (`left_padded`).
"""
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


@dataclass
class Prompts:
    given: List[List[int]]  # each prompt's ids as passed: a returned sample starts with them
    contexts: List[List[int]]  # what the model reads: bos + ids
    n_new: List[int]  # tokens each prompt may add (max_seq_len - its length, or max_new_tokens)
    batched: bool  # a list of prompts was passed: return a list of results


def is_prompt_list(pref: Any) -> bool:
    """True for a list of prompts (strings, id lists, 1-D tensors), False for one prompt (a list of ints too)."""
    if not isinstance(pref, (list, tuple)):
        return False
    if len(pref) == 0:  # an empty list of prompts: an empty list of results ("" starts one from nothing)
        return True
    is_prompt = [isinstance(p, (str, list, tuple)) or (isinstance(p, Tensor) and p.dim() > 0) for p in pref]
    if any(is_prompt) and not all(is_prompt):
        raise ValueError("pref mixes token ids with prompts: give one prompt (a string, or a list of ids) or a "
                         "list of prompts (strings or id lists), e.g. pref=['The', 'A'] or pref=[[464], [317, 290]]")
    return all(is_prompt)


def read_prompts(lm: nn.Module, pref: Any, max_seq_len: int, max_new_tokens: Optional[int] = None) -> Prompts:
    """The prompts in `pref`, with the same input forms and checks as lm(x); ValueError on a bad one.
    Each may add tokens up to max_seq_len in all (or max_new_tokens new ones, when given)."""
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 0:
        raise ValueError(f"max_seq_len is the returned sample's length in tokens, prompt included: give an int "
                         f">= 0, got {max_seq_len!r}")
    batched = is_prompt_list(pref)
    given = [prompt_ids(lm, p, i if batched else None) for i, p in enumerate(pref if batched else [pref])]
    bos, context_len = lm.tokenizer.bos_id, lm.model_params.max_seq_len
    contexts = [ids if ids[:1] == [bos] else [bos] + ids for ids in given]
    for i, context in enumerate(contexts):
        if len(context) > context_len:
            which = f"prompt {i}: " if batched else ""
            raise ValueError(f"{which}prefix of {len(context)} tokens (bos included) is longer than the model's "
                             f"context ({context_len}): shorten it, e.g. pref[-{context_len - 1}:]")
    if max_new_tokens is not None:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_seq_len (new tokens) must be an int >= 0, got {max_new_tokens!r}")
        return Prompts(given, contexts, [max_new_tokens] * len(contexts), batched)
    n_new = [max_seq_len - len(ids) for ids in given]
    return Prompts(given, contexts, n_new, batched)


def prompt_ids(lm: nn.Module, pref: Any, index: Optional[int] = None) -> List[int]:
    """One prompt's ids (a string, a list of ids, a 1-D tensor or a one-row 2-D tensor), checked."""
    which = f"prompt {index} " if index is not None else ""
    if isinstance(pref, (list, tuple)) and len(pref) == 0:
        return []
    rows = lm.as_batch(pref)
    if rows.shape[0] != 1:
        raise ValueError(f"{which}has {rows.shape[0]} rows (shape {tuple(rows.shape)}): a prompt is one sequence. "
                         f"For several prompts pass a list of them, e.g. pref=[row for row in x] (without padding)")
    ids = rows[0].tolist()
    bad = [t for t in ids if not 0 <= t < lm.n_tokens]
    if bad:
        raise ValueError(f"{which}token ids must be in [0, {lm.n_tokens - 1}] (the tokenizer's vocabulary), got "
                         f"{bad[:5]}: encode text with lm.tokenizer")
    return ids


def left_padded(contexts: Sequence[List[int]], pad_id: int, device: torch.device) -> Tuple[Tensor, Optional[Tensor]]:
    """([batch, longest] ids, each row left-padded with pad_id; the pad counts [batch], or None when none is padded)."""
    longest = max(len(c) for c in contexts)
    pad_left = [longest - len(c) for c in contexts]
    x = torch.tensor([[pad_id] * p + c for p, c in zip(pad_left, contexts)], dtype=torch.long, device=device)
    return x, (torch.tensor(pad_left, dtype=torch.long, device=device) if any(pad_left) else None)
