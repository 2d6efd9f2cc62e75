"""Faster decoding on a CPU, applied from outside the model: `with cpu_decoding(lm, rows):` (lm.sample,
lm.beam_search). The model's code is not changed: what it computes is the same, only how the weights'
products are computed while decoding (results may differ in the last float bits: other summation order).

A decoding step multiplies a few rows (one token per prompt or beam) by every weight, so it reads each
whole weight for a handful of rows, and how the product reads it sets the speed (2 threads,
bench/bench_decoding.py; bench/RESULTS.md). Within the block, on a CPU:
- F.linear calls on large weights go through `FastProducts`, a TorchFunctionMode (active only when the
  model has a weight of FEW_ROWS_WEIGHT values or more, so small models pay nothing per op):
    * a float32 weight of ONEDNN_WEIGHT values or more has a oneDNN copy, multiplied with oneDNN's fp32
      product for 1 row and for MANY_ROWS rows and more (GPT-2 small's weights: 1.3-2x faster than BLAS);
    * 2 to FEW_ROWS rows of a weight of FEW_ROWS_WEIGHT values or more: weight @ x.T (BLAS reads the
      weight row by row: 768x3072, 4 rows 396 -> 209 us);
    * one row of a bias-free weight of DOUBLED_ROW_WEIGHT values or more (a large vocabulary head) without
      a oneDNN copy: the row doubled, as weight @ h.T (BLAS' matrix-vector kernel is the slow one).
- decoding one row, the other (small) linear weights of the blocks point at [in, out]-ordered copies
  (`copy.t()`: the same values and shape, other strides), which BLAS' matrix-vector product reads faster
  (about 7% per token on the shakespeare-char shape).
Afterwards the weights are as before.

Which of these pays depends on the CPU and its BLAS: they were found on an AVX2 AMD EPYC, where each wins,
and on an AVX-512 Intel Xeon they lose to plain F.linear (GPT-2 small greedy: 30 against 42 tokens/s). So
they run only on the CPUs where they measured faster (`trick_pays`, `MEASURED_FASTER_ON`).

The copies are kept for the next call, beside the weights rather than on the LM (so that copying,
pickling or saving the LM never meets them), until the weights are freed or `drop_copies(lm)`. They are
remade when a weight changed: a new tensor, its version counter (in-place edits, optimizer steps,
load_state_dict) or its sum (edits through `.data`, which the version counter does not see). They cost
memory (GPT-2 small: 500 MB): none are made when the weights add up to more than MAX_COPIED values.
"""
import functools
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

ONEDNN_WEIGHT = 1 << 19  # 524k values (2 MB): from this size oneDNN's product wins (GPT-2's 768 x 768 does)
FEW_ROWS_WEIGHT = 1 << 18  # 262k values (1 MB): smaller weights stay in cache, where the order does not matter
DOUBLED_ROW_WEIGHT = 1 << 22  # 4M values (16 MB): a head this large is read faster as weight @ [h; h].T
FEW_ROWS = 64  # from 2 up to this many rows, weight @ x.T is faster than F.linear on a CPU
MANY_ROWS = 8  # with a oneDNN copy: 1 row, or this many rows and more, go through oneDNN
MAX_COPIED = 1 << 28  # 268M values (GPT-2 small: 124M): beyond this, decode with the weights as they are
_COPIES = WeakIdKeyDictionary()  # weight -> {kind: ((data_ptr, version), sum, copy)}; gone with the weight
TRICKS = ("onednn", "few_rows", "doubled_row", "in_out")
MEASURED_FASTER_ON = ("AuthenticAMD",)  # CPU vendors on which every trick measured faster than F.linear


@functools.lru_cache(maxsize=None)
def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id ("AuthenticAMD", "GenuineIntel"; "" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def trick_pays(trick: str) -> bool:
    """Whether `trick` (one of TRICKS) beats plain F.linear on this CPU. Measured (bench/RESULTS.md): on an AMD
    EPYC each does; on an Intel Xeon none does clearly, and oneDNN's product and the doubled row lose by 2-3x.
    Other CPUs are unmeasured, so they get F.linear as it is: the tricks run on AMD CPUs only. A fixed rule
    rather than a timing at run time (tried: the choice flipped between processes at these microsecond
    products), so that a decoding's float rounding does not depend on how busy the machine was."""
    if trick not in TRICKS:
        raise ValueError(f"unknown trick {trick!r}: one of {', '.join(TRICKS)}")
    return cpu_vendor() in MEASURED_FASTER_ON and (trick != "onednn" or onednn_available())


class FastProducts(TorchFunctionMode):
    """While active: F.linear(x, weight, bias) computed the fastest way known for its rows and weight
    (see the module docstring); every other op, and products with gradients on, run as they are."""

    def __init__(self, onednn_copies: Dict[int, Tensor], pays: Optional[Dict[str, bool]] = None):
        super().__init__()
        self.onednn_copies = onednn_copies  # id(weight) -> its oneDNN copy
        # which of the few-rows and doubled-row products to use (cpu_decoding: those that pay); None: both
        self.pays = pays if pays is not None else {"few_rows": True, "doubled_row": True}

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.linear or torch.is_grad_enabled():
            return func(*args, **kwargs)
        x, weight = args[0], args[1]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        onednn_weight = self.onednn_copies.get(id(weight))
        if onednn_weight is not None and not 2 <= rows < MANY_ROWS:  # as torch.utils.mkldnn's MkldnnLinear
            return torch._C._nn.mkldnn_linear(x.to_mkldnn(), onednn_weight, bias).to_dense()
        if x.device.type != "cpu" or weight.numel() < FEW_ROWS_WEIGHT:
            return func(*args, **kwargs)
        if (2 <= rows <= FEW_ROWS and self.pays["few_rows"]) or \
                (rows == 1 and bias is None and weight.numel() >= DOUBLED_ROW_WEIGHT and self.pays["doubled_row"]):
            x_rows = x.reshape(rows, x.shape[-1])
            if rows == 1:
                x_rows = torch.cat((x_rows, x_rows))
            x_rows = x_rows.t()  # a column-major view: BLAS' fast kernel for this product
            out = torch.mm(weight, x_rows) if bias is None else torch.addmm(bias.unsqueeze(1), weight, x_rows)
            return out[:, :rows].t().reshape(*x.shape[:-1], weight.shape[0])
        return func(*args, **kwargs)


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
def cpu_decoding(lm: nn.Module, rows: int = 1) -> Iterator[None]:
    """Within the block, lm's linear products are computed for decoding `rows` rows at a time on a CPU
    (see the module docstring). Nothing changes on other devices or beyond MAX_COPIED values."""
    weights = linear_weights(lm)
    if not weights or weights[0].device.type != "cpu" or sum(w.numel() for w in weights) > MAX_COPIED:
        yield
        return
    large = ([w for w in weights if w.numel() >= ONEDNN_WEIGHT and w.dtype == torch.float32]  # fp32: any x86 CPU
             if onednn_available() else [])
    large = large if large and trick_pays("onednn") else []
    block_weights, onednn_weights = {id(w) for w in linear_weights(lm.decoder)}, {id(w) for w in large}
    in_out = [w for w in weights if id(w) in block_weights and id(w) not in onednn_weights] if rows == 1 else []
    in_out = in_out if in_out and trick_pays("in_out") else []
    biggest = max(w.numel() for w in weights)
    pays = {"few_rows": biggest >= FEW_ROWS_WEIGHT and trick_pays("few_rows"),
            "doubled_row": biggest >= DOUBLED_ROW_WEIGHT and trick_pays("doubled_row")}
    originals = []
    try:
        with torch.no_grad():
            onednn_copies = {id(w): _copy(w, "onednn", Tensor.to_mkldnn) for w in large}
            for weight in in_out:
                originals.append((weight, weight.data))
                weight.data = _copy(weight, "in_out", lambda w: w.t().contiguous()).t()
        if large or pays["few_rows"] or pays["doubled_row"]:
            with FastProducts(onednn_copies, pays):
                yield
        else:
            yield
    finally:
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
