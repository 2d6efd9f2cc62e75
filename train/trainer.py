"""LMTrainer: what one training step, one validation and the optimizer are. Lightning runs the loop.

Edit points (README, "Customising"):
- `training_step`: the line `losses, n_samples = self.model.get_losses(batch, self.train_params)`.
- `log_hyperparams_and_time`: add `self.log_stat(name, value)` lines to track more metrics;
  it runs every `TrainParams.hyperparams_log_freq` batches.
"""
import math
import random
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.eval_mode import evaluating
from model.objectives import fixed_uniform
from train.train_params import TrainParams, check_train_params
from train.train_stats import StatsRecorder, Throughput, TrainStats


class LMTrainer(L.LightningModule):
    """Trains `lm` (the LM, kept as `self.model`) with `train_params`; records `train_stats`.

    `val_names` names the validation dataloaders in order (`LMDataModule.val_names`, e.g. ["main", "long"]).
    """

    def __init__(self, lm: nn.Module, train_params: TrainParams, val_names: Sequence[str] = ("main",),
                 train_stats: Optional[TrainStats] = None, run_identity: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.run_identity = run_identity  # task, data params, tokenizer: saved in checkpoints (train/resume.py)
        check_train_params(train_params)
        self.model = lm
        self.train_params = train_params
        self.val_names = list(val_names)
        self.stats = StatsRecorder(train_stats)
        self.n_samples_trained = 0  # `n` of the train_stats entries
        self.n_batches_trained = 0
        self.throughput = Throughput()
        self.elapsed_before = 0.0  # training time of the run before a resume
        self._fit_start: Optional[float] = None
        self._loss_sums: Dict[int, Tuple[Tensor, Tensor]] = {}  # dataloader_idx -> (sum of losses, tokens)
        self._expected_sets = 1  # evaluation sets of the running validation / test
        self._sample_prompt: Optional[Tuple[List[int], List[int]]] = None  # (prompt ids, expected ids)
        self._sample_row: List[int] = []  # the first validation sample's ids (masked, prefix, fim samples)
        self.progress_metrics: Dict[str, float] = {}  # shown by the progress bar (train/callbacks.py)
        self._rng_to_restore: Optional[Dict[str, Any]] = None

    # ---- training ------------------------------------------------------------------------------
    def training_step(self, batch: Dict[str, Tensor], batch_idx: int) -> Tensor:
        losses, n_samples = self.model.get_losses(batch, self.train_params)
        self.n_samples_trained += n_samples * self.world_size  # every rank trains on as many samples
        self.log_stat("stat/train_loss", losses.detach())
        return losses

    def log_hyperparams_and_time(self) -> None:
        """Runs every `hyperparams_log_freq` batches: the place to track more metrics with `self.log_stat`."""
        self.log_stat("stat/lr", self.optimizers().param_groups[0]["lr"])
        self.log_stat("stat/tokens_per_s", self.throughput.tokens_per_s() * self.world_size)
        self.log_stat("stat/elapsed_s", self.elapsed_s())

    def log_stat(self, name: str, value: Any) -> None:
        """Record `value` (a number or a 0-dim tensor) in train_stats as (steps, samples, counter, value),
        and in wandb when it is on. Tensors are turned into floats in batches, so this costs no GPU sync."""
        self.stats.record(name, self.global_step, self.n_samples_trained, value)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Done before the next batch rather than after this one: Lightning calls the callbacks' batch-end
        # hooks (a checkpoint) before the module's, and a resumed run must record exactly the same stats.
        self._log_periodically()
        self.n_batches_trained += 1

    def _log_periodically(self) -> None:
        """After every `hyperparams_log_freq` batches: the periodic stats, and the loss in the progress bar."""
        if self.n_batches_trained and self.n_batches_trained % self.train_params.hyperparams_log_freq == 0:
            self.log_hyperparams_and_time()
            losses = [v for name, (_, _, _, v) in self.flush_stats() if name == "stat/train_loss"]
            if losses:
                self.progress_metrics["loss"] = round(sum(losses) / len(losses), 4)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self._trainer is not None and self.trainer.training:  # count tokens on the CPU copy: no GPU sync
            self.throughput.add_tokens(int(batch["mask"][:, :-1].sum()))
        return batch

    @property
    def train_stats(self) -> TrainStats:
        """{name: [(s, n, c, v), ...]}; see train/train_stats.py."""
        self.flush_stats()
        return self.stats.stats

    @property
    def world_size(self) -> int:
        """Processes training together (1 unless DDP / FSDP runs on several devices)."""
        return self.trainer.world_size if self._trainer is not None else 1

    def flush_stats(self) -> List[Tuple[str, Tuple[int, int, int, float]]]:
        """Make every recorded value a float and send the new ones to the logger (wandb), if any.
        With several processes, the pending training losses become their mean over the ranks (one
        all-reduce per flush; every rank flushes at the same points, from the same hooks)."""
        if self.world_size > 1:
            self.stats.map_pending_tensors(lambda t: self.trainer.strategy.reduce(t, reduce_op="mean"))
        flushed = self.stats.flush()
        logger = self.logger if self._trainer is not None else None
        if logger is not None:
            for s, metrics in group_by_step(flushed):
                logger.log_metrics(metrics, step=s)
        return flushed

    def elapsed_s(self) -> float:
        """Wall time spent in fit() so far, across resumes."""
        if self._fit_start is None:
            return self.elapsed_before
        return self.elapsed_before + time.perf_counter() - self._fit_start

    def on_train_start(self) -> None:
        self._fit_start = time.perf_counter()
        self.throughput.resume()
        if self._rng_to_restore is not None:  # resuming: continue the random numbers where the run stopped
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_end(self) -> None:
        self._log_periodically()
        self.elapsed_before = self.elapsed_s()
        self._fit_start = None
        self.throughput.pause()
        self.flush_stats()

    # ---- validation and test -------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.throughput.pause()
        self._loss_sums = {}
        self._expected_sets = len(self.val_names)

    def validation_step(self, batch: Dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._add_loss_sum(batch, dataloader_idx)
        if batch_idx == 0 and dataloader_idx == 0:
            self._sample_prompt = sample_prompt(batch)
            self._sample_row = batch["x_indices"][0][batch["mask"][0]].tolist()

    def on_validation_epoch_end(self) -> None:
        losses = self._mean_losses()
        for i, loss in losses.items():
            self.log_stat(f"stat/val_loss:{self.val_names[i]}", loss)
        self.flush_stats()
        if not self.trainer.sanity_checking:
            self.print_progress(losses)
        if 0 in losses:
            self.progress_metrics["val_loss"] = round(losses[0], 4)
        self.throughput.resume()

    def test_step(self, batch: Dict[str, Tensor], batch_idx: int) -> None:
        self._add_loss_sum(batch, 0)

    def on_test_epoch_start(self) -> None:
        self._loss_sums = {}
        self._expected_sets = 1

    def on_test_epoch_end(self) -> None:
        for loss in self._mean_losses().values():
            self.log_stat("stat/test_loss", loss)
        self.flush_stats()

    def _add_loss_sum(self, batch: Dict[str, Tensor], key: int) -> None:
        loss_sum, n_tokens = loss_sum_and_count(self.model, batch)
        if key in self._loss_sums:
            total, count = self._loss_sums[key]
            loss_sum, n_tokens = total + loss_sum, count + n_tokens
        self._loss_sums[key] = (loss_sum, n_tokens)

    def _mean_losses(self) -> Dict[int, float]:
        """The exact corpus mean per set: summed token losses / counted tokens (one sync). With several
        processes each evaluated its own samples (train/devices.py): sums and counts are added over
        the ranks first, so every sample counts once."""
        if self.world_size > 1:
            zero = torch.zeros((), dtype=torch.float64, device=self.device)
            sums = torch.stack([torch.stack([total.double(), count.double()]) for total, count in
                                (self._loss_sums.get(i, (zero, zero)) for i in range(self._expected_sets))])
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            self._loss_sums = {i: (sums[i, 0], sums[i, 1]) for i in range(self._expected_sets) if sums[i, 1] > 0}
        return {i: (total / count.clamp(min=1)).item() for i, (total, count) in sorted(self._loss_sums.items())}

    def print_progress(self, losses: Dict[int, float]) -> None:
        """After each validation: the val losses and a few samples, in a few lines (the samples also
        go to the logger as a text table, when it has one: wandb)."""
        sets = " | ".join(f"{self.val_names[i]}: loss {loss:.4f} ppl {perplexity(loss):.2f}" for i, loss in losses.items())
        self.print(f"\nepoch {self.current_epoch} step {self.global_step} ({self.n_samples_trained} samples, "
                   f"{self.elapsed_s():.0f} s) | val {sets}")
        if not all(math.isfinite(loss) for loss in losses.values()):
            self.print("  (no samples: the loss is not finite)")  # sampling from nan probabilities is impossible
            return
        # rank 0 alone samples; under FSDP no rank can run the sharded model alone, so no samples then
        if not self.trainer.is_global_zero or "FSDP" in type(self.trainer.strategy).__name__:
            return
        samples = self.samples()
        for kind, text in samples:
            self.print(format_sample(kind, text, self.model.sample_mode))
        if samples and self.logger is not None and hasattr(self.logger, "log_text"):
            self.logger.log_text(key="samples", columns=["epoch", "step", "kind", "text"], step=self.global_step,
                                 data=[[self.current_epoch, self.global_step, kind, text] for kind, text in samples])

    def samples(self) -> List[Tuple[str, str]]:
        """(kind, text): one greedy and `n_print_samples - 1` sampled continuations of the first
        validation prompt (the empty prompt for plain text, sampled across line ends as the text
        streams in training), then the expected answer when the task has one. Text as LM.sample
        renders it (stream-mode text: <eos> as a newline). Other objectives show what they learn on
        the first validation sample (objective_samples). The global random state is left untouched."""
        n, length = self.train_params.n_print_samples, self.train_params.print_sample_len
        prompt, expected = self._sample_prompt or ([], [])
        tok = self.model.tokenizer
        out = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), \
                torch.no_grad(), torch.compiler.set_stance("force_eager"):
            objective = self.model.model_params.objective
            if n and (objective in ("masked", "fim") or (objective == "prefix" and not prompt)):
                return objective_samples(self.model, self._sample_row[1:length + 1], n, self.train_params.seed)
            for i in range(n):
                temperature, kind = (0.0, "greedy") if i == 0 else (1.0, "sampled")
                text = self.model.sample(pref=prompt or "", max_seq_len=len(prompt) + length, temperature=temperature,
                                         as_str=True, seed=self.train_params.seed + i, stop_at_eos=bool(prompt))
                out.append((kind, text))
        if prompt and expected and n:
            out.append(("expected", tok.decode(prompt + expected)))
        return out

    # ---- optimizer -----------------------------------------------------------------------------
    def configure_optimizers(self) -> Dict[str, Any]:
        tp = self.train_params
        optimizer = make_optimizer(self.model, tp)
        schedule = lr_schedule(tp, total_steps=self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints (for --resume) ------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["lm_trainer"] = {
            "train_stats": self.train_stats,
            "n_samples_trained": self.n_samples_trained,
            "n_batches_trained": self.n_batches_trained,
            "elapsed_s": self.elapsed_s(),
            "model_params": asdict(self.model.model_params),
            "run": self.run_identity,
            "rng": get_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint.get("lm_trainer")
        if state is None:
            raise ValueError("this checkpoint was not written by LMTrainer (no 'lm_trainer' entry): cannot resume from it")
        saved, current = state["model_params"], asdict(self.model.model_params)
        differences = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if differences:
            listed = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differences.items())
            raise ValueError(f"cannot resume: the checkpoint's model differs from this run's ModelParams ({listed}). "
                             "Resume with the config the checkpoint was trained with.")
        self.stats = StatsRecorder(state["train_stats"])
        self.n_samples_trained = state["n_samples_trained"]
        self.n_batches_trained = state["n_batches_trained"]
        self.elapsed_before = state["elapsed_s"]
        self._rng_to_restore = state["rng"]  # set in on_train_start, after Lightning's own setup


# ---- pieces also used by the benchmark's plain loop and the final evaluation ----------------------

def get_rng_state() -> Dict[str, Any]:
    """The global random states (dropout, and Python's `random` for edits that use it)."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_optimizer(lm: nn.Module, tp: TrainParams) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on weight matrices only: biases, norm gains and
    embeddings (token and position) are not decayed. The fused implementation (one kernel for all
    parameters), except with float16's gradient scaler, which Lightning cannot clip through
    (bfloat16 has none: train/precision.py's BF16Mixed clips before the fused step)."""
    embeddings = {id(m.weight) for m in lm.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in lm.named_parameters():
        no_decay_param = p.ndim < 2 or id(p) in embeddings or "embedding" in name
        (no_decay if no_decay_param else decay).append(p)
    groups = [{"params": decay, "weight_decay": tp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=tp.lr, betas=(tp.beta1, tp.beta2),
                             fused=tp.precision != "16-mixed" or None)


def lr_schedule(tp: TrainParams, total_steps: int) -> Callable[[int], float]:
    """Multiplier of `lr` at each optimizer step: linear warmup over `warmup_steps`, then cosine or
    linear decay to `min_lr_frac` at `total_steps`, or constant."""
    warmup, min_frac = tp.warmup_steps, tp.min_lr_frac

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if tp.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if tp.lr_schedule == "cosine":
            return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1 - (1 - min_frac) * progress

    return factor


def loss_sum_and_count(lm: nn.Module, batch: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
    """Summed cross-entropy over the batch's counted target tokens, and their number (both tensors)."""
    _, y, z = lm.get_batch_xyz(batch)
    loss_sum = F.cross_entropy(z.flatten(0, 1).float(), y.flatten(), ignore_index=-100, reduction="sum")
    return loss_sum.double(), (y != -100).sum()


def corpus_loss(lm: nn.Module, dataloader: Any, device: Optional[torch.device] = None) -> float:
    """Mean cross-entropy per counted token over a whole dataloader, in eval mode and float32."""
    device = device or next(lm.parameters()).device
    total = count = 0
    with evaluating(lm):
        for batch in dataloader:
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            loss_sum, n_tokens = loss_sum_and_count(lm, batch)
            total, count = total + loss_sum, count + n_tokens
    return float(total / count) if count else float("nan")


def sample_prompt(batch: Dict[str, Tensor]) -> Optional[Tuple[List[int], List[int]]]:
    """For tasks with a target part (synthetic): (prompt ids after the leading bos, expected answer ids)
    of the batch's first sample. None for plain text, which is sampled from the empty prompt."""
    if "target_mask" not in batch:
        return None
    ids = batch["x_indices"][0][batch["mask"][0]].tolist()
    targets = batch["target_mask"][0][batch["mask"][0]].nonzero().flatten().tolist()
    if not targets:
        return None
    start = targets[0]
    return ids[1:start], ids[start:-1]  # drop the leading bos and the final eos


def objective_samples(lm: nn.Module, ids: List[int], n: int, seed: int) -> List[Tuple[str, str]]:
    """(kind, text) lines showing what a masked, prefix or fim model does with the token ids of a
    validation sample (without its bos): masked: the sample with its fixed validation mask, filled in;
    prefix: its first half as the prompt, continued (greedy, then n - 1 sampled); fim: its first and last
    thirds, and the middle infilled (greedy, then sampled). Each ends with what the sample really holds."""
    tok, objective = lm.tokenizer, lm.model_params.objective
    if not ids:
        return []
    if objective == "masked":
        x = torch.tensor([ids])
        chosen = (fixed_uniform(x, torch.ones_like(x, dtype=torch.bool)) < lm.model_params.mask_frac)[0].tolist()
        if not any(chosen):
            chosen[len(ids) // 2] = True
        masked = [tok.mask_id if c else t for t, c in zip(ids, chosen)]
        return [("masked", tok.decode(masked)), ("filled", lm.fill_mask(masked)), ("expected", tok.decode(ids))]
    if objective == "prefix":
        prompt = ids[: max(1, len(ids) // 2)]
        out = [("greedy" if i == 0 else "sampled", lm.sample(pref=prompt, max_seq_len=len(ids), temperature=0.0 if i == 0 else 1.0,
                                                               seed=seed + i, stop_at_eos=False)) for i in range(n)]
        return [("prompt", tok.decode(prompt))] + out + [("expected", tok.decode(ids))]
    third = max(1, len(ids) // 3)
    prefix, middle, suffix = ids[:third], ids[third:len(ids) - third], ids[len(ids) - third:]
    out = [("infilled" if i == 0 else "sampled", lm.infill(prefix, suffix, max_seq_len=max(1, len(middle)) * 2,
                                                           temperature=0.0 if i == 0 else 1.0, seed=seed + i))
           for i in range(n)]
    return [("prefix", tok.decode(prefix)), ("suffix", tok.decode(suffix))] + out + [("middle", tok.decode(middle))]


def group_by_step(flushed: List[Tuple[str, Tuple[int, int, int, float]]]) -> List[Tuple[int, Dict[str, float]]]:
    """Consecutive entries of the same step go into one logger call (one wandb row)."""
    groups: List[Tuple[int, Dict[str, float]]] = []
    for name, (s, _, _, v) in flushed:
        if groups and groups[-1][0] == s and name not in groups[-1][1]:
            groups[-1][1][name] = v
        else:
            groups.append((s, {name: v}))
    return groups


def format_sample(kind: str, text: str, sample_mode: Optional[str]) -> str:
    """"  greedy : 'text'"; stream-mode text as it reads (its lines indented under the first), other
    samples quoted (repr), which shows <eos> and stray whitespace."""
    head = f"  {kind:<7}: "
    if sample_mode != "stream":
        return head + repr(text)
    return head + text.replace("\n", "\n" + " " * len(head))


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
