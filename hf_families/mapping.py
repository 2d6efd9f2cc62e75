"""A pretrained family is a mapping table between transformers' tensor names and our LM's.

One `Rule` per tensor of ours (block rules written with "{i}", expanded for every block):

    Rule("decoder.layers.{i}.self_attn.in_proj_weight",                  # ours
         ("model.layers.{i}.self_attn.q_proj.weight", "...k_proj.weight", "...v_proj.weight"),  # theirs
         to_ours=concat, to_theirs=split_rows(q_rows, kv_rows, kv_rows))  # how each direction is computed

Special rules:
- `theirs=()`: the family has no such tensor, ours is zeros (e.g. Qwen2's o_proj has no bias while the
  rest of the model has biases, and our `bias` flag is all or nothing): exact, since zero adds nothing.
- `ours=None`: we have no such tensor, theirs is zeros (e.g. a model trained with bias=False
  exported to GPT-2, which always has biases).
- `tied=True`: their tensor is a second name of a tensor another rule already mapped (a tied
  lm_head); it must be equal, and nothing new is stored.

`to_our_weights` (loading) and `to_their_weights` (exporting) use every tensor exactly once:
a tensor no rule uses, or one a rule needs and the other side lacks, is an error, never a
silently random or dropped weight.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


def same(t: Tensor) -> Tensor:
    return t


def transpose(t: Tensor) -> Tensor:
    """transformers' Conv1D stores [in, out]; nn.Linear stores [out, in]."""
    return t.t()


def concat(*tensors: Tensor) -> Tensor:
    """Separate q, k, v projections -> our stacked in_proj (rows q, then k, then v)."""
    return torch.cat(tensors, dim=0)


def split_rows(*sizes: int) -> Callable[[Tensor], Tuple[Tensor, ...]]:
    """The inverse of `concat`: our stacked in_proj -> q, k, v (for exporting)."""
    return lambda t: tuple(t.split(list(sizes), dim=0))


@dataclass(frozen=True)
class Rule:
    ours: Optional[str]  # our LM's state-dict name; None: we have none, theirs is zeros
    theirs: Tuple[str, ...]  # their state-dict names; (): they have none, ours is zeros
    to_ours: Callable[..., Tensor] = same  # their tensors (in `theirs` order) -> ours
    to_theirs: Optional[Callable[[Tensor], object]] = None  # ours -> theirs (a tensor, or a tuple for several); None: to_ours is its own inverse
    tied: bool = False  # their tensor repeats a tensor already mapped (tied lm_head): check, do not store

    def at(self, i: int) -> "Rule":
        return Rule(self.ours.format(i=i) if self.ours else None, tuple(n.format(i=i) for n in self.theirs),
                    self.to_ours, self.to_theirs, self.tied)


def expand(rules: Iterable[Rule], block_rules: Iterable[Rule], n_layers: int) -> List[Rule]:
    """The full table: `rules` as they are, then `block_rules` once per block i."""
    block_rules = list(block_rules)
    return list(rules) + [rule.at(i) for i in range(n_layers) for rule in block_rules]


def to_our_weights(their_state: Dict[str, Tensor], rules: Sequence[Rule], our_shapes: Dict[str, torch.Size],
                   family: str = "checkpoint") -> Dict[str, Tensor]:
    """Their state dict -> our LM's state dict by `rules`, float32 (the caller casts). Every tensor of
    theirs must be used by a rule and every rule must find its tensors."""
    left = dict(their_state)
    ours: Dict[str, Tensor] = {}
    missing: List[str] = []
    for rule in rules:
        if rule.ours is None:  # a tensor of theirs we do not have: it must be zero
            for name in rule.theirs:
                if name in left and left.pop(name).count_nonzero():
                    raise ValueError(f"{family} tensor {name!r} is not zero, but our model has no place for it")
            continue
        absent = [name for name in rule.theirs if name not in left]
        if absent:
            if not rule.tied:  # a tied head's second name carries nothing new: it may be absent
                missing += absent
            continue
        if not rule.theirs:
            ours[rule.ours] = torch.zeros(our_shapes[rule.ours])
            continue
        tensor = rule.to_ours(*(left.pop(name).detach() for name in rule.theirs)).float().contiguous()
        if rule.tied:
            if not torch.equal(tensor, ours[rule.ours]):
                raise ValueError(f"{family} tensor {rule.theirs[0]!r} differs from the tensor it is tied to "
                                 f"({rule.ours} in our names), but the config says they are tied")
            continue
        ours[rule.ours] = tensor
    if missing:
        raise KeyError(f"{family} state dict lacks tensors the mapping needs: {missing}")
    if left:
        raise ValueError(f"{family} tensors with no place in our LM (unknown layout?): {sorted(left)}")
    return ours


def to_their_weights(our_state: Dict[str, Tensor], rules: Sequence[Rule], their_shapes: Dict[str, torch.Size],
                     family: str) -> Dict[str, Tensor]:
    """Our LM's state dict -> theirs by `rules` (the inverse of to_our_weights); every tensor of ours must
    be used, every tensor of theirs filled."""
    left = dict(our_state)
    theirs: Dict[str, Tensor] = {}
    for rule in rules:
        if rule.ours is None:
            theirs.update({name: torch.zeros(their_shapes[name]) for name in rule.theirs})
            continue
        if rule.ours not in our_state:
            raise KeyError(f"our LM has no {rule.ours!r}, which {family} needs")
        tensor = our_state[rule.ours].detach()
        left.pop(rule.ours, None)
        if not rule.theirs:
            if tensor.count_nonzero():
                raise ValueError(f"{rule.ours} is not zero, but {family} has no such tensor")
            continue
        if rule.tied:
            theirs[rule.theirs[0]] = tensor
            continue
        out = (rule.to_theirs or rule.to_ours)(tensor)
        for name, t in zip(rule.theirs, out if isinstance(out, tuple) else (out,)):
            theirs[name] = t.contiguous()
    used = {our_state[r.ours].data_ptr() for r in rules if r.ours in our_state}
    left = [name for name, t in left.items() if t.data_ptr() not in used]  # a tied out_proj is embedding itself
    unfilled = sorted(set(their_shapes) - set(theirs))
    if left or unfilled:
        raise ValueError(f"our LM does not fit {family}'s layout:"
                         + (f"\n  our tensors with no place there: {sorted(left)}" if left else "")
                         + (f"\n  their tensors left unfilled: {unfilled}" if unfilled else ""))
    return theirs


def load_converted_weights(lm: nn.Module, weights: Dict[str, Tensor], family: str = "checkpoint") -> None:
    """Copy `weights` into `lm` (cast to its dtype), checking that every name and shape fits and that every
    LM parameter and persistent buffer gets a value (tied aliases of a filled tensor count as filled)."""
    target = lm.state_dict()
    unexpected = sorted(set(weights) - set(target))
    wrong_shape = [f"{k}: {family} {tuple(weights[k].shape)} vs LM {tuple(target[k].shape)}"
                   for k in weights if k in target and weights[k].shape != target[k].shape]
    filled = {target[k].data_ptr() for k in weights if k in target}
    missing = sorted(k for k in set(target) - set(weights) if target[k].data_ptr() not in filled)
    if unexpected or wrong_shape or missing:
        raise ValueError(f"{family} weights do not fit the LM built from its config:"
                         + (f"\n  names the LM lacks: {unexpected}" if unexpected else "")
                         + (f"\n  shape mismatches: {wrong_shape}" if wrong_shape else "")
                         + (f"\n  LM tensors left unfilled: {missing}" if missing else ""))
    lm.load_state_dict(weights, strict=False)
