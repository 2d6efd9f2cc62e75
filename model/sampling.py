"""Sampling from an LM: choosing each next token (temperature, top-k, nucleus) and the cached generation loop."""
from typing import TYPE_CHECKING, List, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:
    from model.lm import LM


def check_sampling_args(temperature: float, nucleus: Optional[float], top_k: Optional[int]) -> None:
    """Raise ValueError with a fix for any invalid combination."""
    if nucleus is not None and top_k is not None:
        raise ValueError(f"give either nucleus (top-p) or top_k, not both (got nucleus={nucleus}, top_k={top_k})")
    if not temperature >= 0 or temperature == float("inf"):  # `not >=` also catches nan
        raise ValueError(f"temperature must be >= 0 (0 = greedy) and finite, got {temperature}")
    if nucleus is not None and not 0 < nucleus <= 1:
        raise ValueError(f"nucleus is the probability mass to sample from: give 0 < nucleus <= 1, got {nucleus}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")


def choose_next_token(logits: Tensor, temperature: float = 1.0, nucleus: Optional[float] = None,
                      top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """logits [batch, vocab] -> next token ids [batch, 1].

    temperature 0: the most likely token. Otherwise sample from softmax(logits / temperature),
    restricted to the top_k most likely tokens, or to the nucleus: the fewest most likely tokens
    whose probability adds up to at least `nucleus`.
    """
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        top_logits, top_ids = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
        choice = torch.multinomial(top_logits.softmax(dim=-1), 1, generator=generator)
        return top_ids.gather(-1, choice)
    probs = logits.softmax(dim=-1)
    if nucleus is None:
        return torch.multinomial(probs, 1, generator=generator)
    sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= nucleus, 0.0)  # the most likely token always stays
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return sorted_ids.gather(-1, choice)


def generate(lm: "LM", context: List[int], n_new: int, temperature: float = 1.0, nucleus: Optional[float] = None,
             top_k: Optional[int] = None, generator: Optional[torch.Generator] = None,
             stop_at_eos: bool = True) -> List[int]:
    """Up to n_new tokens following `context` (ids, starting with bos), stopping before eos (if stop_at_eos).

    The context is read once into a key/value cache; then each step feeds only the newest token.
    Runs as the model is (call under no_grad / eval mode, as LM.sample does)."""
    new: List[int] = []
    if n_new <= 0:
        return new
    kv_cache = lm.new_kv_cache()
    x = torch.tensor([context], dtype=torch.long, device=lm.device)
    while len(new) < n_new:
        logits = lm(x, kv_cache=kv_cache)[:, -1]
        x = choose_next_token(logits, temperature, nucleus, top_k, generator)
        token = x.item()
        if stop_at_eos and token == lm.tokenizer.eos_id:
            break
        new.append(token)
    return new
