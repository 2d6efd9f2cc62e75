"""GPT-2 in our interface: any GPT-2-family checkpoint becomes an `LM` of our own code.

    from gpt2 import get_gpt2
    lm_gpt2 = get_gpt2()                     # hub "gpt2" (needs the network or the HF cache)
    lm_gpt2 = get_gpt2("gpt2-medium")        # distilgpt2, a fine-tune's hub name, ...
    lm_gpt2 = get_gpt2("path/to/folder")     # a folder written by `save_pretrained`

`pretrained.get_pretrained` does the work (GPT-2's mapping table is hf_families/gpt2.py); this
module adds GPT-2's tokenizer fallback (a folder without tokenizer files, e.g. random test
weights, takes the data folder's `gpt2-tokenizer/`) and keeps the GPT-2-only entry points.

The returned LM runs OUR "custom-transformer" layer (model/transformer/transformerencoderlayer.py)
and our attention function, carrying GPT-2's weights. So sampling, perplexities, embeddings,
attention plots and attention edits work on GPT-2 exactly as on the models trained here.

Embeddings: `lm(x, get_embeddings=True)["embeddings"][:, i]` equals HF's `hidden_states[i]`
for i < n_layers (i = 0 is token + position embedding, i = k is the residual stream after
block k). HF's last hidden state has ln_f applied; ours is the residual stream after the last
block, so `lm.decoder.final_norm(embeddings[:, -1])` equals HF's `hidden_states[-1]`.
"""
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union


from data.data_path import find_data_path
from data.tokenizer import Tokenizer
from hf_families import gpt2 as gpt2_family
from model.lm import LM
from pretrained import checkpoint_name, convert, get_pretrained, has_tokenizer_files, load_config, looks_like_local_path

if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2LMHeadModel

GPT2_FAMILY = gpt2_family.GPT2


def get_gpt2(name_or_path: Union[str, Path] = "gpt2",
             tokenizer_path: Optional[Union[str, Path]] = None) -> LM:
    """GPT-2 (any GPT-2-family checkpoint: a hub name or a `save_pretrained` folder) as our LM,
    in eval mode, float32.

    The tokenizer comes from `tokenizer_path` when given, else from the model's own folder or
    hub name; a local folder without tokenizer files falls back to the data folder's
    `gpt2-tokenizer/` (see data/data_path.py), then to the hub's "gpt2"."""
    name = checkpoint_name(name_or_path)
    check_gpt2_config(load_config(name), name)
    return get_pretrained(name, tokenizer_path=find_tokenizer_source(name, tokenizer_path))


def check_gpt2_config(config: "GPT2Config", name: str = "the checkpoint") -> None:
    """Refuse configs that are not GPT-2 or whose computation our custom-transformer layer does not reproduce."""
    if config.model_type != "gpt2":
        raise ValueError(f"{name!r} is a {config.model_type!r} checkpoint, not GPT-2: get_gpt2 only converts "
                         f"GPT-2-family models (gpt2, gpt2-medium/large/xl, distilgpt2, GPT-2 fine-tunes); "
                         f"pretrained.get_pretrained converts other families")
    gpt2_family.model_params(config)


def find_tokenizer_source(name_or_path: Union[str, Path],
                          tokenizer_path: Optional[Union[str, Path]] = None) -> str:
    """Where GPT-2's tokenizer is read from: `tokenizer_path`, else the model's folder or hub name,
    else (a folder without tokenizer files, e.g. random test weights) the data folder's
    `gpt2-tokenizer/`, else the hub's "gpt2"."""
    if tokenizer_path is not None:
        folder = Path(tokenizer_path).expanduser()
        if folder.exists() and not has_tokenizer_files(folder):
            raise FileNotFoundError(f"{folder} holds no GPT-2 tokenizer: it needs vocab.json + merges.txt, "
                                    f"or tokenizer.json")
        if not folder.exists() and looks_like_local_path(str(tokenizer_path)):
            raise FileNotFoundError(f"no tokenizer folder at {folder.resolve()}")
        return str(folder) if folder.exists() else str(tokenizer_path)
    model_folder = Path(name_or_path).expanduser()
    if not model_folder.is_dir():
        return str(name_or_path)  # a hub name: the tokenizer is published with the model
    if has_tokenizer_files(model_folder):
        return str(model_folder)
    data_path = find_data_path()
    if data_path is not None and has_tokenizer_files(Path(data_path) / "gpt2-tokenizer"):
        return str(Path(data_path) / "gpt2-tokenizer")
    return "gpt2"


def convert_gpt2(hf_model: "GPT2LMHeadModel", tokenizer: Tokenizer) -> LM:
    """Our LM (custom-transformer, eval mode) carrying the weights of a transformers GPT2LMHeadModel."""
    return convert(hf_model, tokenizer, GPT2_FAMILY)
