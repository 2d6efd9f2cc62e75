"""The decoder: a stack of transformer blocks (lm.decoder), plus an optional final norm.

`ModelParams.layer_architecture` picks the block:
  "custom-transformer" (the default) -> TransformerBlock (transformerencoderlayer.py): ours, the one to edit;
  "torch-transformer"  -> TorchTransformerEncoderLayer (torch_layer.py): PyTorch's own layer with the same
                          weights, the reference to compare an idea against (edits of ours do not act there).
`self.layers` may also hold plain modules between the blocks (e.g. an nn.ReLU()); they are
called with the hidden state alone.
"""
from typing import Any, List, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from model.decoding.kv_cache import KVCache
from model.hook_point import HookPoint
from model.model_params import ModelParams
from model.transformer.parts import make_norm
from model.transformer.torch_layer import TorchTransformerEncoderLayer
from model.transformer.transformerencoderlayer import TransformerBlock

LAYER_ARCHITECTURES = ("custom-transformer", "torch-transformer")
BLOCK_TYPES = (TransformerBlock, TorchTransformerEncoderLayer)


def is_block(layer: nn.Module) -> bool:
    """True for a transformer block, False for a plain module inserted between blocks."""
    return isinstance(layer, BLOCK_TYPES)


class Transformer(nn.Module):
    def __init__(self, model_params: ModelParams):
        super().__init__()
        self.model_params = model_params

        def make_layer() -> nn.Module:
            if self.model_params.layer_architecture == "custom-transformer":
                return TransformerBlock(self.model_params)
            if self.model_params.layer_architecture == "torch-transformer":
                return TorchTransformerEncoderLayer(self.model_params)
            raise ValueError(f"unknown layer_architecture {self.model_params.layer_architecture!r}: "
                             f"choose one of {', '.join(LAYER_ARCHITECTURES)}")

        self.layers = nn.ModuleList([make_layer() for _ in range(self.model_params.n_layers)])
        mp = self.model_params
        self.final_norm = make_norm(mp.dim, mp) if mp.final_norm else None
        self.hook_ln_final = HookPoint("ln_final.hook_normalized") if mp.final_norm else None  # model/hooks.py

    @property
    def n_blocks(self) -> int:
        """Transformer blocks in self.layers (plain inserted modules not counted)."""
        return sum(is_block(layer) for layer in self.layers)

    def new_cache(self, batch_size: int = 1, pad_left: Union[None, Tensor, Sequence[int]] = None) -> KVCache:
        """An empty key/value cache, one slot per block, the model's context long (see lm.new_kv_cache)."""
        return KVCache(self.n_blocks, self.model_params.max_seq_len, batch_size=batch_size, pad_left=pad_left)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, attn_requests: Any = None,
                kv_cache: Optional[KVCache] = None, get_embeddings: bool = False, get_attn: bool = False,
                ) -> Tuple[Tensor, Optional[List[Tensor]], Optional[List[Tensor]]]:
        """x [batch, seq, dim] (token + position embeddings) -> (hidden [batch, seq, dim] after the
        final norm, embeddings, attns). mask: the keys each query may not see, the same for every block
        (LM.forward makes it: hidden_keys in torch_f_multi_head_attention_forward.py).

        embeddings (when asked): n_blocks + 1 tensors [batch, seq, dim]: the input of each block
        (entry 0 is x itself), then the output of the last block before final_norm.
        attns (when asked): per block, [batch, heads, seq, keys].
        """
        embeddings: Optional[List[Tensor]] = [] if get_embeddings else None
        attns: Optional[List[Tensor]] = [] if get_attn else None
        block_index = 0
        for layer in self.layers:
            if not is_block(layer):  # a plain module inserted between blocks, e.g. nn.ReLU()
                x = layer(x)
                continue
            if embeddings is not None:
                embeddings.append(x)
            layer_cache = kv_cache[block_index] if kv_cache is not None else None
            x, weights = layer(x, mask=mask, attn_requests=attn_requests, kv_cache=layer_cache, need_weights=get_attn)
            if attns is not None:
                attns.append(weights)
            block_index += 1
        if embeddings is not None:
            embeddings.append(x)
        if self.final_norm is not None:
            x = self.hook_ln_final(self.final_norm(x))
        return x, embeddings, attns
