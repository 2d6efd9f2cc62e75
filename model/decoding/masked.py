"""Reading a masked LM (objective "masked"): fill_mask, and the per-token losses of its pseudo-perplexity."""
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.decoding.prompts import is_prompt_list
from model.eval_mode import evaluating


def fill_mask(lm: nn.Module, text_or_ids: Any, top_k: Optional[int] = None, as_str: bool = True) -> Any:
    """LM.fill_mask (see its docstring)."""
    tok = lm.tokenizer
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int (or None for the filled-in text), got {top_k!r}")
    batched = is_prompt_list(text_or_ids)
    if isinstance(text_or_ids, (list, tuple)) and len(text_or_ids) == 0:
        raise ValueError("fill_mask got an empty list: give a text (or ids) holding the mask token, or a list of them")
    inputs = [lm.as_ids(t) for t in (text_or_ids if batched else [text_or_ids])]
    for i, ids in enumerate(inputs):
        if tok.mask_id not in ids:
            which = f"input {i} " if batched else ""
            raise ValueError(f"{which}holds no mask token: write {tok.mask_token!r} (id {tok.mask_id}) where a "
                             f"token is to be predicted, e.g. 'the {tok.mask_token} sat'")
    rows = [ids if ids[:1] == [tok.bos_id] else framed(tok, ids) for ids in inputs]
    width = max(len(r) for r in rows)
    if width > lm.model_params.max_seq_len:
        raise ValueError(f"an input has {width} tokens (bos included), more than the model's context "
                         f"({lm.model_params.max_seq_len}): shorten it")
    x = torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows], device=lm.device)
    real = torch.arange(width, device=lm.device) < torch.tensor([len(r) for r in rows], device=lm.device)[:, None]
    with evaluating(lm), torch.inference_mode():
        probs = lm(x, attention_mask=real).float().softmax(dim=-1)  # [batch, width, vocab]
    results = []
    for row, (ids, given) in enumerate(zip(rows, inputs)):
        positions = [i for i, t in enumerate(ids) if t == tok.mask_id]
        if top_k is not None:
            top = probs[row, positions].topk(min(top_k, probs.shape[-1]), dim=-1)
            results.append([[(tok.tokens([t])[0] if as_str else t, p) for t, p in zip(ts, ps)]
                            for ts, ps in zip(top.indices.tolist(), top.values.tolist())])
            continue
        filled = list(ids)
        for position, best in zip(positions, probs[row, positions].argmax(dim=-1).tolist()):
            filled[position] = best
        start = 0 if ids == given else 1  # without the framing put around it
        filled = filled[start:start + len(given)]
        results.append(tok.decode(filled) if as_str else filled)
    return results if batched else results[0]


def masked_token_losses(lm: nn.Module, x: Tensor, real: Tensor, counted: Tensor,
                        batch_size: int = 32) -> Tuple[Tensor, Tensor]:
    """Pseudo-log-likelihood terms (Salazar et al. 2020) of x [batch, seq]: each scored token's
    cross-entropy with itself masked and every other token visible. (ce [batch, seq] float32, 0 where not
    scored; scored [batch, seq] bool: real, counted, not a framing token). One forward per scored token,
    batch_size of them at a time."""
    scored = real & counted
    for token in lm.framing_ids():
        scored = scored & (x != token)
    rows, positions = scored.nonzero(as_tuple=True)
    ce = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for start in range(0, len(rows), batch_size):
        r, p = rows[start:start + batch_size], positions[start:start + batch_size]
        inputs = x[r].clone()
        each = torch.arange(len(r), device=x.device)
        inputs[each, p] = lm.tokenizer.mask_id
        padded = not bool(real[r].all())  # without padding no key needs hiding: no mask to build and apply
        logits = lm(inputs, attention_mask=real[r] if padded else None, logits_at=p)[:, 0]  # [n, vocab]: at each mask
        ce[r, p] = F.cross_entropy(logits.float(), x[r, p], reduction="none")
    return ce, scored


def framed(tok: Any, ids: List[int]) -> List[int]:
    """A text's ids as a masked model reads them: bos + ids, as the rows trained here begin; an encoder
    checkpoint's tokenizer appends what its post-processor does ([CLS] ids [SEP] for BERT, <s> ids </s> for
    RoBERTa: what transformers' fill-mask pipeline feeds the model)."""
    return [tok.bos_id] + list(ids) + list(tok.suffix_ids)


def masked_rows(lm: nn.Module, texts: List[List[int]]) -> List[List[int]]:
    """Texts' ids as rows whose all-but-last tokens are the masked model's input (framed, above): the rows
    trained here are `<eos> text <eos>`."""
    return [framed(lm.tokenizer, ids) + [lm.tokenizer.eos_id] for ids in texts]
