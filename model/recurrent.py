"""The recurrent decoder (lm.decoder when ModelParams.layer_architecture is "lstm", "gru" or "rnn").

A stack of n_layers single-layer torch RNNs (nn.LSTM, nn.GRU, nn.RNN with tanh), each `dim` wide,
in `self.layers` (one module per layer, batch_first, so that every layer's output exists for
get_embeddings and for edits between layers), with dropout after every layer (between layers and on
the output; the LM applies it to the input embeddings too, as Zaremba et al. 2014), then the
optional final norm (ModelParams.final_norm; off in the classic models, see configs/ptb-lstm.txt).

Sampling carries a RecurrentState (lm.new_kv_cache()) from step to step instead of a key/value cache:

    state = lm.new_kv_cache()
    logits = lm(prefix_ids, kv_cache=state)        # reads the prefix, keeps each layer's final state
    logits = lm([[next_id]], kv_cache=state)       # one step from there
"""
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.hook_point import HookPoint
from model.model_params import ModelParams
from model.decoding.kv_cache import check_pad_left
from model.transformer.parts import make_norm

RECURRENT_ARCHITECTURES = ("lstm", "gru", "rnn")
LayerState = Union[Tensor, Tuple[Tensor, Tensor]]  # h, or (h, c) for an LSTM; each [1, batch, dim]


def is_recurrent(model_params: ModelParams) -> bool:
    return model_params.layer_architecture in RECURRENT_ARCHITECTURES


def make_recurrent_layer(model_params: ModelParams) -> nn.RNNBase:
    """One single-layer torch RNN of ModelParams.dim units, reading and writing [batch, seq, dim]."""
    kind, dim = model_params.layer_architecture, model_params.dim
    if kind == "lstm":
        return nn.LSTM(dim, dim, batch_first=True, bias=model_params.bias)
    if kind == "gru":
        return nn.GRU(dim, dim, batch_first=True, bias=model_params.bias)
    if kind == "rnn":
        return nn.RNN(dim, dim, nonlinearity="tanh", batch_first=True, bias=model_params.bias)
    raise ValueError(f"unknown recurrent layer_architecture {kind!r}: choose one of {', '.join(RECURRENT_ARCHITECTURES)}")


class RecurrentState:
    """Each layer's hidden state (and LSTM cell state) after the positions read so far.

    length: positions processed (the same for every row). pad_left: None, or a LongTensor [batch] of
    left-padding counts: row r's first pad_left[r] positions are padding and leave its state untouched,
    so a left-padded batch of prompts gives each row the outputs of its prompt read alone."""

    def __init__(self, n_layers: int, max_len: int, batch_size: int = 1,
                 pad_left: Union[None, Tensor, Sequence[int]] = None):
        pad_left = check_pad_left(pad_left, batch_size, max_len)  # the same checks as the KVCache's
        self.layers: List[Optional[LayerState]] = [None] * n_layers  # None: zeros, nothing read yet
        self.batch_size = batch_size
        self.max_len = max_len
        self.pad_left = pad_left
        self.length = 0

    def __len__(self) -> int:
        return len(self.layers)

    def reorder(self, indices: Tensor) -> None:
        """Keep / repeat batch rows in place: row i becomes old row indices[i] (beam search)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        for i, state in enumerate(self.layers):
            if state is not None:
                self.layers[i] = map_state(state, lambda t: t.index_select(1, indices.to(t.device)))
        if self.pad_left is not None:
            self.pad_left = self.pad_left.index_select(0, indices.to(self.pad_left.device))
        self.batch_size = len(indices)

    def padding_in(self, seq: int, device: torch.device) -> Optional[Tensor]:
        """Padding positions per row among the next `seq` positions [batch], or None when there are none."""
        if self.pad_left is None:
            return None
        n_pad = (self.pad_left.to(device) - self.length).clamp(0, seq)
        return n_pad if bool(n_pad.any()) else None


def map_state(state: LayerState, fn: Any) -> LayerState:
    return tuple(fn(t) for t in state) if isinstance(state, tuple) else fn(state)


class RecurrentDecoder(nn.Module):
    def __init__(self, model_params: ModelParams):
        super().__init__()
        mp = self.model_params = model_params
        self.layers = nn.ModuleList([make_recurrent_layer(mp) for _ in range(mp.n_layers)])
        self.dropout = nn.Dropout(mp.dropout)  # after each layer: between layers and on the output
        self.final_norm = make_norm(mp.dim, mp) if mp.final_norm else None  # ModelParams.norm
        # hook points (model/hooks.py): each layer's output, the final norm's output
        self.hook_resid_post = nn.ModuleList([HookPoint(f"blocks.{i}.hook_resid_post") for i in range(mp.n_layers)])
        self.hook_ln_final = HookPoint("ln_final.hook_normalized") if mp.final_norm else None

    @property
    def n_blocks(self) -> int:
        """Recurrent layers in self.layers (plain modules inserted between them not counted)."""
        return sum(isinstance(layer, nn.RNNBase) for layer in self.layers)

    def new_cache(self, batch_size: int = 1, pad_left: Union[None, Tensor, Sequence[int]] = None) -> RecurrentState:
        """An empty state, zeros in every layer (see lm.new_kv_cache)."""
        return RecurrentState(self.n_blocks, self.model_params.max_seq_len, batch_size, pad_left)

    def forward(self, x: Tensor, mask: Any = None, attn_requests: Any = None, kv_cache: Optional[RecurrentState] = None,
                get_embeddings: bool = False, get_attn: bool = False,
                ) -> Tuple[Tensor, Optional[List[Tensor]], Optional[List[Tensor]]]:
        """x [batch, seq, dim] (token embeddings) -> (hidden [batch, seq, dim] after the final norm,
        embeddings, None).

        embeddings (when asked): n_layers + 1 tensors [batch, seq, dim]: x, then each layer's output
        (before its dropout; the last before final_norm). kv_cache: a RecurrentState to start from and
        update (sampling). mask and attn_requests are accepted and unused (no attention here: a recurrent
        layer reads left to right)."""
        if get_attn:
            raise ValueError(f"attention does not exist in recurrent models (layer_architecture="
                             f"{self.model_params.layer_architecture!r}): ask for get_embeddings instead, "
                             "or train a transformer (layer_architecture='custom-transformer') to look at attention")
        n_pad = kv_cache.padding_in(x.shape[1], x.device) if kv_cache is not None else None
        embeddings: Optional[List[Tensor]] = [x] if get_embeddings else None
        block_index = 0
        for layer in self.layers:
            if not isinstance(layer, nn.RNNBase):  # a plain module inserted between layers, e.g. nn.ReLU()
                x = layer(x)
                continue
            state = kv_cache.layers[block_index] if kv_cache is not None else None
            out, state = run_layer(layer, x, state, n_pad)
            out = self.hook_resid_post[block_index](out)
            if kv_cache is not None:
                kv_cache.layers[block_index] = state
            if embeddings is not None:
                embeddings.append(out)
            x = self.dropout(out)
            block_index += 1
        if kv_cache is not None:
            kv_cache.length += x.shape[1]
        if self.final_norm is not None:
            x = self.hook_ln_final(self.final_norm(x))
        return x, embeddings, None


def run_layer(layer: nn.RNNBase, x: Tensor, state: Optional[LayerState],
              n_pad: Optional[Tensor] = None) -> Tuple[Tensor, LayerState]:
    """One recurrent layer over x [batch, seq, dim] from `state` (None: zeros).

    n_pad [batch] (or None): row r's first n_pad[r] positions are left padding. The layer then reads
    only each row's real positions (a packed sequence of the rows shifted left), so padding changes
    no state; outputs at padding positions are zeros."""
    if n_pad is None:
        return layer(x, state)
    batch, seq, _ = x.shape
    if state is None:
        zeros = x.new_zeros(1, batch, layer.hidden_size)
        state = (zeros, zeros.clone()) if isinstance(layer, nn.LSTM) else zeros
    positions = torch.arange(seq, device=x.device)
    shift_left = ((positions + n_pad[:, None]) % seq)[:, :, None].expand_as(x)
    n_real = seq - n_pad
    packed = pack_padded_sequence(x.gather(1, shift_left), n_real.clamp(min=1).cpu(), batch_first=True,
                                  enforce_sorted=False)
    out, new_state = layer(packed, state)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=seq)
    shift_back = ((positions - n_pad[:, None]) % seq)[:, :, None].expand_as(out)
    out = out.gather(1, shift_back).masked_fill((positions < n_pad[:, None])[:, :, None], 0.0)
    read = (n_real > 0)[None, :, None]  # rows whose positions here are all padding keep their state
    if isinstance(new_state, tuple):
        return out, tuple(torch.where(read, new, old) for new, old in zip(new_state, state))
    return out, torch.where(read, new_state, state)
