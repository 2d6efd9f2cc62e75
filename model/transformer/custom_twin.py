"""Custom-transformer twins of torch-transformer blocks: the same Parameter objects in our readable layer.

The two layer paths have the same parameter names and compute the same function, so a
TorchTransformerEncoderLayer can be swapped for a TransformerEncoderLayer that *shares* its
parameters (no copy: updates, gradients and devices stay those of the original). Hooks use this to
reach the intermediates that PyTorch's fused layer never exposes.
"""
import dataclasses
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from model.transformer.torch_layer import TorchTransformerEncoderLayer
from model.transformer.transformerencoderlayer import TransformerEncoderLayer

if TYPE_CHECKING:
    from model.lm import LM


def custom_twin(block: TorchTransformerEncoderLayer) -> TransformerEncoderLayer:
    """A custom-transformer block holding `block`'s own parameters (built on the meta device, then
    given block's Parameter objects), in block's train/eval mode."""
    params = dataclasses.replace(block.model_params, layer_architecture="custom-transformer")
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        twin = TransformerEncoderLayer(params)
    for name, parameter in block.named_parameters():
        owner, _, attr = name.rpartition(".")
        setattr(twin.get_submodule(owner), attr, parameter)
    left = [name for name, t in [*twin.named_parameters(), *twin.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"the custom twin of a torch-transformer block has tensors the torch block lacks: "
                           f"{', '.join(left)}; build the model with layer_architecture='custom-transformer'")
    return twin.train(block.training)


@contextmanager
def custom_blocks(lm: "LM") -> Iterator[None]:
    """Within the block, lm.decoder.layers runs custom twins in place of torch-transformer blocks (the
    state_dict is unchanged: the same parameters under the same names); restored on exit. A model
    without torch blocks is left as it is."""
    layers = lm.decoder.layers
    if not any(isinstance(layer, TorchTransformerEncoderLayer) for layer in layers):
        yield
        return
    twins = nn.ModuleList(
        [custom_twin(layer) if isinstance(layer, TorchTransformerEncoderLayer) else layer for layer in layers])
    lm.decoder.layers = twins
    try:
        yield
    finally:
        lm.decoder.layers = layers
        layers.training = twins.training  # lm.train() / lm.eval() inside the block reached the twins only
        for layer, twin in zip(layers, twins):
            layer.train(twin.training)
