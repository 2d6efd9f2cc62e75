"""GPT-2 in our interface: any GPT-2-family checkpoint becomes an `LM` of our own code.

    from gpt2 import get_gpt2
    lm_gpt2 = get_gpt2()                     # hub "gpt2" (needs the network or the HF cache)
    lm_gpt2 = get_gpt2("gpt2-medium")        # distilgpt2, a fine-tune's hub name, ...
    lm_gpt2 = get_gpt2("path/to/folder")     # a folder written by `save_pretrained`

The returned LM runs OUR "custom-transformer" layer (model/transformer/transformerencoderlayer.py)
and our attention function, carrying GPT-2's weights. So sampling, perplexities, embeddings,
attention plots and attention edits work on GPT-2 exactly as on the models trained here.

Weight mapping, `transformers`' GPT2LMHeadModel -> LM. GPT-2 stores its linear layers as
`Conv1D` with weights shaped [in, out]; ours are `nn.Linear`-style [out, in], so those are
transposed (marked T). The q, k, v blocks of c_attn stay in that order, as in
`nn.MultiheadAttention`'s in_proj, and each splits into heads the same way.

    transformer.wte.weight              -> embedding.weight   (out_proj.weight is tied to it)
    transformer.wpe.weight              -> pos_embedding.weight
    transformer.h.{i}.ln_1.{w,b}        -> decoder.layers.{i}.norm1.{w,b}
    transformer.h.{i}.attn.c_attn.{w,b} -> decoder.layers.{i}.self_attn.in_proj_{weight,bias}  (T)
    transformer.h.{i}.attn.c_proj.{w,b} -> decoder.layers.{i}.self_attn.out_proj.{w,b}          (T)
    transformer.h.{i}.ln_2.{w,b}        -> decoder.layers.{i}.norm2.{w,b}
    transformer.h.{i}.mlp.c_fc.{w,b}    -> decoder.layers.{i}.linear1.{w,b}                     (T)
    transformer.h.{i}.mlp.c_proj.{w,b}  -> decoder.layers.{i}.linear2.{w,b}                     (T)
    transformer.ln_f.{w,b}              -> decoder.final_norm.{w,b}
    lm_head.weight                      -> out_proj.weight    (only when the checkpoint unties it)

Embeddings: `lm(x, get_embeddings=True)["embeddings"][:, i]` equals HF's `hidden_states[i]`
for i < n_layers (i = 0 is token + position embedding, i = k is the residual stream after
block k). HF's last hidden state has ln_f applied; ours is the residual stream after the last
block, so `lm.decoder.final_norm(embeddings[:, -1])` equals HF's `hidden_states[-1]`.
"""
import re
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Union

import torch

from data.data_path import find_data_path
from data.tokenizer import Tokenizer
from model.lm import LM
from model.model_params import ModelParams

if TYPE_CHECKING:  # transformers is imported when a checkpoint is loaded, not with this module
    from transformers import GPT2Config, GPT2LMHeadModel

# transformers' activation_function name -> ours ("gelu_new" is GPT-2's tanh approximation)
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
# Conv1D layers: HF name inside block i -> our name inside decoder.layers.{i}, for weight and bias
BLOCK_LINEARS = {"attn.c_attn": "self_attn.in_proj_", "attn.c_proj": "self_attn.out_proj.",
                 "mlp.c_fc": "linear1.", "mlp.c_proj": "linear2."}
BLOCK_NORMS = {"ln_1": "norm1", "ln_2": "norm2"}
# causal-mask buffers that older checkpoints (e.g. the hub's original "gpt2") store next to the weights
OLD_MASK_BUFFER = re.compile(r"(^|\.)h\.\d+\.attn\.(masked_)?bias$")
# either file set lets GPT2TokenizerFast load a folder
TOKENIZER_FILE_SETS = (("vocab.json", "merges.txt"), ("tokenizer.json",))


def get_gpt2(name_or_path: Union[str, Path] = "gpt2",
             tokenizer_path: Optional[Union[str, Path]] = None) -> LM:
    """GPT-2 (any GPT-2-family checkpoint: a hub name or a `save_pretrained` folder) as our LM,
    in eval mode, float32.

    The tokenizer comes from `tokenizer_path` when given, else from the model's own folder or
    hub name; a local folder without tokenizer files falls back to the data folder's
    `gpt2-tokenizer/` (see data/data_path.py), then to the hub's "gpt2"."""
    hf_model = load_hf_gpt2(name_or_path)
    tokenizer = Tokenizer.gpt2(find_tokenizer_source(name_or_path, tokenizer_path))
    return convert_gpt2(hf_model, tokenizer)


def load_hf_gpt2(name_or_path: Union[str, Path]) -> "GPT2LMHeadModel":
    """transformers' GPT2LMHeadModel from a hub name or local folder, float32, with every
    checkpoint weight present (a clear error otherwise, not silently random weights)."""
    from transformers import AutoConfig, GPT2LMHeadModel

    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.exists():
        name = str(local)
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ValueError(f"{local} is not a transformers checkpoint folder (it needs config.json and "
                             f"model.safetensors, as written by GPT2LMHeadModel.save_pretrained). For a run "
                             f"saved by this project use model_explorer.get_model_by_path instead.")
    elif _looks_like_local_path(name):
        raise FileNotFoundError(f"no model folder at {local.resolve()}: give an existing folder written by "
                                f"save_pretrained, or a hub name such as 'gpt2', 'gpt2-medium', 'distilgpt2'")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise OSError(f"could not load a model config from {name!r}: {e}\nGive a local folder written by "
                      f"save_pretrained, or a hub name such as 'gpt2' (the hub needs the network or a "
                      f"copy in the Hugging Face cache).") from e
    check_gpt2_config(config, name)
    model, info = GPT2LMHeadModel.from_pretrained(name, dtype=torch.float32, output_loading_info=True)
    info["unexpected_keys"] = [k for k in info["unexpected_keys"] if not OLD_MASK_BUFFER.search(k)]
    problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        raise ValueError(f"checkpoint {name!r} does not match GPT2LMHeadModel: {problems} "
                         f"{info.get('error_msgs') or ''}")
    return model.eval()


def _looks_like_local_path(name: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else that does not exist is a missing folder."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def check_gpt2_config(config: "GPT2Config", name: str = "the checkpoint") -> None:
    """Refuse configs whose computation our custom-transformer layer does not reproduce."""
    if config.model_type != "gpt2":
        raise ValueError(f"{name!r} is a {config.model_type!r} checkpoint, not GPT-2: get_gpt2 only converts "
                         f"GPT-2-family models (gpt2, gpt2-medium/large/xl, distilgpt2, GPT-2 fine-tunes)")
    unsupported = []
    if config.activation_function not in ACTIVATIONS:
        unsupported.append(f"activation_function={config.activation_function!r} (supported: {', '.join(ACTIVATIONS)})")
    if not config.scale_attn_weights:
        unsupported.append("scale_attn_weights=False (we always scale scores by 1/sqrt(head_dim))")
    if config.scale_attn_by_inverse_layer_idx:
        unsupported.append("scale_attn_by_inverse_layer_idx=True")
    if config.add_cross_attention:
        unsupported.append("add_cross_attention=True")
    if unsupported:
        raise ValueError(f"{name!r} uses GPT-2 options our custom-transformer layer does not implement: "
                         + "; ".join(unsupported))


def model_params_from_gpt2_config(config: "GPT2Config") -> ModelParams:
    """Our ModelParams describing exactly GPT-2's architecture (dropout 0: for inference)."""
    return ModelParams(
        layer_architecture="custom-transformer",
        n_layers=config.n_layer,
        n_heads=config.n_head,
        dim=config.n_embd,
        dim_ff=config.n_inner or 4 * config.n_embd,
        dropout=0.0,
        activation=ACTIVATIONS[config.activation_function],
        norm_first=True,
        final_norm=True,
        positional_encoding="learned",
        max_seq_len=config.n_positions,
        tie_embeddings=config.tie_word_embeddings,
        bias=True,
        layer_norm_eps=config.layer_norm_epsilon,
    )


def gpt2_state_dict_to_lm(hf_state: Dict[str, torch.Tensor], n_layers: int,
                          tie_embeddings: bool = True) -> Dict[str, torch.Tensor]:
    """Rename (and transpose) a GPT2LMHeadModel state dict into our LM's names, float32.
    Every HF tensor must be used exactly once: leftovers are an error, not silently dropped."""
    left = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    ours: Dict[str, torch.Tensor] = {}

    def take(hf_name: str, our_name: str, transpose: bool = False) -> None:
        if hf_name not in left:
            raise KeyError(f"GPT-2 state dict has no {hf_name!r} (expected {n_layers} blocks)")
        tensor = left.pop(hf_name).detach().float()
        ours[our_name] = (tensor.t() if transpose else tensor).contiguous()

    take("wte.weight", "embedding.weight")
    take("wpe.weight", "pos_embedding.weight")
    for i in range(n_layers):
        for hf, our in BLOCK_NORMS.items():
            take(f"h.{i}.{hf}.weight", f"decoder.layers.{i}.{our}.weight")
            take(f"h.{i}.{hf}.bias", f"decoder.layers.{i}.{our}.bias")
        for hf, our in BLOCK_LINEARS.items():
            take(f"h.{i}.{hf}.weight", f"decoder.layers.{i}.{our}weight", transpose=True)
            take(f"h.{i}.{hf}.bias", f"decoder.layers.{i}.{our}bias")
    take("ln_f.weight", "decoder.final_norm.weight")
    take("ln_f.bias", "decoder.final_norm.bias")
    if "lm_head.weight" in left:
        if tie_embeddings:  # the tied head is wte itself: nothing more to copy
            head = left.pop("lm_head.weight")
            if not torch.equal(head.float(), ours["embedding.weight"]):
                raise ValueError("lm_head.weight differs from wte.weight but the config says they are tied")
        else:
            take("lm_head.weight", "out_proj.weight")
    elif not tie_embeddings:
        raise KeyError("GPT-2 state dict has no 'lm_head.weight' but the config unties it from wte")
    if left:
        raise ValueError(f"GPT-2 tensors with no place in our LM (unknown layout?): {sorted(left)}")
    return ours


def load_converted_weights(lm: LM, weights: Dict[str, torch.Tensor]) -> None:
    """Copy `weights` into `lm`, checking that every name and shape fits and that every LM
    parameter and persistent buffer gets a value (tied aliases of a filled tensor count as filled)."""
    target = lm.state_dict()
    unexpected = sorted(set(weights) - set(target))
    wrong_shape = [f"{k}: GPT-2 {tuple(weights[k].shape)} vs LM {tuple(target[k].shape)}"
                   for k in weights if k in target and weights[k].shape != target[k].shape]
    filled = {target[k].data_ptr() for k in weights if k in target}
    missing = sorted(k for k in set(target) - set(weights) if target[k].data_ptr() not in filled)
    if unexpected or wrong_shape or missing:
        raise ValueError("GPT-2 weights do not fit the LM built from its config:"
                         + (f"\n  names the LM lacks: {unexpected}" if unexpected else "")
                         + (f"\n  shape mismatches: {wrong_shape}" if wrong_shape else "")
                         + (f"\n  LM tensors left unfilled: {missing}" if missing else ""))
    lm.load_state_dict(weights, strict=False)


def find_tokenizer_source(name_or_path: Union[str, Path],
                          tokenizer_path: Optional[Union[str, Path]] = None) -> str:
    """Where GPT-2's tokenizer is read from: `tokenizer_path`, else the model's folder or hub name,
    else (a folder without tokenizer files, e.g. random test weights) the data folder's
    `gpt2-tokenizer/`, else the hub's "gpt2"."""
    if tokenizer_path is not None:
        folder = Path(tokenizer_path).expanduser()
        if folder.exists() and not _has_tokenizer_files(folder):
            raise FileNotFoundError(f"{folder} holds no GPT-2 tokenizer: it needs vocab.json + merges.txt, "
                                    f"or tokenizer.json")
        if not folder.exists() and _looks_like_local_path(str(tokenizer_path)):
            raise FileNotFoundError(f"no tokenizer folder at {folder.resolve()}")
        return str(folder) if folder.exists() else str(tokenizer_path)
    model_folder = Path(name_or_path).expanduser()
    if not model_folder.is_dir():
        return str(name_or_path)  # a hub name: the tokenizer is published with the model
    if _has_tokenizer_files(model_folder):
        return str(model_folder)
    data_path = find_data_path()
    if data_path is not None and _has_tokenizer_files(Path(data_path) / "gpt2-tokenizer"):
        return str(Path(data_path) / "gpt2-tokenizer")
    return "gpt2"


def _has_tokenizer_files(folder: Path) -> bool:
    return any(all((folder / f).is_file() for f in files) for files in TOKENIZER_FILE_SETS)


def convert_gpt2(hf_model: "GPT2LMHeadModel", tokenizer: Tokenizer) -> LM:
    """Our LM (custom-transformer, eval mode) carrying the weights of a transformers GPT2LMHeadModel."""
    config = hf_model.config
    check_gpt2_config(config)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the checkpoint's vocabulary has "
                         f"{config.vocab_size}: pass the tokenizer saved with this checkpoint (tokenizer_path=...)")
    params = model_params_from_gpt2_config(config)
    lm = LM(params, tokenizer)
    weights = gpt2_state_dict_to_lm(hf_model.state_dict(), config.n_layer, params.tie_embeddings)
    load_converted_weights(lm, weights)
    return lm.eval()
