"""How a model's samples read: what `<eos>` means depends on the sample mode it was trained in.

- "stream" (plain text: PTB, Tiny Shakespeare, WikiText): the corpus is one text with `<eos>` after
  every line, so `<eos>` is a line end. Text samples show it as a newline, and sampling does not stop
  at it by default (a bare `lm.sample(pref="ROMEO:")` continues the play past the end of the line).
- "lines" (one sample per line) and "synthetic" (one problem per sample): `<eos>` ends the sample.
  Text samples show the token, and sampling stops at it by default.
- None (not known, e.g. GPT-2 loaded from the hub): as "lines".

`LM.sample_mode` holds the mode (set from LMDataModule.sample_mode when training, saved in the run's
params.json, read back by train/run_folder.load_run).
"""
from typing import Any, Dict, Iterable, List, Optional

STREAM = "stream"
SAMPLE_MODES = ("stream", "lines", "synthetic")


def check_sample_mode(sample_mode: Optional[str]) -> Optional[str]:
    if sample_mode is not None and sample_mode not in SAMPLE_MODES:
        raise ValueError(f"sample_mode must be one of {', '.join(SAMPLE_MODES)} or None, got {sample_mode!r}")
    return sample_mode


def resolve_stop_at_eos(stop_at_eos: Optional[bool], sample_mode: Optional[str]) -> bool:
    """stop_at_eos as given, or (None) the default of the sample mode: False for stream-mode text."""
    if stop_at_eos is None:
        return sample_mode != STREAM
    return bool(stop_at_eos)


def render_sample(tokenizer: Any, ids: Iterable[int], sample_mode: Optional[str]) -> str:
    """The text of `ids`: in stream mode each `<eos>` becomes a newline (the pieces between them are
    decoded apart, so a word tokenizer puts no space around it); otherwise the tokenizer's decode."""
    ids = [int(i) for i in ids]
    if sample_mode != STREAM:
        return tokenizer.decode(ids)
    pieces: List[List[int]] = [[]]
    for i in ids:
        if i == tokenizer.eos_id:
            pieces.append([])
        else:
            pieces[-1].append(i)
    return "\n".join(tokenizer.decode(piece) if piece else "" for piece in pieces)


def sample_mode_of_saved_run(params: Dict[str, Any]) -> Optional[str]:
    """The sample mode of a saved run: params.json's "sample_mode", or, for runs saved before it was
    recorded, what their data params imply without reading the data (built-in corpora stream, synthetic
    tasks are synthetic, custom folders are lines unless DataParams.sample_mode said otherwise)."""
    if params.get("sample_mode") in SAMPLE_MODES:
        return params["sample_mode"]
    data_params = params.get("data_params")
    if data_params is None:
        return None
    from data.tasks import NATURAL_TASKS, SYNTHETIC_TASKS  # data code, read only for old runs
    if data_params.dataset_name in SYNTHETIC_TASKS:
        return "synthetic"
    if data_params.sample_mode in ("stream", "lines"):
        return data_params.sample_mode
    return STREAM if data_params.dataset_name in NATURAL_TASKS else "lines"
