"""Hook points: read or replace any activation of an LM without editing its code.

A `HookPoint` is an identity module placed on one named intermediate of the forward pass. With
nothing attached it only returns its input (a plain module call, no copy), so plain forwards and
training do not slow down. Hooks attach for one call, or for a `with lm.hooks(...)` block:

    logits, cache = lm.run_with_cache("the company said")          # every hook point, detached
    logits = lm.run_with_hooks(x, {"blocks.0.attn.hook_z": fn})     # fn(tensor, name) -> tensor or None
    with lm.hooks([("blocks.1.hook_resid_post", fn)]):              # any call: lm(x), perplexities, ...
        lm.perplexities(texts)

Names and shapes (TransformerLens's names; batch, seq = new positions; keys = positions attended to):
  hook_embed                   [batch, seq, dim]   token embeddings
  hook_pos_embed               [batch, seq, dim]   learned position embeddings (other schemes: absent)
  blocks.{i}.hook_resid_pre    [batch, seq, dim]   block i's input (block 0: embeddings, after dropout)
  blocks.{i}.ln1.hook_normalized  [batch, seq, dim]  norm1's output
  blocks.{i}.attn.hook_q / hook_k / hook_v  [batch, seq, heads, head_dim]  queries, keys, values, after
                               qk_norm and rope; k and v have n_kv_heads heads (grouped-query attention)
  blocks.{i}.attn.hook_attn_scores  [batch, heads, seq, keys]  scaled scores, masked (-inf), before softmax
  blocks.{i}.attn.hook_pattern [batch, heads, seq, keys]  attention probabilities (before dropout)
  blocks.{i}.attn.hook_z       [batch, seq, heads, head_dim]  each head's output, before out_proj
  blocks.{i}.hook_attn_out     [batch, seq, dim]   the attention sublayer's output (after dropout)
  blocks.{i}.hook_resid_mid    [batch, seq, dim]   resid_pre + attn_out
  blocks.{i}.ln2.hook_normalized  [batch, seq, dim]  norm2's output
  blocks.{i}.mlp.hook_pre      [batch, seq, dim_ff]  linear1's output, before the activation (gated: gate's)
  blocks.{i}.mlp.hook_pre_linear  [batch, seq, dim_ff]  gated activations only: linear1's (the up projection)
  blocks.{i}.mlp.hook_post     [batch, seq, dim_ff]  after the activation (gated: act(gate) * up)
  blocks.{i}.hook_mlp_out      [batch, seq, dim]   the feed-forward sublayer's output (after dropout)
  blocks.{i}.hook_resid_post   [batch, seq, dim]   block i's output (= get_embeddings entry i + 1)
  ln_final.hook_normalized     [batch, seq, dim]   decoder.final_norm's output (when final_norm)
Post-LN blocks (norm_first=False): the norms' outputs are the residual stream, so ln1.hook_normalized
and hook_resid_mid hold the same tensor (norm1's output), as do ln2.hook_normalized and
hook_resid_post (norm2's); the ln hook fires first, the resid hook sees its result. Parallel blocks
(parallel_block=True) add attention and feed-forward to the same input: they have no hook_resid_mid.

Recurrent models (lstm, gru, rnn: model/recurrent.py) have hook_embed, blocks.{i}.hook_resid_post
(layer i's output, before its dropout: get_embeddings entry i + 1) and ln_final.hook_normalized. A
replaced output feeds the next layer; the state a layer carries to the next decoding step is its own.

With a key/value cache (sampling) each call covers the new positions only: q, k, v, z and the
residual-stream tensors have seq = the new tokens (1 per step after the prompt); scores and pattern
are [batch, heads, new, all keys so far]. k and v are hooked before they enter the cache, so a
replaced key or value stays in the cache for the later steps.

Hooks never change what computes: a model runs the same code with or without them. The
"torch-transformer" reference path runs PyTorch's fused layer, which has no intermediates to hook:
attaching a hook there is refused with an error naming the field to change (its hook_names() lists
the hook points outside the blocks only).
"""
import difflib
import re
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from model.eval_mode import evaluating
from model.hook_point import HookPoint

HookFn = Callable[[Tensor, str], Optional[Tensor]]
Hooks = Union[Dict[str, HookFn], Sequence[Tuple[str, HookFn]]]
NameFilter = Union[None, Sequence[str], Callable[[str], bool]]

BLOCK_PATH = re.compile(r"^decoder\.layers\.(\d+)\.")


def hook_points(lm: nn.Module) -> Dict[str, HookPoint]:
    """Full name -> HookPoint, for every hook point in lm (a HookPoint inside lm.decoder.layers[j],
    the i-th transformer block, is named "blocks.{i}." + its own name)."""
    block_index, i = {}, 0
    for j, layer in enumerate(lm.decoder.layers):
        if is_block(layer):
            block_index[j], i = i, i + 1
    points: Dict[str, HookPoint] = {}
    for path, module in lm.named_modules():
        if not isinstance(module, HookPoint):
            continue
        in_layer = BLOCK_PATH.match(path)
        name = module.name
        if in_layer and int(in_layer.group(1)) in block_index:
            name = f"blocks.{block_index[int(in_layer.group(1))]}.{name}"
        if name in points:
            raise ValueError(f"two hook points are named {name!r} (modules {path} and another): give each "
                             "HookPoint a name of its own")
        points[name] = module
    return points


def hook_names(lm: nn.Module) -> List[str]:
    """Every hook point's name, in the order a forward pass reaches them (found by running one token)."""
    if any(isinstance(layer, nn.TransformerEncoderLayer) for layer in lm.decoder.layers):
        return all_names(lm)  # the reference path: only the hook points outside its blocks (see check_hookable)
    fired: List[str] = []
    with hooks_attached(lm, [(name, lambda t, name: fired.append(name)) for name in all_names(lm)]):
        with evaluating(lm), torch.random.fork_rng(devices=[]):
            lm(torch.tensor([[lm.tokenizer.bos_id]], device=lm.device))
    never = [name for name in all_names(lm) if name not in fired]
    return list(dict.fromkeys(fired)) + never


def all_names(lm: nn.Module) -> List[str]:
    """Names of every hook point of lm."""
    return list(hook_points(lm))


def is_block(layer: nn.Module) -> bool:
    """A transformer block of lm.decoder.layers (ours, or PyTorch's reference layer), not a plain module
    inserted between blocks (e.g. an nn.ReLU())."""
    return isinstance(layer, nn.TransformerEncoderLayer) or any(isinstance(m, HookPoint) for m in layer.modules())


def check_hookable(lm: nn.Module) -> None:
    """ValueError when lm runs PyTorch's own layer, whose intermediates cannot be hooked."""
    if any(isinstance(layer, nn.TransformerEncoderLayer) for layer in lm.decoder.layers):
        raise ValueError("hooks need the editable layer: this model runs layer_architecture='torch-transformer' "
                         "(PyTorch's fused nn.TransformerEncoderLayer, which exposes no intermediates). Build it with "
                         "layer_architecture='custom-transformer' (the default), or convert it with "
                         "lm.with_layer_architecture('custom-transformer'): same weights, same outputs")


def as_hook_list(hooks: Hooks) -> List[Tuple[str, HookFn]]:
    """A dict or a list of (name, fn) pairs -> list of pairs, checked."""
    pairs = list(hooks.items()) if isinstance(hooks, dict) else hooks
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, (list, tuple)):
        raise TypeError(f"hooks must be a dict name -> fn or a list of (name, fn) pairs, got {type(hooks).__name__}")
    out = []
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise TypeError(f"each hook must be a (name, fn) pair, got {pair!r}")
        if not callable(pair[1]):
            raise TypeError(f"the hook for {pair[0]!r} is not callable: give fn(tensor, name) returning a "
                            "tensor of the same shape or None")
        out.append((pair[0], pair[1]))
    return out


def unknown_name_error(name: str, known: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return ValueError(f"no hook point named {name!r}{hint} (lm.hook_names() lists all {len(known)})")


@contextmanager
def hooks_attached(lm: nn.Module, hooks: Optional[Hooks]) -> Iterator[None]:
    """Attach `hooks` for the duration of the block; they are removed on the way out, also when a hook
    (or anything else in the block) raises. fn(tensor, name) returns a replacement of the same shape or
    None (keep the tensor). Several hooks on one name run in the given order, each on the previous
    one's result. None or an empty collection attaches nothing."""
    pairs = as_hook_list(hooks) if hooks is not None else []
    if not pairs:
        yield
        return
    check_hookable(lm)
    with uncompiled(lm):
        points = hook_points(lm)
        for name, _ in pairs:
            if name not in points:
                raise unknown_name_error(name, list(points))
        handles = []
        try:
            for name, fn in pairs:
                handles.append(points[name].register_forward_hook(torch_hook(name, fn)))
            yield
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def uncompiled(lm: nn.Module) -> Iterator[None]:
    """Run a model compiled with lm.compile() uncompiled within the block: the compiled code does not
    check for hooks added after it was made (torch._dynamo skips those guards), so they would be ignored.
    (A torch.compile(lm) wrapper cannot be reached from here: call lm itself while hooks are attached.)"""
    compiled = getattr(lm, "_compiled_call_impl", None)
    lm._compiled_call_impl = None
    try:
        yield
    finally:
        lm._compiled_call_impl = compiled


def torch_hook(name: str, fn: HookFn) -> Callable[[nn.Module, tuple, Tensor], Optional[Tensor]]:
    """fn(tensor, name) as a PyTorch forward hook, checking that a replacement keeps the shape."""

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Optional[Tensor]:
        new = fn(output, name)
        if new is not None and (not isinstance(new, Tensor) or new.shape != output.shape):
            got = f"shape {tuple(new.shape)}" if isinstance(new, Tensor) else type(new).__name__
            raise ValueError(f"the hook on {name!r} returned {got}, but the hook point holds shape "
                             f"{tuple(output.shape)}: return a tensor of that shape, or None to keep it")
        return new

    return hook


def selected_names(lm: nn.Module, names: NameFilter) -> List[str]:
    """names None -> all hook points; a list -> those (checked); a callable -> those it accepts."""
    known = all_names(lm)
    if names is None:
        return known
    if callable(names):
        return [name for name in known if names(name)]
    if isinstance(names, str):
        names = [names]
    for name in names:
        if name not in known:
            raise unknown_name_error(name, known)
    return list(names)


def run_with_cache(lm: nn.Module, x, names: NameFilter = None) -> Tuple[Tensor, Dict[str, Tensor]]:
    """(logits as lm(x), {name: detached tensor}) for the chosen hook points, in forward order."""
    cache: Dict[str, Tensor] = {}

    def store(tensor: Tensor, name: str) -> None:
        cache[name] = tensor.detach()

    with hooks_attached(lm, [(name, store) for name in selected_names(lm, names)]):
        logits = lm(x)
    return logits, cache


def run_with_hooks(lm: nn.Module, x, hooks: Hooks) -> Tensor:
    """lm(x) with `hooks` attached (removed afterwards, also on an exception); returns the logits."""
    with hooks_attached(lm, hooks):
        return lm(x)
