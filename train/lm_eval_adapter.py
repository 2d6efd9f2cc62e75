"""Our LM as an lm-evaluation-harness model, and `evaluate` running lm-eval's tasks on it.

    from train.lm_eval_adapter import ScaffoldLM, evaluate
    results = evaluate(lm, ["ptb_next_word"], limit=100)     # {task: {metric: value}}
    lm_eval.simple_evaluate(model=ScaffoldLM(lm), tasks=[...])  # or lm-eval's own entry point

Importing this module registers the class under "lm-scaffold" (`--model lm-scaffold --model_args lm=RUN`).
Tokenization replicates lm-eval's HF backend (HFLM) on the tokenizer's `tokenizers` pipeline, so a model
that transformers also holds gets HFLM's numbers: context/continuation pairs are encoded as HFLM does
(whole text, then split at the context's length), the tokenizer's own special tokens are added as HF's
`encode` adds them (GPT-2: none, a Llama tokenizer with a BOS post-processor: its bos), an empty context
is the bos id, and `add_bos_token=True` puts bos in front of every context (how models trained here read
text, as `lm.perplexities` does). The shipped local tasks are in the repo's eval_tasks/ folder, always
searched; tasks of lm-eval's own registry are searched only when a task is not found there (indexing
them takes ~10 s).
"""
import datetime
import difflib
import functools
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import LM as EvalLM, TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from model.eval_mode import evaluating
from model.lm import LM

LOCAL_TASKS = Path(__file__).resolve().parents[1] / "eval_tasks"
Request = Tuple[Any, List[int], List[int]]  # ((context, continuation) or None, context ids, continuation ids)
logger = logging.getLogger(__name__)


@register_model("lm-scaffold")
class ScaffoldLM(TemplateLM):
    """lm-eval's model API (loglikelihood, loglikelihood_rolling, generate_until) for our LM, on the
    model's device and in its dtype; hooks attached with `with lm.hooks(...)` apply to every request."""

    def __init__(self, lm: Union[LM, str, Path], batch_size: Union[int, str] = 16,
                 max_length: Optional[int] = None, add_bos_token: Optional[bool] = None,
                 max_gen_toks: int = 256, seed: int = 0) -> None:
        """lm: our LM, or a run folder / timestamp (for lm-eval's `--model_args lm=...`).
        max_length: the context (default model_params.max_seq_len); longer inputs lose their left end.
        add_bos_token: None as the tokenizer's own pipeline (HFLM's default), True bos before every
        text, False never. seed: generation with do_sample=True."""
        super().__init__()
        if not isinstance(lm, LM):
            lm = load_run_lm(lm)
        check_evaluable(lm)
        self.lm = lm
        self.tokenizer = None  # lm-eval reads `tokenizer` for chat templates; ours has none
        self.batch_size = 16 if batch_size in (None, "auto") else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.max_length = int(max_length or lm.model_params.max_seq_len)
        self.add_bos_token = add_bos_token
        self.max_gen_toks = int(max_gen_toks)
        self.seed = seed
        self._bos_text = lm.tokenizer.decode([lm.tokenizer.bos_id])

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def eot_token_id(self) -> int:
        return self.lm.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.lm.tokenizer.bos_id

    @property
    def tokenizer_name(self) -> str:
        return f"lm-scaffold-{self.lm.tokenizer.vocab_size}"

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> List[int]:
        """HFLM.tok_encode on our tokenizer: special tokens as the pipeline adds them unless told
        otherwise, none when the text already starts with bos."""
        tok = self.lm.tokenizer
        if add_special_tokens is None and self._bos_text and string.startswith(self._bos_text):
            add_special_tokens = False
        if add_special_tokens is None and self.add_bos_token is not None:
            ids = tok(string)
            return [tok.bos_id] + ids if self.add_bos_token and ids[:1] != [tok.bos_id] else ids
        return tok.hf.encode(string, add_special_tokens=add_special_tokens is not False).ids

    def tok_decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.lm.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- scoring ------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests: List[Request], disable_tqdm: bool = False,
                              **kwargs: Any) -> List[Tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives it) per request.

        The model reads (context + continuation)[:-1], the last max_length tokens of it (HFLM's left
        truncation). Requests with the same input (the choices of a multiple-choice question whose
        answers are one token) share one row. Rows are sorted longest first and batched; a batch is
        left-padded (the cache's pad_left masks the padding) so that only the last positions, the ones
        holding continuations, go through the output projection."""
        for _, context, continuation in requests:
            if not context or not continuation:
                raise ValueError("loglikelihood requests need a non-empty context and continuation (token ids)")
            if len(continuation) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens is longer than the model's "
                                 f"context ({self.max_length})")
        users: Dict[Tuple[int, ...], List[int]] = {}  # model input -> the requests reading it
        for i, (_, context, continuation) in enumerate(requests):
            users.setdefault(tuple((context + continuation)[-(self.max_length + 1):][:-1]), []).append(i)
        inputs = sorted(users, key=lambda ids: (-len(ids), ids))
        results: List[Optional[Tuple[float, bool]]] = [None] * len(requests)
        tok = self.lm.tokenizer
        with evaluating(self.lm), torch.no_grad():
            for start in range(0, len(inputs), self.batch_size):
                batch = inputs[start:start + self.batch_size]
                width = len(batch[0])
                keep = max(len(requests[i][2]) for ids in batch for i in users[ids])
                pad_left = [width - len(ids) for ids in batch]
                x = torch.full((len(batch), width), tok.pad_id, dtype=torch.long)
                for row, ids in enumerate(batch):
                    x[row, pad_left[row]:] = torch.tensor(ids)
                x = x.to(self.device)
                cache = self.lm.new_kv_cache(len(batch), pad_left=pad_left) if any(pad_left) else None
                logits = self.lm(x, kv_cache=cache, logits_to_keep=min(keep, width))
                logprobs = F.log_softmax(logits.float(), dim=-1)  # [batch, keep, vocab]
                greedy = logprobs.argmax(dim=-1)
                for row, ids in enumerate(batch):
                    for i in users[ids]:
                        request, _, continuation = requests[i]
                        n = len(continuation)
                        target = torch.tensor(continuation, device=self.device)
                        picked = logprobs[row, -n:].gather(-1, target[:, None]).sum()
                        results[i] = (float(picked), bool(torch.equal(greedy[row, -n:], target)))
                        if request is not None:
                            self.cache_hook.add_partial("loglikelihood", request, results[i])
        return results

    def loglikelihood_rolling(self, requests: List[Any], disable_tqdm: bool = False) -> List[float]:
        """Each text's total log-likelihood from bos on, in lm-eval's disjoint rolling windows of the
        model's context (every token predicted once, each window with as much context as fits)."""
        windows: List[Request] = []
        owner: List[int] = []
        for index, request in enumerate(requests):
            (text,) = request.args
            for context, continuation in map(lm_eval_utils.make_disjoint_window, lm_eval_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(index)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows) if windows else []):
            totals[index] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ---- generation ---------------------------------------------------------------------------------
    def generate_until(self, requests: List[Any], disable_tqdm: bool = False) -> List[str]:
        """Continuations by `lm.sample` (which reads bos + context), cut at the first `until` string or eos.
        Greedy unless do_sample (then temperature, top_k, top_p). Contexts keep their last
        max_length - max_gen_toks - 1 tokens (at least half the context; generation stops when it is full)."""
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        collator = Collator([r.args for r in requests], sort_fn=lambda a: (-len(self.tok_encode(a[0])), a[0]),
                            group_by="gen_kwargs", group_fn=lambda a: a[1])
        out = []
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            kwargs = normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            room = max(self.max_length - max_gen_toks - 1, self.max_length // 2)
            prompts = [self.tok_encode(c)[-room:] for c in contexts]
            sampling = bool(kwargs.get("do_sample"))
            top_p = kwargs.get("top_p")
            samples = self.lm.sample(
                prompts, max_seq_len=max(map(len, prompts)) + max_gen_toks,
                temperature=float(kwargs.get("temperature") or 1.0) if sampling else 0.0,
                top_k=kwargs.get("top_k") if sampling else None,
                nucleus=top_p if sampling and top_p is not None and top_p < 1 else None,
                as_str=False, seed=self.seed, stop_at_eos=True)
            for context, gen_kwargs, prompt, sample in zip(contexts, all_kwargs, prompts, samples):
                text = self.tok_decode(sample[len(prompt):][:max_gen_toks])
                text = postprocess_generated_text(text, stop=until, think_end_token=None)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                out.append(text)
        return collator.get_original(out)


def check_evaluable(lm: LM) -> None:
    """A ValueError for a model lm-eval cannot score: a masked LM gives no next-token log-probabilities."""
    if lm.model_params.objective == "masked":
        raise ValueError("lm-eval scores a task's answers by their next-token log-probabilities, which a masked "
                         "LM (objective='masked': BERT, RoBERTa, DistilBERT, masked runs) does not give. Read it "
                         "with lm.fill_mask, or score texts with lm.perplexities (its pseudo-perplexity).")


def load_run_lm(run_folder_or_timestamp: Union[str, Path]) -> LM:
    """The LM of a saved run folder, or of the run with this timestamp under the save root."""
    from train.run_folder import load_run
    from train.runs import find_run_folder
    folder = Path(run_folder_or_timestamp).expanduser()
    if not folder.exists():
        folder = find_run_folder(str(run_folder_or_timestamp))
    return load_run(folder).lm


# ---- running tasks ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def task_manager(include_paths: Tuple[str, ...], include_defaults: bool) -> Any:
    """lm-eval's TaskManager over our eval_tasks/ and `include_paths` (and lm-eval's own tasks when
    include_defaults); cached, since building one reads every task YAML."""
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=[str(LOCAL_TASKS), *include_paths], include_defaults=include_defaults)


def resolve_tasks(tasks: Union[str, Sequence[str]], include_path: Union[None, str, Path, Sequence] = None) -> Tuple[List[str], Any]:
    """(task names, a TaskManager that knows them): a ValueError naming the closest known names for a
    task that is not found, and for an include path that does not exist."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no tasks given: name at least one lm-eval task, e.g. ptb_next_word")
    paths = [] if include_path is None else [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    for path in paths:
        if not Path(path).expanduser().is_dir():
            raise ValueError(f"include path {str(path)!r} is not a folder: give a folder of lm-eval task YAMLs")
    include = tuple(str(Path(p).expanduser().resolve()) for p in paths)
    manager = task_manager(include, False)
    if any(not manager.match_tasks([n]) for n in names):
        manager = task_manager(include, True)
    missing = [n for n in names if not manager.match_tasks([n])]
    if missing:
        hints = "; ".join(f"{n!r}: closest {difflib.get_close_matches(n, manager.all_tasks, n=3, cutoff=0.5) or 'none'}"
                          for n in missing)
        raise ValueError(f"unknown lm-eval task(s) {missing} ({hints}). Local tasks are in {LOCAL_TASKS}; "
                         f"give more with include_path")
    return names, manager


def check_eval_request(tasks: Union[str, Sequence[str]], limit: Optional[Union[int, float]] = None,
                       num_fewshot: Optional[int] = None,
                       include_path: Union[None, str, Path, Sequence] = None) -> Tuple[List[str], Any]:
    """resolve_tasks after checking limit and num_fewshot: what evaluate refuses, refused before a model loads."""
    if limit is not None and (isinstance(limit, bool) or limit <= 0):
        raise ValueError(f"limit must be > 0 (documents per task, or a fraction below 1), got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    return resolve_tasks(tasks, include_path)


def evaluate(lm: Union[LM, EvalLM], tasks: Union[str, Sequence[str]], num_fewshot: Optional[int] = None,
             limit: Optional[Union[int, float]] = None, batch_size: Optional[int] = None,
             include_path: Union[None, str, Path, Sequence] = None, seed: int = 0,
             save_folder: Optional[Union[str, Path]] = None) -> Dict[str, Dict[str, Any]]:
    """lm_eval.simple_evaluate on our LM (or any lm-eval model, e.g. HFLM): returns its "results" ({task: {metric: value}}), and writes
    the whole result (configs, versions, samples left out) to save_folder/eval/{date}.json when given.
    limit: at most this many documents per task (a float < 1: that fraction). Bad task names, include
    paths and limits are refused before the model runs."""
    return evaluate_full(lm, tasks, num_fewshot, limit, batch_size, include_path, seed, save_folder)["results"]


def evaluate_full(lm: Union[LM, EvalLM], tasks: Union[str, Sequence[str]], num_fewshot: Optional[int] = None,
                  limit: Optional[Union[int, float]] = None, batch_size: Optional[int] = None,
                  include_path: Union[None, str, Path, Sequence] = None, seed: int = 0,
                  save_folder: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """evaluate, returning simple_evaluate's whole output (what make_table reads; "saved_to": the JSON)."""
    names, manager = check_eval_request(tasks, limit, num_fewshot, include_path)
    import lm_eval
    model = lm if isinstance(lm, EvalLM) else ScaffoldLM(lm, batch_size=batch_size or 16, seed=seed)
    out = lm_eval.simple_evaluate(model=model, tasks=names, num_fewshot=num_fewshot, limit=limit,
                                  task_manager=manager, log_samples=False, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    if save_folder is not None:
        folder = Path(save_folder) / "eval"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{datetime.datetime.now().strftime('%Y-%m-%d_%H-%M-%S-%f')}.json"
        path.write_text(json.dumps(out, indent=2, default=str))
        out["saved_to"] = str(path)
        logger.info("lm-eval results written to %s", path)
    return out


def flat_metrics(results: Dict[str, Dict[str, Any]]) -> Dict[str, float]:
    """{"eval/{task}/{metric}": value} of the numeric metrics in evaluate's results (lm-eval names
    them "acc,none"; the ",none" filter suffix is dropped, other filters kept as metric@filter)."""
    flat = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or key == "alias":
                continue
            metric, _, filt = key.partition(",")
            flat[f"eval/{task}/{metric}" + (f"@{filt}" if filt and filt != "none" else "")] = float(value)
    return flat
