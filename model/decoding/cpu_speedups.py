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

Which of these pays depends on the CPU and its BLAS (they were found on an AVX2 AMD EPYC, where each wins;
on an AVX-512 Intel Xeon with MKL, oneDNN's product and the doubled row lose to plain F.linear). So each
trick is used only where it measured faster: `tricks_that_pay()` times it against F.linear once per
process, on weights of the sizes it is for (about 0.1 s, at the first decoding call).

The copies are kept for the next call, beside the weights rather than on the LM (so that copying,
pickling or saving the LM never meets them), until the weights are freed or `drop_copies(lm)`. They are
remade when a weight changed: a new tensor, its version counter (in-place edits, optimizer steps,
load_state_dict) or its sum (edits through `.data`, which the version counter does not see). They cost
memory (GPT-2 small: 500 MB): none are made when the weights add up to more than MAX_COPIED values.
"""
import time
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
PAYS_FROM = 0.95  # a trick is used when it takes at most this fraction of F.linear's time
_MEASURED: Dict[int, Dict[str, bool]] = {}  # torch threads -> tricks_that_pay() for that many threads


def tricks_that_pay() -> Dict[str, bool]:
    """{trick: whether it beats F.linear here}, measured once per process (and thread count) on weights of
    the sizes each trick is for: oneDNN's product of one row by a 768 x 2304 weight, weight @ x.T for 4 rows
    of a 3072 x 768 one, a doubled row of a bias-free 8192 x 768 head, one row by a 512 x 128 weight in
    [in, out] order. Best of 3 rounds of 10 products each."""
    threads = torch.get_num_threads()
    if threads not in _MEASURED:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            w_large, w_wide = torch.randn(2304, 768, generator=generator), torch.randn(3072, 768, generator=generator)
            w_head, w_small = torch.randn(8192, 768, generator=generator), torch.randn(512, 128, generator=generator)
            one, four, small_one = torch.randn(1, 768), torch.randn(4, 768), torch.randn(1, 128)
            small_in_out = w_small.t().contiguous().t()
            candidates = {
                "few_rows": (lambda: F.linear(four, w_wide), lambda: torch.mm(w_wide, four.t()).t()),
                "doubled_row": (lambda: F.linear(one, w_head), lambda: torch.mm(w_head, torch.cat((one, one)).t())[:, :1].t()),
                "in_out": (lambda: F.linear(small_one, w_small), lambda: F.linear(small_one, small_in_out)),
            }
            if onednn_available():
                w_onednn = w_large.to_mkldnn()
                candidates["onednn"] = (lambda: F.linear(one, w_large),
                                        lambda: torch._C._nn.mkldnn_linear(one.to_mkldnn(), w_onednn, None).to_dense())
            pays = {trick: False for trick in TRICKS}
            for trick, (plain, faster) in candidates.items():
                pays[trick] = best_time(faster) <= PAYS_FROM * best_time(plain)
        _MEASURED[threads] = pays
    return _MEASURED[threads]


def best_time(product: Callable[[], Tensor], rounds: int = 3, calls: int = 10) -> float:
    product()  # warm-up (first-call allocations, oneDNN's kernel choice)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            product()
        best = min(best, time.perf_counter() - start)
    return best


class FastProducts(TorchFunctionMode):
    """While active: F.linear(x, weight, bias) computed the fastest way known for its rows and weight
    (see the module docstring); every other op, and products with gradients on, run as they are."""

    def __init__(self, onednn_copies: Dict[int, Tensor], pays: Optional[Dict[str, bool]] = None):
        super().__init__()
        self.onednn_copies = onednn_copies  # id(weight) -> its oneDNN copy
        self.pays = pays if pays is not None else {trick: True for trick in TRICKS}  # tricks_that_pay()

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
    pays = tricks_that_pay()
    large = ([w for w in weights if w.numel() >= ONEDNN_WEIGHT and w.dtype == torch.float32]  # fp32: any x86 CPU
             if onednn_available() and pays["onednn"] else [])
    block_weights, onednn_weights = {id(w) for w in linear_weights(lm.decoder)}, {id(w) for w in large}
    in_out = [w for w in weights if id(w) in block_weights and id(w) not in onednn_weights] \
        if rows == 1 and pays["in_out"] else []
    originals = []
    try:
        with torch.no_grad():
            onednn_copies = {id(w): _copy(w, "onednn", Tensor.to_mkldnn) for w in large}
            for weight in in_out:
                originals.append((weight, weight.data))
                weight.data = _copy(weight, "in_out", lambda w: w.t().contiguous()).t()
        if (large or pays["few_rows"] or pays["doubled_row"]) and any(w.numel() >= FEW_ROWS_WEIGHT for w in weights):
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
