"""HookPoint: an identity module on one named intermediate of the forward pass (model/hooks.py attaches
functions to it: read or replace the activation without editing the code)."""
import torch
import torch.nn.modules.module as _module_hooks  # the global hooks (register_module_forward_hook)
from torch import Tensor, nn


class HookPoint(nn.Module):
    """Identity: returns its input. `name` is its TransformerLens name, relative to its block when it
    lives in one (e.g. "attn.hook_q"; the LM gives it the prefix "blocks.{i}."), else the full name."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return x

    def __call__(self, x: Tensor) -> Tensor:
        # nothing attached (the usual case): the input as it is, without nn.Module's call machinery,
        # which costs about 1 us a call (a decoding step of a small custom-path model calls 50 of these)
        if self._forward_hooks or self._forward_pre_hooks or _module_hooks._global_forward_hooks or \
                _module_hooks._global_forward_pre_hooks or torch.compiler.is_compiling():
            return super().__call__(x)
        return x

    def extra_repr(self) -> str:
        return repr(self.name)
