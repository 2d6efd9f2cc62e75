"""Block weights laid out for matrix-vector products while decoding on a CPU.

nn.Linear stores its weight [out, in], row after row. A decoding step multiplies one row (a few rows)
by each weight, and a CPU BLAS reads the weight 1.2-1.6x faster when its memory is ordered [in, out]
(transformers' GPT-2 keeps its Conv1D weights that way; measured in bench/bench_gpt2.py: about a fifth of
a GPT-2-small step). `with matvec_layout(lm):` points every linear weight of the blocks at an
[in, out]-ordered copy for the duration (`copy.t()`: the same values and shape, other strides) and
back afterwards, so the layer code runs unchanged.

Small weights gain too, from BLAS' call path rather than from memory: the shakespeare-char shape's
(128 x 384 and smaller) decode about 7% faster per token (bench/bench_gpt2.py --small).

The copies stay on the LM for the next call and are remade when a weight changed: a new tensor,
its version counter (in-place edits, optimizer steps, load_state_dict) or its sum (edits through
`.data`, which the version counter does not see). They cost memory (GPT-2 small: 340 MB): none are
made when the weights add up to more than MAX_COPIED values.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List, Tuple

import torch
from torch import Tensor, nn

MAX_COPIED = 1 << 28  # 1G values (GPT-2 small's blocks: 85M): beyond this, decode with the weights as they are


def linear_weights(module: nn.Module) -> List[nn.Parameter]:
    """The weights multiplied as F.linear(x, weight) in module's blocks (nn.Linear, in_proj_weight)."""
    weights = []
    for sub in module.modules():
        weight = sub.weight if isinstance(sub, nn.Linear) else getattr(sub, "in_proj_weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() == 2:
            weights.append(weight)
    return weights


@contextmanager
def matvec_layout(lm: nn.Module, rows: int = 1) -> Iterator[None]:
    """Within the block, lm.decoder's linear weights are [in, out]-ordered copies (CPU only), when
    decoding one row at a time (`rows`: the batch). For several rows (beams, batched prompts) the blocks'
    products run as weight @ x.T (model/decoding_linear.py), which wants the weights as they are."""
    weights = linear_weights(lm.decoder) if rows == 1 else []
    if not weights or weights[0].device.type != "cpu" or sum(w.numel() for w in weights) > MAX_COPIED:
        yield
        return
    copies: Dict[int, Tuple[Tuple[int, int], Tensor, Tensor]] = lm.__dict__.setdefault("_matvec_copies", {})
    originals = []
    try:
        with torch.no_grad():
            for weight in weights:
                stamp, total = (weight.data_ptr(), weight._version), weight.sum()
                entry = copies.get(id(weight))
                if entry is None or entry[0] != stamp or not torch.equal(entry[1], total):
                    entry = copies[id(weight)] = (stamp, total, weight.t().contiguous())
                originals.append((weight, weight.data))
                weight.data = entry[2].t()
        yield
    finally:
        for weight, data in originals:
            weight.data = data
