"""`with evaluating(lm):` eval mode and no gradients for the block, then the module's previous mode."""
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)
