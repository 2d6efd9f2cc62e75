"""Weights prepared for decoding on a CPU: `with decoding_weights(lm, rows):` (LM.sample, LM.beam_search).

A decoding step multiplies one row per prompt or beam by every weight, so it reads each whole weight
for a handful of rows, and how that weight is laid out in memory sets the speed (2 threads,
bench/bench_gpt2.py; bench/RESULTS.md). Within the block, on a CPU:
- every large float32 linear weight of lm (ONEDNN_WEIGHT values or more: GPT-2 small's block weights
  and its head) has a oneDNN copy, which `model/decoding_linear.py: linear` multiplies with oneDNN's fp32
  product for one row and for many rows (1.3-2x faster than BLAS for GPT-2 small's weights);
- when decoding one row, the other linear weights of the blocks are pointed at [in, out]-ordered copies
  (`copy.t()`: the same values and shape, other strides), which BLAS' matrix-vector product reads faster,
  so the layer code runs unchanged (small weights gain from BLAS' call path: about 7% per token on the
  shakespeare-char shape; all weights do where oneDNN is not available).
Afterwards the weights are as before and `linear` is plain F.linear again.

The copies are kept for the next call, beside the weights rather than on the LM (so that copying,
pickling or saving the LM never meets them), until the weights are freed or `drop_copies(lm)`. They are
remade when a weight changed: a new tensor, its version counter (in-place edits, optimizer steps,
load_state_dict) or its sum (edits through `.data`, which the version counter does not see). They cost
memory (GPT-2 small: 500 MB): none are made when the weights add up to more than MAX_COPIED values.
"""
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Tuple

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from model.decoding_linear import ONEDNN_COPIES

ONEDNN_WEIGHT = 1 << 19  # 524k values (2 MB): from this size oneDNN's product wins (GPT-2's 768 x 768 does)
MAX_COPIED = 1 << 28  # 1G values (GPT-2 small: 124M): beyond this, decode with the weights as they are
_COPIES = WeakIdKeyDictionary()  # weight -> {kind: ((data_ptr, version), sum, copy)}; gone with the weight


def linear_weights(module: nn.Module) -> List[nn.Parameter]:
    """The weights multiplied as F.linear(x, weight) in module (nn.Linear, in_proj_weight), each once
    (a tied output projection is the embedding's weight)."""
    weights: Dict[int, nn.Parameter] = {}
    for sub in module.modules():
        weight = sub.weight if isinstance(sub, nn.Linear) else getattr(sub, "in_proj_weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() == 2:
            weights.setdefault(id(weight), weight)
    return list(weights.values())


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available()


@contextmanager
def decoding_weights(lm: nn.Module, rows: int = 1) -> Iterator[None]:
    """Within the block, lm's linear weights are laid out for decoding `rows` rows at a time on a CPU
    (see the module docstring). Nothing changes on other devices or beyond MAX_COPIED values."""
    weights = linear_weights(lm)
    if not weights or weights[0].device.type != "cpu" or sum(w.numel() for w in weights) > MAX_COPIED:
        yield
        return
    large = ([w for w in weights if w.numel() >= ONEDNN_WEIGHT and w.dtype == torch.float32]  # fp32: any x86 CPU
             if onednn_available() else [])
    block_weights, onednn_weights = {id(w) for w in linear_weights(lm.decoder)}, {id(w) for w in large}
    in_out = [w for w in weights if id(w) in block_weights and id(w) not in onednn_weights] if rows == 1 else []
    originals = []
    try:
        with torch.no_grad():
            for weight in large:
                ONEDNN_COPIES[id(weight)] = _copy(weight, "onednn", Tensor.to_mkldnn)
            for weight in in_out:
                originals.append((weight, weight.data))
                weight.data = _copy(weight, "in_out", lambda w: w.t().contiguous()).t()
        yield
    finally:
        for weight in large:
            ONEDNN_COPIES.pop(id(weight), None)
        for weight, data in originals:
            weight.data = data


def drop_copies(lm: nn.Module) -> None:
    """Free the decoding copies of lm's weights (the next decoding run makes them again)."""
    for weight in linear_weights(lm):
        _COPIES.pop(weight, None)


def _copy(weight: Tensor, kind: str, make: Callable[[Tensor], Tensor]) -> Tensor:
    """The `kind` copy of weight, remade (make(weight)) when the weight changed since it was made."""
    stamp, total = (weight.data_ptr(), weight._version), weight.sum()
    entries: Dict[str, Tuple[Tuple[int, int], Tensor, Tensor]] = _COPIES.setdefault(weight, {})
    entry = entries.get(kind)
    if entry is None or entry[0] != stamp or not torch.equal(entry[1], total):
        entry = entries[kind] = (stamp, total, make(weight))
    return entry[2]
