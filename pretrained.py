"""Pretrained transformers checkpoints into our LM, and our trained runs out to transformers.

    from pretrained import get_pretrained, export_hf
    lm = get_pretrained("EleutherAI/pythia-70m")      # a hub name (network or the HF cache) ...
    lm = get_pretrained("path/to/folder")             # ... or a save_pretrained folder
    export_hf("path/to/run-folder", "out/")           # then AutoModelForCausalLM.from_pretrained("out/")
                                                      # (a masked run: AutoModelForMaskedLM)

The LM runs OUR custom-transformer layer with the checkpoint's weights, in eval mode, so sampling,
perplexities, embeddings, attention plots and attention edits work on it as on models trained here.
Each family is a mapping table in hf_families/ (their tensor names -> ours, transposes, re-stacked
q/k/v, and which ModelParams options reproduce its computation); `FAMILIES` lists them.

Tokenizer: the checkpoint's own (transformers' fast tokenizer, i.e. its `tokenizers` pipeline) in our
Tokenizer, so `lm.tokenizer(text)` gives the checkpoint tokenizer's ids without special tokens; bos,
eos and pad ids come from the checkpoint's config (then its tokenizer config; pad falls back to eos).
As for models trained here, `lm.sample` and `lm.perplexities` read bos + text.

Encoders (BERT, RoBERTa, DistilBERT) become LMs with objective "masked": bos is [CLS] (<s>), eos [SEP]
(</s>), pad and the mask token are the tokenizer's. `lm.tokenizer(text)` and `lm(text)` take the text's
ids as they are (no framing: lm(tok(text)["input_ids"]) equals transformers' logits on those ids), while
`lm.fill_mask` and `lm.perplexities` frame each text as the checkpoint was trained and transformers'
fill-mask pipeline feeds it: [CLS] text [SEP] (<s> text </s>). Pseudo-perplexity scores neither.

Embeddings: `lm(x, get_embeddings=True)["embeddings"][:, i]` equals transformers' `hidden_states[i]`
for i < n_layers (entry 0: the input embedding; entry k: the residual stream after block k).
transformers' last hidden state has the final norm applied, ours is the stream before it:
`lm.decoder.final_norm(embeddings[:, -1])` equals `hidden_states[-1]`. Encoders (post-LN, no final norm)
have every entry equal, the last included: embeddings[:, i] == hidden_states[i] for i <= n_layers.
"""
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import torch

from data.tokenizer import Tokenizer
from hf_families import FAMILIES, FAMILY_LIST
from hf_families.family import Family
from hf_families.mapping import load_converted_weights, to_our_weights, to_their_weights
from model.lm import LM
from model.transformer.parts import ff_width

if TYPE_CHECKING:  # transformers is imported when a checkpoint is loaded, not with this module
    from transformers import PretrainedConfig, PreTrainedModel

PathLike = Union[str, Path]
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))


def get_pretrained(name_or_path: PathLike, tokenizer_path: Optional[PathLike] = None,
                   dtype: torch.dtype = torch.float32) -> LM:
    """A hub name or local `save_pretrained` folder of a supported family as our LM (custom-transformer,
    eval mode, `dtype`). The tokenizer comes from `tokenizer_path` when given, else the model's own
    folder or hub name."""
    name = checkpoint_name(name_or_path)
    config = load_config(name)
    family = family_of(config, name)
    family.model_params(config)  # refuse unsupported options before loading any weights
    hf_model = load_hf_model(name, family, dtype)
    tokenizer = load_tokenizer(tokenizer_source(name, tokenizer_path), config)
    return convert(hf_model, tokenizer, family).to(dtype)


def checkpoint_name(name_or_path: PathLike) -> str:
    """A local folder's path as a string, or the hub name; a clear error for a path that is not a checkpoint."""
    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ValueError(f"{local} is not a transformers checkpoint folder (it needs config.json and the "
                             f"weights, as written by save_pretrained). For a run saved by this project use "
                             f"model_explorer.get_model_by_path instead.")
        return str(local)
    if looks_like_local_path(name):
        raise FileNotFoundError(f"no model folder at {local.resolve()}: give an existing folder written by "
                                f"save_pretrained, or a hub name such as 'gpt2' or 'EleutherAI/pythia-70m'")
    return name


def looks_like_local_path(name: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else that does not exist is a missing folder."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def load_config(name: str) -> "PretrainedConfig":
    """The checkpoint's config, read without running any code it ships (trust_remote_code=False); a
    checkpoint that needs its own code (config.json's "auto_map") is refused before transformers sees it."""
    from transformers import AutoConfig
    refuse_remote_code(name)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise OSError(f"could not load a model config from {name!r}: {e}\nGive a local folder written by "
                      f"save_pretrained, or a hub name such as 'gpt2' (the hub needs the network or a copy in "
                      f"the Hugging Face cache).") from e
    if getattr(config, "auto_map", None):
        raise ValueError(remote_code_message(name, "config.json", config.auto_map))
    return config


def refuse_remote_code(name: str) -> None:
    """A ValueError if the local folder `name` ships code for transformers to run: an "auto_map" entry in
    config.json or tokenizer_config.json (custom classes in the folder's .py files)."""
    import json
    for file in ("config.json", "tokenizer_config.json"):
        path = Path(name) / file
        if not path.is_file():
            continue
        try:
            auto_map = json.loads(path.read_text(encoding="utf-8")).get("auto_map")
        except (ValueError, AttributeError):
            continue  # not a JSON object: transformers says what is wrong with it
        if auto_map:
            raise ValueError(remote_code_message(name, file, auto_map))


def remote_code_message(name: str, file: str, auto_map: Any) -> str:
    return (f"{name!r} needs its own code to load (its {file} has an \"auto_map\": {auto_map}): pretrained.py never "
            f"runs code that comes with a checkpoint (trust_remote_code=False). Convert only checkpoints of the "
            f"supported families ({', '.join(FAMILIES)}), whose classes ship with transformers; if you trust this "
            f"code, remove \"auto_map\" from a copy of the folder so that transformers' own class is used.")


def family_of(config: "PretrainedConfig", name: str = "the checkpoint") -> Family:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        supported = ", ".join(f"{t} ({f.name})" for t, f in FAMILIES.items())
        raise ValueError(f"{name!r} is a {model_type!r} checkpoint, which pretrained.py does not convert. "
                         f"Supported model_types: {supported}")
    return FAMILIES[model_type]


def load_hf_model(name: str, family: Family, dtype: torch.dtype = torch.float32) -> "PreTrainedModel":
    """transformers' own model for the checkpoint (its download and file-layout code), with every weight
    present: a missing or unexpected tensor is a clear error, not a silently random weight."""
    model, info = auto_class(family).from_pretrained(name, dtype=dtype, output_loading_info=True,
                                                     trust_remote_code=False)
    info["unexpected_keys"] = [k for k in info.get("unexpected_keys", ()) if not family.is_ignored(k)]
    problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        raise ValueError(f"checkpoint {name!r} does not hold the weights its config describes: {problems} "
                         f"{info.get('error_msgs') or ''}")
    return model.eval()


def auto_class(family: Family) -> Any:
    """transformers' class for the family's models: AutoModelForMaskedLM for encoders, else AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    return AutoModelForMaskedLM if family.objective == "masked" else AutoModelForCausalLM


def tokenizer_source(name: str, tokenizer_path: Optional[PathLike] = None) -> str:
    """Where the tokenizer is read from: `tokenizer_path`, else the model's folder or hub name."""
    if tokenizer_path is not None:
        folder = Path(tokenizer_path).expanduser()
        if folder.exists():
            if not has_tokenizer_files(folder):
                raise FileNotFoundError(f"{folder} holds no tokenizer: it needs tokenizer.json (or vocab.json + "
                                        f"merges.txt, or tokenizer.model)")
            return str(folder)
        if looks_like_local_path(str(tokenizer_path)):
            raise FileNotFoundError(f"no tokenizer folder at {folder.resolve()}")
        return str(tokenizer_path)
    folder = Path(name)
    if folder.is_dir() and not has_tokenizer_files(folder):
        raise FileNotFoundError(f"{folder} holds the model but no tokenizer (tokenizer.json, or vocab.json + "
                                f"merges.txt): pass tokenizer_path= a folder or hub name that has it")
    return name


def has_tokenizer_files(folder: Path) -> bool:
    return any(all((folder / f).is_file() for f in files) for files in TOKENIZER_FILE_SETS)


def load_tokenizer(source: str, config: "PretrainedConfig") -> Tokenizer:
    """The checkpoint's tokenizer (transformers' fast tokenizer) as our Tokenizer, with the config's
    special ids and vocabulary size."""
    from transformers import AutoTokenizer
    refuse_remote_code(source)
    try:  # config: the class, for bare vocab files
        hf_tokenizer = AutoTokenizer.from_pretrained(source, config=config, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise OSError(f"could not load a tokenizer from {source!r}: {e}") from e
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"the tokenizer of {source!r} ({type(hf_tokenizer).__name__}) has no `tokenizers` "
                         f"pipeline (tokenizer.json): our Tokenizer wraps one")
    mask_token = None
    if family_of(config).objective == "masked":  # an encoder: [CLS] text [SEP] (<s> text </s>), and its mask
        bos, eos = hf_tokenizer.cls_token_id, hf_tokenizer.sep_token_id
        pad, mask_token = first_id(hf_tokenizer.pad_token_id, getattr(config, "pad_token_id", None)), hf_tokenizer.mask_token
        if None in (bos, eos, pad, mask_token):
            raise ValueError(f"the tokenizer of {source!r} lacks a token an encoder reads with (cls {bos}, sep {eos}, "
                             f"pad {pad}, mask {mask_token!r}): pass the tokenizer saved with this checkpoint")
    else:
        eos = first_id(getattr(config, "eos_token_id", None), hf_tokenizer.eos_token_id)
        if eos is None:
            raise ValueError(f"neither the config nor the tokenizer of {source!r} names an eos token")
        bos = first_id(getattr(config, "bos_token_id", None), hf_tokenizer.bos_token_id, eos)
        pad = first_id(getattr(config, "pad_token_id", None), hf_tokenizer.pad_token_id, eos)
    try:
        return Tokenizer(backend, eos_id=eos, bos_id=bos, pad_id=pad, vocab_size=config.vocab_size,
                         mask_token=mask_token)
    except ValueError as e:
        raise ValueError(f"the tokenizer of {source!r} does not fit the checkpoint (vocab_size "
                         f"{config.vocab_size}): {e}. Pass the tokenizer saved with this checkpoint "
                         f"(tokenizer_path=...)") from e


def first_id(*candidates: Any) -> Optional[int]:
    """The first candidate that is set; of a list (several eos ids, as Llama 3 instruct has), its first."""
    for candidate in candidates:
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return None


def convert(hf_model: "PreTrainedModel", tokenizer: Tokenizer, family: Optional[Family] = None) -> LM:
    """Our LM (custom-transformer, eval mode, float32) carrying the weights of a transformers model."""
    config = hf_model.config
    family = family or family_of(config)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the checkpoint's vocabulary has "
                         f"{config.vocab_size}: pass the tokenizer saved with this checkpoint (tokenizer_path=...)")
    params = family.model_params(config)
    lm = LM(params, tokenizer)
    shapes = {k: v.shape for k, v in lm.state_dict().items()}
    weights = to_our_weights(hf_model.state_dict(), family.rules(config, params), shapes, family.name)
    load_converted_weights(lm, weights, family.name)
    return lm.eval()


# ---- exporting ------------------------------------------------------------------------------------------

def export_hf(lm_or_run_folder: Union[LM, PathLike], out_folder: PathLike, force: bool = False) -> Path:
    """Write `out_folder` (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) that
    `transformers.AutoModelForCausalLM.from_pretrained` (a masked run: `AutoModelForMaskedLM`) and
    `AutoTokenizer.from_pretrained` load, for an LM (or a saved run folder) whose architecture one export
    family expresses (GPT-2: learned positions, layernorm, gelu/relu; Llama: rope, rmsnorm, swiglu; a masked
    run, BERT: post-LN, learned positions, embedding_norm, head_transform, output_bias). Otherwise a ValueError naming the fields that
    have no transformers equivalent. Returns the folder.

    Refused with a ValueError before anything is written: an `out_folder` that is a file, not writable, or
    not empty and not an earlier export; a run whose weights are not the file it saved (final.json's
    weights_sha256), a diverged run (final.json "diverged") or weights holding NaN / inf. `force=True`
    (`main.py --export-hf RUN OUT --force`) exports those anyway and writes into a non-empty folder."""
    out = check_export_folder(out_folder, force)  # before the model loads
    lm = lm_or_run_folder if isinstance(lm_or_run_folder, LM) else load_run_lm(lm_or_run_folder, force)
    nonfinite = [name for name, p in lm.named_parameters() if not torch.isfinite(p).all()]
    if nonfinite and not force:
        raise ValueError(f"the weights hold NaN / inf values in {len(nonfinite)} tensor(s) ({', '.join(nonfinite[:3])}"
                         f"{', ...' if len(nonfinite) > 3 else ''}): the exported model would only output NaN. "
                         f"Export it anyway with force=True (--force).")
    if lm.model_params.objective == "prefix":  # transformers' causal LMs read causally, its masked LMs both ways
        raise ValueError("objective='prefix': export_hf writes a transformers causal LM (GPT-2, Llama), which reads "
                         "every text causally, or a masked LM (BERT), which reads both ways everywhere, so this "
                         "model's prefix attention has no equivalent there. Runs of objective 'causal', 'fim' and "
                         "'masked' export.")
    family = export_family(lm.model_params)
    mp = dataclasses.replace(lm.model_params, dim_ff=ff_width(lm.model_params))  # the width, not None
    tokenizer = lm.tokenizer
    config = family.export_config(mp, tokenizer)
    hf_model = auto_class(family).from_config(config, dtype=lm.embedding.weight.dtype)
    their_shapes = {k: v.shape for k, v in hf_model.state_dict().items()}
    ours = {k: v.detach().cpu() for k, v in lm.state_dict().items()}
    if lm.pos_embedding is None and "pos_embedding.weight" in {r.ours for r in family.rules(config, mp)}:
        # sinusoidal (fixed) or no positions, as a position table
        table = lm.pos_encoding if lm.pos_encoding is not None else torch.zeros(mp.max_seq_len, mp.dim)
        ours["pos_embedding.weight"] = table.detach().cpu().to(lm.embedding.weight.dtype)
    weights = to_their_weights(ours, family.rules(config, mp), their_shapes, family.name)
    hf_model.load_state_dict(weights, strict=True)
    hf_model.save_pretrained(out)
    export_tokenizer(tokenizer, family).save_pretrained(out)
    # safetensors creates its file readable by its owner only: give it the mode of the other files
    os.chmod(out / "model.safetensors", os.stat(out / "config.json").st_mode & 0o777)
    return out


def export_tokenizer(tokenizer: Tokenizer, family: Family) -> Any:
    """Our tokenizer as transformers' PreTrainedTokenizerFast, with its special tokens named. For a masked LM
    also cls / sep / mask, and a post-processor putting bos before a text, so that transformers' fill-mask
    pipeline frames the input as LM.fill_mask does (bos + text, the rows it was trained on)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast
    names = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id, "pad_token": tokenizer.pad_id,
             "unk_token": tokenizer.unk_id}
    backend = tokenizer.hf
    if family.objective == "masked":
        names.update(cls_token=tokenizer.bos_id, sep_token=tokenizer.eos_id, mask_token=tokenizer.mask_id)
        backend = HFTokenizer.from_str(tokenizer.hf.to_str())  # a copy: the LM's own tokenizer stays as it is
        bos = tokenizer.hf.id_to_token(tokenizer.bos_id)
        frame = [bos] + [tokenizer.hf.id_to_token(i) for i in tokenizer.suffix_ids]
        backend.post_processor = TemplateProcessing(single=" ".join([bos, "$A"] + frame[1:]),
                                                    special_tokens=[(t, tokenizer.hf.token_to_id(t)) for t in set(frame)])
    special = {name: tokenizer.hf.id_to_token(i) for name, i in names.items() if i is not None}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


# what export_hf writes (transformers' save_pretrained): a folder holding only these is an earlier export
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json")


def check_export_folder(out_folder: PathLike, force: bool = False) -> Path:
    """`out_folder` as a Path, after checking that export_hf can write there: not a file, writable, and
    new, empty or an earlier export (whose files are replaced); with `force`, any folder. ValueError otherwise."""
    out = Path(out_folder).expanduser()
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot export to {out}: {existing} is a file, not a folder. Give a new folder.")
    if not os.access(existing, os.W_OK | os.X_OK) or os.statvfs(existing).f_flag & os.ST_RDONLY or \
            not can_make_folder_in(existing):
        raise ValueError(f"cannot export to {out}: {existing} is not writable (permissions, a read-only or "
                         f"virtual file system such as /proc). Give a folder you can write to.")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    earlier_export = "config.json" in names and "model.safetensors" in names and set(names) <= set(EXPORT_FILES)
    if names and not earlier_export and not force:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ValueError(f"cannot export to {out}: it already exists and is not empty ({shown}), and is not an "
                         f"earlier export. "
                         f"Give a new folder, or write into this one anyway with force=True (--force with "
                         f"--export-hf); an earlier export is overwritten without asking.")
    return out


def can_make_folder_in(folder: Path) -> bool:
    """Whether a folder can be created in `folder` (tried, then removed): permission bits do not tell for
    every file system (/proc, /sys, some network mounts)."""
    import tempfile
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".export-check-"))
        return True
    except OSError:
        return False


def load_run_lm(run_folder_or_timestamp: PathLike, force: bool = False) -> LM:
    """The LM of a saved run (a run folder, or a timestamp looked up under the save root), verified as
    loading it does: model.safetensors must be the file the run saved (final.json's weights_sha256), and
    the run must not have diverged; `force` lets both through (the export of a damaged or NaN model)."""
    from train.runs import find_run_folder
    from train.run_folder import load_run, weights_hash_problem
    folder = Path(run_folder_or_timestamp).expanduser()
    if not folder.exists():
        folder = find_run_folder(str(run_folder_or_timestamp))
    run = load_run(folder)
    problem = weights_hash_problem(folder, run.final)
    if problem and not force:
        raise ValueError(f"{folder}: {problem}. Export it anyway with force=True (--force).")
    if run.final.get("diverged") and not force:
        raise ValueError(f"{folder}: the run diverged (final.json: the loss became nan / inf), so its weights are not "
                         f"a trained model. Export it anyway with force=True (--force).")
    return run.lm


def export_family(mp: Any) -> Family:
    """The first export family that expresses `mp`; otherwise a ValueError listing, per family, the fields
    it has no equivalent for."""
    targets = [f for f in FAMILY_LIST if f.export_config is not None]
    reasons = {f.name: f.export_problems(mp) for f in targets}
    for family in targets:
        if not reasons[family.name]:
            return family
    listed = "\n  ".join(f"{name}: " + "; ".join(problems) for name, problems in reasons.items())
    raise ValueError(f"this model's architecture has no transformers equivalent among the export families:\n  "
                     f"{listed}")


def supported_model_types() -> Sequence[str]:
    """transformers' `model_type` values get_pretrained converts (hf_families/ has one table per family)."""
    return tuple(FAMILIES)
