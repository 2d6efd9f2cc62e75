"""LM: a transformer (or recurrent) language model, the object you train, sample from and inspect.

    lm = LM(model_params, tokenizer)
    logits = lm("some text")                               # [1, seq, vocab]
    out = lm(x, get_embeddings=True, get_attn=True)        # {"logits", "embeddings", "attns"}
    lm.sample(pref="The", max_seq_len=50, temperature=0.8)
    mean_ppl, max_ppl, min_ppl, n_tokens, per_token = lm.perplexities(["a text", "another"])
    lm.fill_mask("the <mask> sat")                        # objective "masked"
    lm.infill("def f(", "):\n    return x")              # objective "fim"

model_params.objective (model/objectives.py) decides how it reads and learns: "causal" and "fim" read
causally, "prefix" both ways over a prefix (lm(x, prefix_len=k)), "masked" both ways everywhere.

Names that edits rely on: `lm.decoder` (the Transformer, or for layer_architecture "lstm", "gru" or
"rnn" the RecurrentDecoder of model/recurrent.py; `lm.decoder.layers` are its blocks / recurrent layers),
`lm.n_tokens` (vocabulary size), `lm.tokenizer`, `lm.model_params`.
Parameters: embedding.weight, pos_embedding.weight (learned positions only), decoder.layers.{i}.*
(as nn.TransformerEncoderLayer; plus `gate` for swiglu / geglu and self_attn.q_norm / k_norm with
qk_norm; self_attn.in_proj_weight is [(n_heads + 2 * n_kv_heads) * head_dim, dim]; recurrent models:
nn.LSTM/GRU/RNN's weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0), decoder.final_norm.*,
out_proj.weight (tied to embedding.weight when tie_embeddings); with the BERT options embedding_norm.*,
head_transform.{dense,norm}.* and out_proj.bias. Token embeddings are not scaled by sqrt(dim) (GPT-2 convention).
"""
import dataclasses
import math
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.tokenizer import OBJECTIVE_TOKENS, Tokenizer
from model.decoding.beam_search import beam_search
from model.decoding.kv_cache import KVCache
from model.decoding.masked import fill_mask
from model.decoding.perplexity import perplexities
from model.decoding.sample_text import check_sample_mode, resolve_stop_at_eos
from model.decoding.sampling import sample
from model.hook_point import HookPoint
from model.hooks import Hooks, NameFilter, hook_names, hooks_attached, run_with_cache, run_with_hooks
from model.model_checks import check_model_params
from model.model_params import ModelParams
from model.objectives import fim_prompt, fim_rearranged, masked_inputs, prefix_lengths
from model.recurrent import RECURRENT_ARCHITECTURES, RecurrentDecoder, RecurrentState, is_recurrent
from model.transformer.parts import HeadTransform, ff_width, make_dropout, make_norm, sinusoidal_positions
from model.transformer.torch_f_multi_head_attention_forward import SelfAttention, hidden_keys, token_positions
from model.transformer.transformer import Transformer

InputIds = Union[str, Sequence[int], Sequence[Sequence[int]], Tensor]
DecoderCache = Union[KVCache, RecurrentState]  # what lm.new_kv_cache() gives for this model's decoder


def check_objective_tokens(objective: str, tokenizer: Tokenizer) -> None:
    """The special tokens the objective needs are in the tokenizer (a ValueError saying how to get them)."""
    missing = {"masked": tokenizer.mask_id is None, "fim": tokenizer.fim_ids is None}.get(objective, False)
    if missing:
        raise ValueError(f"objective={objective!r} needs the tokenizer's {' '.join(OBJECTIVE_TOKENS[objective])}: "
                         f"train one with Tokenizer.train(..., extra_tokens=OBJECTIVE_TOKENS[{objective!r}]) "
                         f"(data.tokenizer; the training run does this by itself)")


class LM(nn.Module):
    def __init__(self, model_params: ModelParams, tokenizer: Tokenizer, sample_mode: Optional[str] = None):
        """sample_mode: "stream", "lines" or "synthetic", the layout of the training samples (None: not
        known); it decides how text samples show <eos> and whether sampling stops there (model/sample_text.py)."""
        super().__init__()
        check_model_params(model_params)
        check_objective_tokens(model_params.objective, tokenizer)
        mp = self.model_params = model_params
        self.tokenizer = tokenizer
        self.sample_mode: Optional[str] = check_sample_mode(sample_mode)
        self.n_tokens: int = tokenizer.vocab_size
        # Construction draws random numbers that differ between the two layer architectures; undo them,
        # so that init_weights draws the same weights for the same seed whichever architecture is used.
        with torch.random.fork_rng(devices=[]):
            self.embedding = nn.Embedding(self.n_tokens, mp.dim)
            # recurrent models know the order of their inputs: they get no position embedding
            positions = None if is_recurrent(mp) else mp.positional_encoding
            self.pos_embedding = nn.Embedding(mp.max_seq_len, mp.dim) if positions == "learned" else None
            self.hook_embed = HookPoint("hook_embed")  # identity modules marking activations (model/hooks.py)
            self.hook_pos_embed = HookPoint("hook_pos_embed") if self.pos_embedding is not None else None
            if positions == "sinusoidal":
                self.register_buffer("pos_encoding", sinusoidal_positions(mp.max_seq_len, mp.dim), persistent=False)
            else:
                self.pos_encoding = None
            self.embedding_norm = make_norm(mp.dim, mp) if mp.embedding_norm else None  # BERT's embeddings.LayerNorm
            self.dropout = make_dropout(mp.dropout)  # on the input embeddings
            self.decoder = RecurrentDecoder(mp) if is_recurrent(mp) else Transformer(mp)
            self.head_transform = HeadTransform(mp) if mp.head_transform else None  # BERT's MLM head transform
            # the unembedding, [n_tokens, dim] (+ a bias [n_tokens] with output_bias)
            self.out_proj = nn.Linear(mp.dim, self.n_tokens, bias=mp.output_bias)
        if mp.tie_embeddings:
            self.out_proj.weight = self.embedding.weight
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) for embeddings and linear weights, with the residual
        projections (attention out_proj, linear2) scaled by 1/sqrt(2 * n_layers); zero biases;
        norm gains 1. Applies to these module types wherever they are (your added nn.Linear too);
        recurrent layers (nn.LSTM, nn.GRU, nn.RNN) redraw torch's default, U(-1/sqrt(dim), 1/sqrt(dim));
        parameters of other modules keep their own init."""
        residual_std = 0.02 / math.sqrt(2 * self.model_params.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (SelfAttention, nn.MultiheadAttention)):
                nn.init.normal_(module.in_proj_weight, 0.0, 0.02)
                if module.in_proj_bias is not None:
                    nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, nn.RNNBase):
                module.reset_parameters()
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif module is self.out_proj and self.model_params.tie_embeddings:  # its weight is the embedding's
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                is_residual = name.endswith(("self_attn.out_proj", "linear2"))
                nn.init.normal_(module.weight, 0.0, residual_std if is_residual else 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ---- forward ----------------------------------------------------------------------
    def forward(self, x: InputIds, get_embeddings: bool = False, get_attn: bool = False,
                kv_cache: Optional[DecoderCache] = None, logits_to_keep: int = 0,
                prefix_len: Union[None, int, Sequence[int], Tensor] = None,
                attention_mask: Optional[Tensor] = None, logits_at: Optional[Tensor] = None,
                ) -> Union[Tensor, Dict[str, Tensor]]:
        """Logits [batch, seq, vocab] for x: a string, a list of ids, a 1-D tensor (float tensors of
        whole numbers too, as torch.Tensor(ids) gives) or a [batch, seq] tensor (right-padded batches
        of a causal read need no mask: causal attention never lets a real token see the padding after it).

        get_embeddings / get_attn: return a dict with "logits" and
          "embeddings" [batch, n_layers + 1, seq, dim]: entry 0 is the input embedding (tokens +
             positions), entry i the residual stream after block i (the last before final_norm);
             for recurrent models the token embedding, then each layer's output;
          "attns" [batch, n_layers, n_heads, seq, seq]: attention weights, query x key (transformers only).
        kv_cache: lm.new_kv_cache(), holding what the earlier tokens left (a transformer's keys/values,
          a recurrent model's state); x are the next tokens (sampling).
        logits_to_keep: N > 0 computes the logits of the last N positions only, [batch, N, vocab] (as
          transformers' argument: sampling reads a prompt and needs the next token's logits alone).
        prefix_len (objective "prefix"): the first prefix_len positions (bos included; an int, or one per
          row) attend both ways, the rest causally; None reads causally.
        attention_mask [batch, seq]: True / 1 on real tokens, False / 0 on padding that no query may see
          (transformers' convention); a masked model (attention both ways) needs it for padded batches.
        logits_at [batch] or [batch, n]: positions of each row whose logits alone are computed,
          [batch, n, vocab] (a masked model's pseudo-perplexity needs one masked position per row).
        """
        attn_requests = None  # per-batch information for the attention; set it after the input check below
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0 (0 keeps every position), got {logits_to_keep}")
        x = self.as_batch(x)
        # on a CPU the ids' range is checked only when the embedding refuses them (IndexError): reading it
        # first costs ~15 us, 5% of a small model's decoding step
        cond, msg = self.check_input(x, kv_cache, check_ids=x.device.type != "cpu")
        if not cond:
            raise ValueError(msg)
        # (already raised above: no check depends on an assert, which `python -O` drops)
        assert cond, msg
        past = kv_cache.length if kv_cache is not None else 0
        try:
            h = self.embed(x, past, pad_left=kv_cache.pad_left if kv_cache is not None else None)
        except IndexError:  # an id outside the vocabulary: check_input's message instead of torch's
            ids_ok, message = self.check_input(x, kv_cache)
            if ids_ok:
                raise
            raise ValueError(message) from None
        if logits_at is not None:
            logits_at = self.check_logits_at(logits_at, x)
        mask = self.hidden_keys(x, past, kv_cache, prefix_len, attention_mask)
        h, embeddings, attns = self.decoder(h, mask=mask, attn_requests=attn_requests, kv_cache=kv_cache,
                                            get_embeddings=get_embeddings, get_attn=get_attn)
        if logits_at is not None:  # [batch, n, dim]: the chosen positions
            h = h.gather(1, logits_at.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        elif logits_to_keep:
            h = h[:, -logits_to_keep:]
        if self.head_transform is not None:
            h = self.head_transform(h)
        logits = self.out_proj(h)
        if not (get_embeddings or get_attn):
            return logits
        out = {"logits": logits}
        if get_embeddings:
            out["embeddings"] = torch.stack(embeddings, dim=1)
        if get_attn:
            out["attns"] = torch.stack(attns, dim=1)
        return out

    def as_batch(self, x: InputIds) -> Tensor:
        """Any accepted input form -> [batch, seq] LongTensor on the model's device."""
        if isinstance(x, str):
            x = self.tokenizer(x)
        if isinstance(x, (list, tuple)):
            try:
                x = torch.tensor(x, dtype=torch.long)
            except (ValueError, TypeError) as e:
                raise ValueError("could not make a [batch, seq] tensor of this list: give one list of ids, or a list "
                                 "of equally long id lists (pad them, e.g. with data.dataloader.mycollate)") from e
        if not isinstance(x, Tensor):
            raise TypeError(f"LM input must be a string, a list of token ids or a tensor, got {type(x).__name__}")
        if x.is_floating_point():
            if not torch.equal(x, x.round()):
                raise ValueError("LM input is a float tensor with non-whole values: token ids must be whole numbers")
            x = x.long()
        elif x.dtype not in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"LM input tensor must hold token ids (an integer or float dtype), got {x.dtype}")
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2:
            raise ValueError(f"LM input must be one sequence or a [batch, seq] batch, got shape {tuple(x.shape)}")
        return x.to(device=self.device, dtype=torch.long)

    def check_input(self, x: Tensor, kv_cache: Optional[DecoderCache] = None, check_ids: bool = True) -> Tuple[bool, str]:
        """(True, "") when x [batch, seq] can be read, else (False, what is wrong and how to fix it).
        check_ids=False skips reading the ids' range (the shape and length checks still run)."""
        past = kv_cache.length if kv_cache is not None else 0
        max_len = self.model_params.max_seq_len
        if x.numel() == 0:
            return False, f"empty input (shape {tuple(x.shape)}): give at least one token, e.g. [lm.tokenizer.bos_id]"
        if kv_cache is not None and x.shape[0] != kv_cache.batch_size:
            return False, (f"input has {x.shape[0]} rows but the kv cache was made for {kv_cache.batch_size}: "
                           f"make it with lm.new_kv_cache(batch_size={x.shape[0]})")
        # a recurrent state reads on past the context (no positions, no window): sampling past it keeps the state
        if past + x.shape[1] > max_len and not (past and isinstance(kv_cache, RecurrentState)):
            past_note = f" after {past} cached tokens" if past else ""
            return False, (f"input of {x.shape[1]} tokens{past_note} is longer than the model's context "
                           f"(model_params.max_seq_len = {max_len}): keep the last {max_len - past}, e.g. x[:, -{max_len - past}:]")
        # Checking id values reads them back from the device: skip it while training on an accelerator
        # (a sync every step; the ids come from the tokenizer there) and under torch.compile (a graph break).
        if not check_ids or (self.training and x.device.type != "cpu") or torch.compiler.is_compiling():
            return True, ""
        lowest, highest = torch.stack(torch.aminmax(x)).tolist()
        if lowest < 0 or highest >= self.n_tokens:
            return False, (f"token ids must be in [0, {self.n_tokens - 1}] (the tokenizer's vocabulary), got ids "
                           f"from {lowest} to {highest}: encode text with lm.tokenizer")
        return True, ""

    @staticmethod
    def check_logits_at(logits_at: Any, x: Tensor) -> Tensor:
        """logits_at as a [batch, n] LongTensor of positions of x [batch, seq]; a ValueError when it is not one."""
        at = torch.as_tensor(logits_at, device=x.device)
        if at.is_floating_point() or at.dim() not in (1, 2) or at.shape[0] != x.shape[0] or at.numel() == 0:
            raise ValueError(f"logits_at needs integer positions, one per row ([batch] = [{x.shape[0]}]) or n per "
                             f"row ([batch, n]), got {'a float tensor' if at.is_floating_point() else tuple(at.shape)}")
        if at.min() < 0 or at.max() >= x.shape[1]:
            raise ValueError(f"logits_at positions must be in [0, {x.shape[1] - 1}] (the input's positions), got "
                             f"{at.min().item()} to {at.max().item()}")
        return at.long().view(x.shape[0], -1)

    def hidden_keys(self, x: Tensor, past: int, kv_cache: Optional[DecoderCache], prefix_len: Any,
                    attention_mask: Optional[Tensor]) -> Optional[Tensor]:
        """The keys each query of x may not see, for every block (hidden_keys): causal for "causal" and
        "fim", the prefix both ways for "prefix", nothing hidden but padding for "masked". None for a
        recurrent model (it reads left to right)."""
        objective = self.model_params.objective
        if prefix_len is not None and objective != "prefix":
            raise ValueError(f"prefix_len is for models trained with objective='prefix'; this one has "
                             f"objective={objective!r}, which reads {'both ways' if objective == 'masked' else 'causally'}")
        if is_recurrent(self.model_params):
            return None
        batch, seq = x.shape
        if prefix_len is not None:
            prefix_len = torch.as_tensor(prefix_len, device=x.device).long().reshape(-1)
            if prefix_len.numel() not in (1, batch):
                raise ValueError(f"prefix_len needs one length or one per row ({batch}), got {prefix_len.numel()}")
            prefix_len = prefix_len.expand(batch)
        if attention_mask is not None:
            if kv_cache is not None:
                raise ValueError("attention_mask with a kv_cache: give the cache the padding instead, "
                                 "lm.new_kv_cache(batch_size, pad_left=...)")
            if tuple(attention_mask.shape) != (batch, seq):
                raise ValueError(f"attention_mask must have the input's shape {(batch, seq)}, got {tuple(attention_mask.shape)}")
        pad_left = kv_cache.pad_left if kv_cache is not None else None
        return hidden_keys(seq, past + seq, pad_left, x.device, causal=objective != "masked",
                           prefix_len=prefix_len, attention_mask=attention_mask)

    def embed(self, x: Tensor, past: int = 0, pad_left: Optional[Tensor] = None) -> Tensor:
        """Token ids [batch, seq] at positions past..past+seq-1 -> input embeddings [batch, seq, dim].
        pad_left [batch] (left-padded rows, see KVCache): row r's positions start at its first real token.
        rope and alibi add nothing here: they act in the attention."""
        h = self.hook_embed(self.embedding(x))
        table = self.pos_embedding.weight if self.pos_embedding is not None else self.pos_encoding
        if table is not None:
            if pad_left is None:
                positions = table[past: past + x.shape[1]]
            else:  # per-row positions; padding (negative positions) reads position 0
                positions = table[token_positions(past, x.shape[1], pad_left, x.device).clamp(min=0)]
            if self.pos_embedding is not None:  # learned positions have a hook point (model/hooks.py)
                positions = self.hook_pos_embed(positions.expand_as(h))
            h = h + positions
        if self.embedding_norm is not None:
            h = self.embedding_norm(h)
        return self.dropout(h)

    # ---- training ---------------------------------------------------------------------
    def get_batch_xyz(self, batch: Dict[str, Tensor], loss_requests: Any = None) -> Tuple[Tensor, Tensor, Tensor]:
        """(x inputs [batch, seq], y targets [batch, seq] with -100 where no loss is taken, z logits of x).

        The objective (model/objectives.py) makes x and y from the rows batch["x_indices"]: causal and fim
        predict each next token, counted where batch["mask"] (and batch["target_mask"], when present) is
        True; prefix counts only the tokens after the prefix (batch["prefix_len"] when given); masked
        predicts the chosen tokens at their own positions. In training the masks, splits and fim
        rearrangements are drawn afresh; in eval mode they are fixed per sample.
        loss_requests: whatever the caller passes for this batch (the trainer: see get_losses); the
        hook for editing the inputs but not the targets, right before the forward pass below.
        """
        mp, tok = self.model_params, self.tokenizer
        tokens, real = batch["x_indices"], batch["mask"].bool()
        counted = real if batch.get("target_mask") is None else real & batch["target_mask"].bool()
        if mp.objective == "fim" and self.training:  # fim_rate of the rows rearranged, then trained causally
            tokens, real = fim_rearranged(tokens, real, mp.fim_rate, tok.bos_id, tok.eos_id, tok.fim_ids,
                                          max_width=mp.max_seq_len + 1)
            counted = real
        x, prefix_len, attention_mask = tokens[:, :-1], None, None
        if mp.objective == "masked":  # the chosen tokens, predicted at their own positions from both sides
            # each row without its last token (as x of a causal read): real where a later token is real
            attention_mask = real[:, 1:]
            x, y = masked_inputs(x, attention_mask, counted[:, :-1], self.framing_ids(), tok.mask_id, self.n_tokens,
                                 mp.mask_frac, fixed=not self.training)
        else:
            y = tokens[:, 1:].masked_fill(~counted[:, 1:], -100)
        if mp.objective == "prefix":  # the prefix is read both ways, so only the tokens after it count
            prefix_len = batch.get("prefix_len")
            if prefix_len is None:
                prefix_len = prefix_lengths(real[:, :-1], batch.get("target_mask"), x, fixed=not self.training)
            y = y.masked_fill(torch.arange(y.shape[1], device=y.device) < prefix_len.unsqueeze(1) - 1, -100)
        z = self(x, prefix_len=prefix_len, attention_mask=attention_mask)
        return x, y, z

    def framing_ids(self) -> List[int]:
        """The ids that frame a text (bos, eos, padding): a masked model never masks nor scores them."""
        tok = self.tokenizer
        return sorted({tok.bos_id, tok.eos_id, tok.pad_id})

    def get_losses(self, batch: Dict[str, Tensor], train_params: Any = None,
                   loss_requests: Any = None) -> Tuple[Tensor, int]:
        """(mean cross-entropy over the counted target tokens, a 0-dim tensor; batch size).
        train_params (TrainParams) and loss_requests are there for edits of the loss."""
        _, y, z = self.get_batch_xyz(batch, loss_requests=loss_requests)
        loss = F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index=-100)
        return loss, y.shape[0]

    # ---- using a trained model ----------------------------------------------------------
    def sample(self, pref: Union[str, Sequence[int], Tensor, List[Union[str, Sequence[int], Tensor]]] = "",
               max_seq_len: int = 100, temperature: float = 1.0, nucleus: Optional[float] = None,
               top_k: Optional[int] = None, as_str: bool = True, seed: Optional[int] = None,
               stop_at_eos: Optional[bool] = None, hooks: Optional[Hooks] = None,
               ) -> Union[str, List[int], List[Union[str, List[int]]]]:
        """Continue `pref` (text or ids; "" starts from nothing) and return prefix + continuation.

        The model reads bos + pref (no second bos when pref's ids already start with it).
        Generation stops at eos (not included) if stop_at_eos, or when the returned sample reaches
        `max_seq_len` tokens (prefix included; the bos that sample puts in front is not part of it). A sample
        may outgrow the model's context (model_params.max_seq_len): from there a transformer predicts each
        new token from the last context-long window, read afresh (as nanoGPT's generate crops), one forward
        per token; a recurrent model's state simply reads on (an RNN has no window).
        temperature 0 = greedy (argmax); top_k or nucleus (not both) restrict the sampled tokens.
        seed: reproducible samples (a private torch.Generator); None uses torch's global RNG.
        stop_at_eos=None: False for a model of stream-mode text, whose <eos> is a line end (so a bare
        call continues the text), True otherwise (model/sample_text.py).
        pref may also be a list of prompts (strings, id lists, 1-D tensors; a list of ints is ONE
        prompt): they are sampled as a batch and a list of samples comes back, each the same as
        sampling its prompt alone with the same seed (every row has its own generator seeded with seed).
        Returns text when as_str (in stream mode with <eos> as a newline), else the list of ids. Runs in
        eval mode under no_grad (the previous train/eval mode is restored), with a key/value cache.
        hooks: as in run_with_hooks, applied at every decoding step. With the cache, a step's hook
        tensors cover its new positions only (the whole prompt at the first step, then one token;
        several prompts are left-padded to one batch, so that first step includes the padding).
        A prefix model (objective "prefix") reads bos + pref as its prefix, both ways, then continues causally.
        """
        self.refuse_for_masked("sample")
        with self.hooks(hooks):
            return sample(self, pref, max_seq_len, temperature, nucleus, top_k, as_str, seed,
                          resolve_stop_at_eos(stop_at_eos, self.sample_mode))

    def beam_search(self, pref: Union[str, Sequence[int], Tensor, List[Union[str, Sequence[int], Tensor]]] = "",
                    beam_size: int = 4, max_seq_len: int = 100, length_penalty: float = 1.0, n_best: int = 1,
                    as_str: bool = True, stop_at_eos: bool = True, hooks: Optional[Hooks] = None,
                    **unsupported: Any) -> Any:
        """The most likely continuations of `pref` by beam search, the same as transformers'
        generate(num_beams=beam_size, do_sample=False, length_penalty=length_penalty, early_stopping=True,
        num_return_sequences=n_best). Prefix, bos and length conventions as `sample`.

        Returns the best sample (text when as_str, else ids) when n_best == 1, else a list of n_best
        (sample, score) pairs, best first; score = sum of the token log-probabilities (eos included when
        the hypothesis ended with it) / (number of new tokens) ** length_penalty. length_penalty > 0
        favours longer hypotheses. Search stops once beam_size hypotheses have ended (early stopping).
        pref may be a list of prompts (as in `sample`): then a list of those results comes back.
        Text as in `sample` (stream mode: <eos> as a newline, seen only with stop_at_eos=False).
        hooks: as in `sample` (the batch rows are then the beams). A prefix model reads the prompt as its prefix.
        Past the model's context each beam is read from its last context-long window, as `sample` does.
        """
        self.refuse_for_masked("beam_search")
        with self.hooks(hooks):
            return beam_search(self, pref, beam_size, max_seq_len, length_penalty, n_best, as_str, stop_at_eos,
                               **unsupported)

    def refuse_for_masked(self, what: str) -> None:
        if self.model_params.objective == "masked":
            raise ValueError(f"lm.{what} continues a text left to right, but this model has objective='masked' "
                             "(BERT-style: it predicts masked tokens from both sides): use lm.fill_mask(text with "
                             f"{self.tokenizer.mask_token or '<mask>'} where the words are missing)")

    def fill_mask(self, text_or_ids: Union[str, Sequence[int], List[Union[str, Sequence[int]]]],
                  top_k: Optional[int] = None, as_str: bool = True) -> Any:
        """Objective "masked": every mask token of the input predicted at once, in one forward pass.

        text_or_ids: a text holding lm.tokenizer.mask_token (e.g. "the <mask> sat"), a list of ids holding
        tokenizer.mask_id, or a list of those (a batch; a list of ints is ONE input). Each is read as
        bos + its ids, as the training rows begin (`<eos> line`).
        Returns the text (its ids, without the bos, when as_str=False) with each mask replaced by its most
        likely token; with top_k=k instead a list, one per mask in order, of the k most likely
        (token, probability) pairs, best first (token: its string when as_str, else its id).
        A batch gives a list of those. Runs in eval mode under no_grad."""
        if self.model_params.objective != "masked":
            raise ValueError(f"fill_mask is for models trained with objective='masked'; this one has "
                             f"objective={self.model_params.objective!r}: use lm.sample"
                             + (" or lm.infill" if self.model_params.objective == "fim" else ""))
        return fill_mask(self, text_or_ids, top_k, as_str)

    def infill(self, prefix: Union[str, Sequence[int], List[Tuple[Any, Any]]], suffix: Union[str, Sequence[int]] = "",
               max_seq_len: int = 100, temperature: float = 0.0, nucleus: Optional[float] = None,
               top_k: Optional[int] = None, as_str: bool = True, seed: Optional[int] = None,
               hooks: Optional[Hooks] = None) -> Any:
        """Objective "fim": the middle between `prefix` and `suffix` (texts or id lists), sampled as
        `sample` samples (temperature 0 = greedy, nucleus, top_k, seed, hooks) after
        `bos <fim_prefix> prefix <fim_suffix> suffix <fim_middle>`. The middle ends where the model emits
        <eos> (every fim training row ends its middle with one; not returned) or after max_seq_len tokens.
        prefix may be a list of (prefix, suffix) pairs (then suffix is not given): a list of middles comes
        back, sampled as one batch. Returns text when as_str, else the middle's ids."""
        if self.model_params.objective != "fim" or self.tokenizer.fim_ids is None:
            raise ValueError(f"infill needs a model trained with objective='fim' (its tokenizer holds <fim_prefix>, "
                             f"<fim_suffix>, <fim_middle>); this one has objective={self.model_params.objective!r}")
        batched = isinstance(prefix, list) and all(isinstance(p, tuple) and len(p) == 2 for p in prefix) and prefix
        pairs = prefix if batched else [(prefix, suffix)]
        as_ids = [(self.as_ids(p), self.as_ids(s)) for p, s in pairs]
        prompts = [fim_prompt(p, s, self.tokenizer.fim_ids) for p, s in as_ids]
        with self.hooks(hooks):
            out = sample(self, prompts, 0, temperature, nucleus, top_k, as_str=False, seed=seed, stop_at_eos=True,
                         max_new_tokens=max_seq_len)
        middles = [ids[len(p):] for ids, p in zip(out, prompts)]
        if as_str:
            middles = [self.tokenizer.decode(m) for m in middles]
        return middles if batched else middles[0]

    def as_ids(self, text_or_ids: Union[str, Sequence[int], Tensor]) -> List[int]:
        """A text's ids (encoded with lm.tokenizer, no bos) or a list / 1-D tensor of ids, as a list."""
        if isinstance(text_or_ids, str):
            return self.tokenizer(text_or_ids)
        return [int(i) for i in (text_or_ids.tolist() if isinstance(text_or_ids, Tensor) else text_or_ids)]

    def new_kv_cache(self, batch_size: int = 1, pad_left: Union[None, Tensor, Sequence[int]] = None) -> DecoderCache:
        """An empty cache for `self(x, kv_cache=...)` with x of `batch_size` rows, from this model's decoder:
        a KVCache (keys and values per block, the model's context long) for transformers, a RecurrentState
        (each layer's state) for recurrent models. pad_left [batch_size]: left-padding counts of batched
        prompts of different lengths (row r's first pad_left[r] tokens are padding: never attended to, the
        real tokens get positions 0, 1, ...; a recurrent state skips them), so each row gives the logits of
        its prompt run alone."""
        if pad_left is not None:  # on the model's device: positions and masks are made from it at every step
            pad_left = torch.as_tensor(pad_left, device=self.device)
        return self.decoder.new_cache(batch_size=batch_size, pad_left=pad_left)

    def perplexities(self, data: Union[Sequence[str], Any], per_token: bool = False, before_exp: bool = False,
                     dummy_res: float = -1, batch_size: int = 32, prefix_len: Optional[int] = None,
                     pseudo_perplexity: bool = True) -> Tuple[float, float, float, int, Union[Tensor, list]]:
        """Perplexity on `data`: a list of texts (each read as bos + text, batched by batch_size) or a
        DataLoader of batches (dicts with x_indices, mask and optionally target_mask).

        Returns (mean, max, min, total_tokens, per_token_res):
          mean: the corpus perplexity, exp(total cross-entropy / total predicted tokens);
          max, min: over the per-token perplexities; total_tokens: predicted tokens counted;
          per_token_res: [n_sequences, longest sequence - 1] per-token values, dummy_res where no
             prediction counts; [] unless per_token.
        before_exp: cross-entropies (nats) instead of perplexities, everywhere.
        Runs in eval mode under no_grad (the previous mode is restored).
        What is scored depends on the objective: causal and fim models every next token; a prefix model
        the tokens after the prefix (texts: the first prefix_len text tokens, after bos, are the prefix;
        None = 0, a causal read; a DataLoader: the fixed split of its validation loss); a masked model
        gives the pseudo-perplexity (Salazar et al. 2020), each text token scored with itself masked and
        the rest visible (per_token column i is then input token i itself, not token i + 1), one
        forward per token, batch_size at a time; pseudo_perplexity=False scores its validation loss's fixed
        masks instead (mask_frac of the tokens, the same in every run: what training reports).
        """
        return perplexities(self, data, per_token=per_token, before_exp=before_exp, dummy_res=dummy_res,
                            batch_size=batch_size, prefix_len=prefix_len, pseudo_perplexity=pseudo_perplexity)

    # ---- looking inside: hook points (model/hooks.py lists the names and shapes) -----------
    def hook_names(self) -> List[str]:
        """Every hook point of this model (TransformerLens names, e.g. "blocks.0.attn.hook_pattern"),
        in forward order; the same list on both layer paths."""
        return hook_names(self)

    def hooks(self, hooks: Optional[Hooks]) -> ContextManager[None]:
        """`with lm.hooks({name: fn, ...}):` (or a list of (name, fn)) attaches fn(tensor, name) -> tensor
        of the same shape or None (keep) for every call in the block: lm(x), perplexities, sample, training
        steps. Removed on the way out, also when something raises."""
        return hooks_attached(self, hooks)

    def run_with_cache(self, x: InputIds, names: NameFilter = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """(logits as lm(x), {name: tensor}): the activations at every hook point, or at those in `names`
        (a list), or at those a callable names(name) -> bool accepts. Tensors are detached, on the model's
        device; only the asked-for ones are kept. Runs as lm(x) does (mode, gradients)."""
        return run_with_cache(self, x, names)

    def run_with_hooks(self, x: InputIds, hooks: Hooks) -> Tensor:
        """lm(x) with hooks attached: a dict name -> fn or a list of (name, fn); fn(tensor, name) returns
        a replacement of the same shape or None (keep). Returns the logits; the hooks are removed
        afterwards, also when a hook raises."""
        return run_with_hooks(self, x, hooks)

    # ---- helpers ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def n_parameters(self) -> int:
        """Number of trainable values (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def with_layer_architecture(self, layer_architecture: str) -> "LM":
        """A copy of this model (same weights, device and train/eval mode) built with the other layer
        architecture, e.g. a model trained on the editable path on PyTorch's reference layer, to compare them.
        The copy is built from the code and model_params: modules put into decoder.layers by hand at run
        time are not carried over (those added in Transformer.__init__, as the README recipes do, are)."""
        if layer_architecture != self.model_params.layer_architecture and (
                is_recurrent(self.model_params) or layer_architecture in RECURRENT_ARCHITECTURES):
            raise ValueError(f"cannot convert a {self.model_params.layer_architecture!r} model to "
                             f"{layer_architecture!r}: with_layer_architecture moves weights between the two "
                             "transformer paths (torch-transformer, custom-transformer); recurrent and transformer "
                             "models have different weights, so train a new model with that layer_architecture")
        return self._copy_with(layer_architecture=layer_architecture)

    def with_max_seq_len(self, max_seq_len: int) -> "LM":
        """A copy of this model (same weights) with a longer (or shorter) context: possible for positions
        that have no trained table (rope, alibi, sinusoidal, none; recurrent models). Whether the model reads longer texts
        well is another question (README: Architectures)."""
        if self.pos_embedding is not None and max_seq_len > self.model_params.max_seq_len:
            raise ValueError(f"this model has learned positions for {self.model_params.max_seq_len} tokens "
                             f"(pos_embedding): it cannot read {max_seq_len}. Models with positional_encoding "
                             f"rope, alibi, sinusoidal or none can be given a longer context")
        return self._copy_with(max_seq_len=max_seq_len)

    def _copy_with(self, **changes: Any) -> "LM":
        """This model rebuilt with ModelParams `changes`, its weights loaded, on the same device/dtype/mode."""
        params = dataclasses.replace(self.model_params, **changes)
        other = LM(params, self.tokenizer, self.sample_mode).to(device=self.device, dtype=self.embedding.weight.dtype)
        state = self.state_dict()
        if self.pos_embedding is not None and params.max_seq_len < self.model_params.max_seq_len:
            state["pos_embedding.weight"] = state["pos_embedding.weight"][: params.max_seq_len]
        other.load_state_dict(state)
        return other.train(self.training)

    def __repr__(self) -> str:
        mp = self.model_params
        if is_recurrent(mp):
            return (f"LM({mp.layer_architecture}: {mp.n_layers} layers, dim {mp.dim}, context {mp.max_seq_len}, "
                    f"vocab {self.n_tokens}; {self.n_parameters():,} parameters)")
        kv = f" ({mp.n_kv_heads} kv)" if mp.n_kv_heads not in (None, mp.n_heads) else ""
        options = [mp.positional_encoding, mp.norm, mp.activation] + \
            [name for name in ("qk_norm", "parallel_block") if getattr(mp, name)]
        return (f"LM({mp.layer_architecture}: {mp.n_layers} layers, {mp.n_heads} heads{kv}, dim {mp.dim}, "
                f"dim_ff {ff_width(mp)}, {' '.join(options)}, context {mp.max_seq_len}, vocab {self.n_tokens}; "
                f"{self.n_parameters():,} parameters)")
