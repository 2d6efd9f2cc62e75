"""Sampling from an LM (LM.sample): choosing each next token (temperature, top-k, nucleus) and the
cached generation loop, for one prompt or a batch of them."""
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from model.eval_mode import evaluating
from model.decoding.cpu_speedups import cpu_decoding
from model.decoding.prompts import left_padded, read_prompts
from model.decoding.sample_text import render_sample
from model.recurrent import RecurrentState


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


def choose_next_tokens(logits: Tensor, temperature: float = 1.0, nucleus: Optional[float] = None,
                       top_k: Optional[int] = None, generators: Optional[List[torch.Generator]] = None) -> Tensor:
    """choose_next_token for a batch [batch, vocab] -> [batch, 1], each row drawn with its own generator
    (when given), so that a row's choice does not depend on the other rows."""
    if generators is None or temperature == 0:
        return choose_next_token(logits, temperature, nucleus, top_k)
    return torch.cat([choose_next_token(logits[i:i + 1], temperature, nucleus, top_k, generator)
                      for i, generator in enumerate(generators)])


def generate(lm: nn.Module, contexts: List[List[int]], n_new: List[int], temperature: float = 1.0,
             nucleus: Optional[float] = None, top_k: Optional[int] = None,
             generators: Optional[List[torch.Generator]] = None, stop_at_eos: bool = True) -> List[List[int]]:
    """For each context (ids starting with bos) up to n_new[r] new tokens, stopping before eos (if stop_at_eos).

    The contexts run as one batch, left-padded to the longest (see prompts.py). They are read once into a
    key/value cache; then each step feeds only the newest token of each row. Rows that are done leave the
    batch. Once a transformer's cache holds the model's context, every further step reads each row's last
    context_len tokens afresh (as nanoGPT's generate crops them): a sample may be longer than the context,
    at the cost of one context-long forward per token from there. A recurrent model's state reads on.
    generators: one per row (seeded sampling that does not depend on the batch), or None for torch's global RNG.
    Runs as the model is (call under no_grad / eval mode, as LM.sample does)."""
    new: List[List[int]] = [[] for _ in contexts]
    rows = [r for r in range(len(contexts)) if n_new[r] > 0]  # the rows still generating, in batch order
    if not rows:
        return new
    context_len = lm.model_params.max_seq_len

    def read(rows: List[int]) -> Tuple[Tensor, Any]:
        """The next-token logits [rows, vocab] of each row's last context_len ids (left-padded into one batch),
        and the cache that holds them. A prefix model reads the prompt's part of each window as its prefix."""
        windows = [(contexts[r] + new[r])[-context_len:] for r in rows]
        x, pad_left = left_padded(windows, lm.tokenizer.pad_id, lm.device)
        kv_cache = lm.new_kv_cache(len(rows), pad_left=pad_left)
        prefix_len = None
        if lm.model_params.objective == "prefix":  # padding + the window's tokens that are not new
            prefix_len = [x.shape[1] - len(w) + max(0, len(w) - len(new[r])) for w, r in zip(windows, rows)]
        return lm(x, kv_cache=kv_cache, logits_to_keep=1, prefix_len=prefix_len)[:, -1], kv_cache

    logits, kv_cache = read(rows)
    eos = lm.tokenizer.eos_id if stop_at_eos else None
    while True:
        row_generators = [generators[r] for r in rows] if generators is not None else None
        x = choose_next_tokens(logits, temperature, nucleus, top_k, row_generators)
        going_on = []  # batch positions of the rows that go on
        for i, (r, token) in enumerate(zip(rows, x[:, 0].tolist())):
            if token == eos:
                continue
            new[r].append(token)
            if len(new[r]) < n_new[r]:
                going_on.append(i)
        if not going_on:
            return new
        if len(going_on) < len(rows):
            keep = torch.tensor(going_on, device=x.device)
            kv_cache.reorder(keep)
            x, rows = x[keep], [rows[i] for i in going_on]
        if kv_cache.length < context_len or isinstance(kv_cache, RecurrentState):
            logits = lm(x, kv_cache=kv_cache)[:, -1]
        else:  # the context is full: read each row's last context_len tokens afresh (nanoGPT's crop)
            logits, kv_cache = read(rows)


def sample(lm: nn.Module, pref: Any = "", max_seq_len: int = 100, temperature: float = 1.0, nucleus: Optional[float] = None,
           top_k: Optional[int] = None, as_str: bool = True, seed: Optional[int] = None,
           stop_at_eos: bool = True, max_new_tokens: Optional[int] = None) -> Union[str, List[int], List[Union[str, List[int]]]]:
    """LM.sample (see its docstring): one prompt -> one sample; a list of prompts -> a list of samples,
    generated in batches, each the same as sampling its prompt alone with the same seed.
    max_new_tokens: at most that many new tokens for every prompt instead (max_seq_len is then not read)."""
    check_sampling_args(temperature, nucleus, top_k)
    prompts = read_prompts(lm, pref, max_seq_len, max_new_tokens=max_new_tokens)
    new: List[List[int]] = []
    # inference mode: less bookkeeping per op than no_grad; cpu_decoding: faster products on a CPU
    with evaluating(lm), cpu_decoding(lm, rows=len(prompts.contexts)), torch.inference_mode():
        generators = None
        if seed is not None:  # one generator per row, all seeded alike: a row's sample does not depend on the batch
            generators = [torch.Generator(device=lm.device).manual_seed(seed) for _ in prompts.contexts]
        if prompts.contexts:
            new = generate(lm, prompts.contexts, prompts.n_new, temperature, nucleus, top_k, generators, stop_at_eos)
    samples = [given + ids for given, ids in zip(prompts.given, new)]
    if as_str:
        samples = [render_sample(lm.tokenizer, ids, lm.sample_mode) for ids in samples]
    return samples if prompts.batched else samples[0]
