"""`linear(x, weight, bias)`: F.linear, computed faster while decoding on a CPU.

Decoding multiplies a few rows (one token per prompt or beam) by every weight at each step, so the
product reads the whole weight for a handful of rows. Two ways of computing it beat F.linear's
x @ weight.T on a CPU (2 threads; bench/bench_gpt2.py, numbers in bench/RESULTS.md):
- oneDNN's fp32 product on a oneDNN copy of a large weight, for one row or for MANY_ROWS rows and
  more. The copies exist only while decoding (model/decoding_weights.py makes them and registers them
  here, keyed by the weight). GPT-2 small's weights, streamed from memory: one row 1.3-1.5x faster
  than the best BLAS layout, 16 rows 1.4-2x (768x3072: 747 -> 432 us; the 50257x768 head: 16.5 -> 8.0 ms).
- weight @ x.T for 2 to FEW_ROWS rows of a large weight (BLAS reads the weight row by row): 768x3072,
  4 rows 396 -> 209 us; below MANY_ROWS rows it also beats oneDNN.
Both sum in another order than F.linear, so results may differ in the last float bits. Everything
else goes to F.linear as is: gradients on (training), other devices, small weights.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEW_ROWS = 64  # from 2 up to this many rows, weight @ x.T is faster than F.linear on a CPU
LARGE_WEIGHT = 1 << 18  # 262k values (1 MB): smaller weights stay in cache, where the order does not matter
MANY_ROWS = 8  # with a oneDNN copy: 1 row, or this many rows and more, go through oneDNN

ONEDNN_COPIES: Dict[int, Tensor] = {}  # id(weight) -> its oneDNN copy, while decoding (decoding_weights.py)


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """F.linear(x, weight, bias): x [..., in], weight [out, in] -> [..., out]."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if ONEDNN_COPIES and not 2 <= rows < MANY_ROWS:  # decoding on a CPU, and this weight may have a copy
        onednn_weight = ONEDNN_COPIES.get(id(weight))
        if onednn_weight is not None and not torch.is_grad_enabled():  # as torch.utils.mkldnn's MkldnnLinear
            return torch._C._nn.mkldnn_linear(x.to_mkldnn(), onednn_weight, bias).to_dense()
    if (not 2 <= rows <= FEW_ROWS or weight.numel() < LARGE_WEIGHT or x.device.type != "cpu"
            or torch.is_grad_enabled()):
        return F.linear(x, weight, bias)
    x_rows = x.reshape(rows, x.shape[-1]).t()  # a column-major view: BLAS' fast kernel for this product
    out = torch.mm(weight, x_rows) if bias is None else torch.addmm(bias.unsqueeze(1), weight, x_rows)
    return out.t().reshape(*x.shape[:-1], weight.shape[0])


def has_onednn_copy(weight: Tensor) -> bool:
    """True while decoding when `linear` multiplies `weight` through its oneDNN copy."""
    return id(weight) in ONEDNN_COPIES


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) whose product is `linear` above."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
