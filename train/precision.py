"""TrainParams.precision: what "auto" means on this machine, and the Lightning plugin that trains with it.

"auto" (the default) is bfloat16 mixed precision where the device multiplies bfloat16 natively, float32
elsewhere. Mixed precision keeps the weights, their gradients and AdamW's moments in float32 and runs
the matrix products (and PyTorch's other autocast ops) in bfloat16: on a CPU with AVX512-BF16 a small
model's training step is 1.5-1.7x faster (torch path; 1.9-2x on the custom path) and learns as much
(bench/bench_precision.py, bench/bench_vs_base.py; bench/RESULTS.md, issue 15's third session).
Validation, the final losses a run reports and everything model_explorer measures stay in float32.
"""
from contextlib import contextmanager
from typing import Any, Generator, Optional, Union

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch.optim import Optimizer


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 in hardware: a CUDA GPU with bf16 support (Ampere and newer),
    or a CPU with AVX512-BF16 or AMX (elsewhere a CPU converts every bfloat16 value, and is slower)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """TrainParams.precision with "auto" replaced by what it means on `device`: "bf16-mixed" or "32"."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if native_bf16(device) else "32"


def describe_precision(precision: str, resolved: str) -> str:
    """For the run's header: the precision used, and why when "auto" chose it."""
    if precision != "auto":
        return resolved
    why = ("the device multiplies bfloat16 natively" if resolved == "bf16-mixed"
           else "no native bfloat16 products on this device")
    other = '"32"' if resolved == "bf16-mixed" else '"bf16-mixed"'
    return f"{resolved} (precision=\"auto\": {why}; --set 'precision={other}' to change)"


class BF16Mixed(MixedPrecision):
    """Lightning's bf16-mixed with two changes:
    - validation and test run in float32, like the final losses and model_explorer, so that every loss a
      run reports can be compared with a float32 run's and recomputed from the saved weights;
    - the fused AdamW's gradients can be clipped. Lightning refuses that in every mixed precision because
      float16's gradient scaler would unscale them inside the fused step; bfloat16 needs no scaler, so the
      gradients are final when they are clipped. The fused step is about 1 ms (4%) faster per
      small-model step than the unfused one."""

    def __init__(self, device: str):
        super().__init__(precision="bf16-mixed", device=device)

    def clip_gradients(self, optimizer: Optimizer, clip_val: Union[int, float] = 0.0,
                       gradient_clip_algorithm: GradClipAlgorithmType = GradClipAlgorithmType.NORM) -> None:
        Precision.clip_gradients(self, optimizer, clip_val=clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    @contextmanager
    def val_step_context(self) -> Generator[None, None, None]:
        yield  # no autocast: float32

    test_step_context = predict_step_context = val_step_context


def precision_plugin(resolved: str, device: torch.device) -> Optional[Any]:
    """The precision plugin for lightning.Trainer(plugins=...), or None to pass `resolved` as its precision."""
    return BF16Mixed("cuda" if device.type == "cuda" else "cpu") if resolved == "bf16-mixed" else None
