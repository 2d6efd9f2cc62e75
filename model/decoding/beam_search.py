"""Beam search (LM.beam_search), step for step the algorithm of transformers' `generate(num_beams=K,
do_sample=False, early_stopping=True)`, so that both return the same sequences on the same weights.

Each step, for every prompt:
  1. every running beam's log-probability sum + each next token's log-probability: K * vocab candidates;
  2. keep the best 2K (so that K can go on even if up to K of them end here);
  3. the best K candidates that did not end (eos, or the length limit) are the next running beams;
  4. candidates among the best K that ended become hypotheses, scored sum / new_tokens ** length_penalty;
     the best K hypotheses so far are kept;
  5. a prompt is done once it holds K hypotheses (early stopping) or reaches its length limit.
"Impossible" entries get transformers' -1e9 added (not -inf), so that ties break as there.
Several prompts run as one batch of prompts x K rows; a prompt that is done leaves the batch.
"""
import difflib
import math
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from model.eval_mode import evaluating
from model.decoding.cpu_speedups import cpu_decoding
from model.decoding.prompts import left_padded, read_prompts
from model.decoding.sample_text import render_sample
from model.recurrent import RecurrentState

IMPOSSIBLE = -1.0e9  # transformers' score for candidates that must not be chosen
Hypothesis = Tuple[List[int], float]  # (new token ids, eos included when it ended with eos; score)
ARGUMENTS = ("pref", "beam_size", "max_seq_len", "length_penalty", "n_best", "as_str", "stop_at_eos")


def check_beam_args(beam_size: int, n_best: int, length_penalty: float, unsupported: dict) -> None:
    """Raise a clear error for arguments beam search does not take or cannot use."""
    for name in unsupported:
        if name in ("temperature", "top_k", "nucleus", "seed"):
            raise ValueError(f"beam search is deterministic (the most likely sequences): it takes no {name}. "
                             f"For sampled continuations use lm.sample(..., {name}=...)")
        close = difflib.get_close_matches(name, ARGUMENTS, n=1)
        raise TypeError(f"beam_search() got an unexpected argument {name!r}"
                        + (f": did you mean {close[0]!r}?" if close else f"; it takes {', '.join(ARGUMENTS)}"))
    for name, value in (("beam_size", beam_size), ("n_best", n_best)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if n_best > beam_size:
        raise ValueError(f"n_best ({n_best}) cannot exceed beam_size ({beam_size}): beam search keeps beam_size "
                         f"hypotheses; raise beam_size or lower n_best")
    if not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool) or \
            not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number (1.0 = average log-probability per token), "
                         f"got {length_penalty!r}")


def beam_search(lm: nn.Module, pref: Any = "", beam_size: int = 4, max_seq_len: int = 100, length_penalty: float = 1.0,
                n_best: int = 1, as_str: bool = True, stop_at_eos: bool = True, **unsupported: Any) -> Any:
    """LM.beam_search (see its docstring)."""
    check_beam_args(beam_size, n_best, length_penalty, unsupported)
    prompts = read_prompts(lm, pref, max_seq_len)
    found: List[List[Hypothesis]] = [[([], 0.0)] * n_best for _ in prompts.contexts]  # prompts adding no token
    # inference mode: less bookkeeping per op than no_grad; cpu_decoding: faster products on a CPU
    with evaluating(lm), cpu_decoding(lm, rows=beam_size * len(prompts.contexts)), torch.inference_mode():
        group = [i for i in range(len(prompts.contexts)) if prompts.n_new[i] > 0]
        if group:
            hypotheses = search(lm, [prompts.contexts[i] for i in group], [prompts.n_new[i] for i in group],
                                beam_size, length_penalty, stop_at_eos)
            for i, best in zip(group, hypotheses):
                found[i] = best[:n_best]
    eos = lm.tokenizer.eos_id
    results = []
    for given, best in zip(prompts.given, found):
        samples = [(given + (new[:-1] if stop_at_eos and new[-1:] == [eos] else new), score) for new, score in best]
        if as_str:
            samples = [(render_sample(lm.tokenizer, ids, lm.sample_mode), score) for ids, score in samples]
        results.append(samples[0][0] if n_best == 1 else samples)
    return results if prompts.batched else results[0]


def search(lm: nn.Module, contexts: List[List[int]], n_new: List[int], beam_size: int, length_penalty: float,
           stop_at_eos: bool) -> List[List[Hypothesis]]:
    """For each context (ids starting with bos; one left-padded batch, n_new[p] >= 1 new tokens at most),
    its beam_size hypotheses, best first. Runs as the model is (LM.beam_search calls it in eval mode).
    Once a transformer's cache holds the model's context, each step reads every beam's last context-long
    window afresh, as sampling does (a recurrent model's state reads on)."""
    device, K = lm.device, beam_size
    context_len = lm.model_params.max_seq_len

    def read(windows: List[List[int]], n_new_tokens: int) -> Tuple[torch.Tensor, Any]:
        """Next-token logits [rows, vocab] of each window (left-padded into one batch), and their cache. A prefix
        model reads the prompt's part of each window (not its n_new_tokens new tokens) as its prefix."""
        x, pad_left = left_padded(windows, lm.tokenizer.pad_id, device)
        kv_cache = lm.new_kv_cache(len(windows), pad_left=pad_left)
        prefix_len = None
        if lm.model_params.objective == "prefix":  # padding + the window's tokens that are not new
            prefix_len = [x.shape[1] - len(w) + max(0, len(w) - n_new_tokens) for w in windows]
        return lm(x, kv_cache=kv_cache, logits_to_keep=1, prefix_len=prefix_len)[:, -1], kv_cache

    logits, kv_cache = read(contexts, 0)
    rows = torch.arange(len(contexts), device=device).repeat_interleave(K)  # each prompt's row K times
    kv_cache.reorder(rows)
    logits = logits[rows]

    prompt_ids = list(range(len(contexts)))  # the prompts still searching, in batch order
    max_new = torch.tensor(n_new, device=device)
    eos = lm.tokenizer.eos_id if stop_at_eos else -1
    n_steps = max(n_new)
    running_scores = torch.full((len(contexts), K), IMPOSSIBLE, device=device)
    running_scores[:, 0] = 0.0  # only the first copy of the prompt starts: no K identical beams
    running = torch.zeros((len(contexts), K, n_steps), dtype=torch.long, device=device)  # their new tokens
    hypotheses = torch.zeros_like(running)
    hypothesis_scores = torch.full((len(contexts), K), IMPOSSIBLE, device=device)
    hypothesis_lengths = torch.zeros((len(contexts), K), dtype=torch.long, device=device)
    is_hypothesis = torch.zeros((len(contexts), K), dtype=torch.bool, device=device)
    best_k = torch.arange(2 * K, device=device) < K
    found: List[Optional[List[Hypothesis]]] = [None] * len(contexts)

    for step in range(n_steps):
        n_prompts, vocab = len(prompt_ids), logits.shape[-1]
        # 1-2. the best 2K continuations of each prompt's beams
        log_probs = F.log_softmax(logits.float(), dim=-1).view(n_prompts, K, vocab) + running_scores[:, :, None]
        top_scores, top_ids = log_probs.view(n_prompts, K * vocab).topk(2 * K)
        beam, token = top_ids // vocab, top_ids % vocab
        candidates = running.gather(1, beam[:, :, None].expand(-1, -1, n_steps)).clone()
        candidates[:, :, step] = token
        ends = (token == eos) | (step + 1 >= max_new)[:, None]
        # 3. the next running beams: the best K candidates that go on
        going_on_scores = top_scores + ends.float() * IMPOSSIBLE
        keep = going_on_scores.topk(K).indices
        running_scores = going_on_scores.gather(1, keep)
        running = candidates.gather(1, keep[:, :, None].expand(-1, -1, n_steps))
        source_rows = beam.gather(1, keep) + torch.arange(n_prompts, device=device)[:, None] * K
        # 4. hypotheses: those of the best K candidates that ended, length-penalised, merged with the earlier ones
        scores = top_scores / ((step + 1) ** length_penalty)
        scores = scores + is_hypothesis.all(dim=1, keepdim=True).float() * IMPOSSIBLE  # done: no more changes
        new_hypothesis = ends & best_k
        scores = scores + (~new_hypothesis).float() * IMPOSSIBLE
        merged_scores = torch.cat((hypothesis_scores, scores), dim=1)
        chosen = merged_scores.topk(K).indices
        hypothesis_scores = merged_scores.gather(1, chosen)
        hypotheses = torch.cat((hypotheses, candidates), dim=1).gather(1, chosen[:, :, None].expand(-1, -1, n_steps))
        lengths = torch.cat((hypothesis_lengths, torch.full_like(token, step + 1)), dim=1)
        hypothesis_lengths = lengths.gather(1, chosen)
        is_hypothesis = torch.cat((is_hypothesis, new_hypothesis), dim=1).gather(1, chosen)
        # 5. prompts that are done leave the batch
        done = (is_hypothesis.all(dim=1) | (step + 1 >= max_new)).tolist()
        for i in (i for i, d in enumerate(done) if d):
            found[prompt_ids[i]] = [(hypotheses[i, j, :length].tolist(), score) for j, (length, score) in
                                    enumerate(zip(hypothesis_lengths[i].tolist(), hypothesis_scores[i].tolist()))]
        if all(done):
            break
        if any(done):
            left = torch.tensor([i for i, d in enumerate(done) if not d], device=device)
            prompt_ids = [prompt_ids[i] for i in left.tolist()]
            max_new, running_scores, running, source_rows = (t[left] for t in (max_new, running_scores, running, source_rows))
            hypotheses, hypothesis_scores, hypothesis_lengths, is_hypothesis = (
                t[left] for t in (hypotheses, hypothesis_scores, hypothesis_lengths, is_hypothesis))
        if kv_cache.length < context_len or isinstance(kv_cache, RecurrentState):
            kv_cache.reorder(source_rows.flatten())
            logits = lm(running[:, :, step].reshape(-1, 1), kv_cache=kv_cache)[:, -1]
        else:  # the context is full: every beam's last context_len tokens, read afresh (as sampling crops)
            beams = running[:, :, :step + 1].tolist()
            windows = [(contexts[p] + new)[-context_len:] for p, prompt_beams in zip(prompt_ids, beams)
                       for new in prompt_beams]
            logits, kv_cache = read(windows, step + 1)
    return found
