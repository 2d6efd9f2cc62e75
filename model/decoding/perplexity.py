"""Perplexity (or cross-entropy) of an LM on texts or on a DataLoader of batches.

Per objective: causal and fim models score every next token; a prefix model scores the tokens after
the prefix (texts: prefix_len tokens after bos, 0 by default, a causal read; batches: the validation's
fixed split, or a synthetic task's prompt); a masked model gives the pseudo-perplexity (Salazar et al.
2020): every token scored with itself masked and the others visible (model/decoding/masked.py)."""
import math
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.decoding.masked import masked_rows, masked_token_losses
from model.eval_mode import evaluating

Batch = Dict[str, Any]


def text_batches(lm: nn.Module, texts: Sequence[str], batch_size: int, prefix_len: int = 0) -> Iterator[Batch]:
    """Batches in the DataLoader format for `texts`, each read as training saw it: bos + the text's ids
    (a masked model's rows: bos + ids + eos, of which it reads all but the last), right-padded with pad_id
    (mask False on padding). A prefix model's batches hold prefix_len: bos + the first prefix_len tokens."""
    tok = lm.tokenizer
    ids = tok(list(texts))
    sequences = masked_rows(lm, ids) if lm.model_params.objective == "masked" else [[tok.bos_id] + i for i in ids]
    limit = lm.model_params.max_seq_len + 1  # the model reads all but the last token
    too_long = [i for i, seq in enumerate(sequences) if len(seq) > limit]
    if too_long:
        raise ValueError(f"texts {too_long[:5]} have more than {limit - 1} tokens (after bos), the model's context "
                         f"(model_params.max_seq_len): split them into shorter pieces")
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(seq) for seq in chunk)
        x = torch.full((len(chunk), width), tok.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, seq in enumerate(chunk):
            x[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = True
        batch = {"x_indices": x, "mask": mask}
        if lm.model_params.objective == "prefix":
            batch["prefix_len"] = torch.full((len(chunk),), 1 + prefix_len, dtype=torch.long)
        yield batch


def perplexities(lm: nn.Module, data: Union[Sequence[str], Iterable[Batch]], per_token: bool = False,
                 before_exp: bool = False, dummy_res: float = -1, batch_size: int = 32, prefix_len: Optional[int] = None,
                 pseudo_perplexity: bool = True) -> Tuple[float, float, float, int, Union[Tensor, List]]:
    """See LM.perplexities."""
    if prefix_len is not None and lm.model_params.objective != "prefix":
        raise ValueError(f"prefix_len is for models trained with objective='prefix'; this one has "
                         f"objective={lm.model_params.objective!r}")
    if prefix_len is not None and (isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 0):
        raise ValueError(f"prefix_len is the number of text tokens read as the prefix: give an int >= 0, got {prefix_len!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size is the number of texts per forward pass: give an int >= 1, got {batch_size!r}")
    if isinstance(data, str):
        raise TypeError("perplexities expects a list of texts (or a DataLoader), not one string: wrap it in a list")
    if isinstance(data, (list, tuple)):
        if not data:
            raise ValueError("perplexities got an empty list: give at least one text")
        if all(isinstance(item, str) for item in data):
            data = text_batches(lm, data, batch_size, prefix_len or 0)
    total_ce, total_tokens = 0.0, 0
    highest, lowest = -math.inf, math.inf
    rows: List[Tensor] = []
    with evaluating(lm):
        for batch in data:
            if not isinstance(batch, dict) or "x_indices" not in batch or "mask" not in batch:
                raise TypeError("perplexities expects a list of texts or batches (dicts with 'x_indices' "
                                f"and 'mask', as the DataLoaders give), got an item of type {type(batch).__name__}")
            if batch["x_indices"].shape[1] < 2:  # bos alone: nothing to predict
                rows.append(torch.full((batch["x_indices"].shape[0], 0), float(dummy_res)))
                continue
            batch = {k: (v.to(lm.device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
            ce, counted = token_losses(lm, batch, batch_size, pseudo_perplexity)
            values = ce if before_exp else ce.exp()
            # the batch's sums and extremes read back together: one device sync per batch
            ce_sum, n, batch_max, batch_min = torch.stack([
                ce.sum(dtype=torch.float64), counted.sum().double(),
                values.masked_fill(~counted, -math.inf).max().double(),
                values.masked_fill(~counted, math.inf).min().double()]).tolist()
            if n:
                total_ce += ce_sum
                total_tokens += int(n)
                highest, lowest = max(highest, batch_max), min(lowest, batch_min)
            if per_token:
                rows.append(values.masked_fill(~counted, dummy_res).cpu())
    if total_tokens == 0:
        raise ValueError("no tokens to score: every sequence is empty or masked out")
    mean_ce = total_ce / total_tokens
    mean = mean_ce if before_exp else math.exp(mean_ce)
    return mean, highest, lowest, total_tokens, (pad_and_stack(rows, dummy_res) if per_token else [])


def token_losses(lm: nn.Module, batch: Batch, batch_size: int, pseudo_perplexity: bool = True) -> Tuple[Tensor, Tensor]:
    """(cross-entropy [batch, seq - 1], 0 where not counted; counted [batch, seq - 1]) of a batch's rows: the
    next tokens (causal, fim, prefix: as get_batch_xyz counts them), or a masked model's pseudo-log-likelihood
    terms at each input position (pseudo_perplexity=False: its fixed masks, as get_batch_xyz in eval mode)."""
    if lm.model_params.objective == "masked" and pseudo_perplexity:
        real = batch["mask"].bool()
        counted = real if batch.get("target_mask") is None else real & batch["target_mask"].bool()
        # as get_batch_xyz reads a row: all but its last token
        return masked_token_losses(lm, batch["x_indices"][:, :-1], real[:, 1:], counted[:, :-1], batch_size)
    _, y, z = lm.get_batch_xyz(batch)
    ce = F.cross_entropy(z.reshape(-1, z.shape[-1]).float(), y.reshape(-1), ignore_index=-100,
                         reduction="none").view(y.shape)
    return ce, y != -100


def pad_and_stack(rows: List[Tensor], fill: float) -> Tensor:
    """Concatenate [batch_i, len_i] tensors into [sum batch_i, max len_i], filling the gaps with `fill`."""
    width = max(r.shape[1] for r in rows)
    return torch.cat([F.pad(r, (0, width - r.shape[1]), value=fill) for r in rows])
