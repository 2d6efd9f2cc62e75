"""Lightning callbacks of a run: keep `last.ckpt` for --resume, stop cleanly on Ctrl-C or SIGTERM, stop
a diverged run, show the loss, gather FSDP-sharded weights at the end."""
import contextlib
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE


class LastCheckpoint(Callback):
    """Keeps `path` (Lightning's full training state: weights, optimizer, scheduler, loops, data
    position) up to date: after every validation, at the end of an epoch without validation, and at
    the batch where training stops (max_steps reached or Ctrl-C), so `--resume` continues from the
    exact point where the run stopped.

    Lightning's ModelCheckpoint is not used because after a stop in mid-epoch it writes its last
    checkpoint at train end, where Lightning already counts the epoch as finished: a resume would
    then skip the rest of that epoch. Each write goes to a temporary file that replaces the old one.
    """

    def __init__(self, path: Union[str, Path], skip: Callable[[], bool] = lambda: False):
        self.path = Path(path)
        self.skip = skip  # True while the model is not worth keeping (a diverged run keeps its last good checkpoint)
        self._stop_saved_at: Optional[int] = None  # global step of the checkpoint written at a stop
        self.failed: Optional[str] = None  # why the last write failed (disk full, ...), if it did
        self.saved_at_step: Optional[int] = None  # global step of the last checkpoint written; None before the first

    def save(self, trainer: "L.Trainer") -> None:
        """Every rank takes part (the state may be spread over them); rank 0 writes the file."""
        if self.skip():
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            if trainer.is_global_zero:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
            self.saved_at_step = trainer.global_step
        except OSError as error:  # the checkpoint only serves --resume: say so, keep training, leave no .tmp
            tmp.unlink(missing_ok=True)
            if self.failed is None:
                print(f"\nwarning: could not write the checkpoint {self.path} ({error.strerror or error}); training "
                      "goes on, the run is saved at its end", flush=True)
            self.failed = str(error.strerror or error)

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step:
            self.save(trainer)
            self._stop_saved_at = trainer.global_step

    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not trainer.sanity_checking and not self._stopped_mid_epoch(trainer):
            self.save(trainer)

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not sum(trainer.num_val_batches or [0]) and not self._stopped_mid_epoch(trainer):
            self.save(trainer)

    def _stopped_mid_epoch(self, trainer: "L.Trainer") -> bool:
        """After a stop in mid-epoch, Lightning validates once more and ends the epoch: the checkpoint
        of the stopping batch, which an uninterrupted run continues from, must stay (that validation
        draws random numbers, and a checkpoint at epoch end would skip the epoch's remaining batches)."""
        return (self._stop_saved_at == trainer.global_step
                and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


class CtrlCStop(Callback):
    """The first Ctrl-C (SIGINT) or SIGTERM (what `kill`, a cluster's scheduler or a shutdown sends) lets
    the current optimizer step finish, then stops training as if it were done (the run is then saved,
    marked interrupted). A second one stops at once. `signal_name` says which signal stopped the run.

        with ctrl_c.handling_ctrl_c():
            trainer.fit(...)

    (The handlers are installed around fit(), not in a hook: Lightning puts back at its teardown
    whatever handlers were there when fit() set up. Lightning also installs a SIGTERM handler of its
    own, which ends fit() with an exception at the end of the epoch; on_train_start puts ours back.)"""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: Optional[str] = None  # "SIGINT" or "SIGTERM" once one has arrived

    @contextlib.contextmanager
    def handling_ctrl_c(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        previous = {signum: signal.signal(signum, self._on_signal) for signum in self.SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signal_name = True, name
        what = "Ctrl-C" if signum == signal.SIGINT else name
        print(f"\n{what}: stopping after this batch, then saving (press Ctrl-C again to stop at once)", flush=True)

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step_done = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if not (step_done or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            return
        if trainer.world_size > 1:
            # A Ctrl-C, or a stop decided by a callback before this one (NonFiniteLoss), may reach one rank
            # only: every rank must stop at the same step, or the others would wait for it forever.
            flags = torch.tensor([float(self.requested), float(trainer.should_stop)], device=pl_module.device)
            flags = trainer.strategy.reduce(flags, reduce_op="sum").tolist()
            self.requested = self.requested or flags[0] > 0
            trainer.should_stop = trainer.should_stop or flags[1] > 0
        if self.requested:
            trainer.should_stop = True


class FullWeights(Callback):
    """Under FSDP each rank holds a shard of every block: at the end of training all ranks gather the
    full weights for rank 0 (`weights`, the LM's own keys), which then evaluates and saves them.
    None with other strategies, where the model is whole on every rank."""

    def __init__(self) -> None:
        self.weights: Optional[dict] = None

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        from lightning.pytorch.strategies import FSDPStrategy
        if isinstance(trainer.strategy, FSDPStrategy):
            full = trainer.strategy.lightning_module_state_dict()  # every rank takes part
            if trainer.is_global_zero:
                self.weights = {key[len("model."):]: value for key, value in full.items()
                                   if key.startswith("model.")}

class NonFiniteLoss(Callback):
    """Watches the training loss. When it is nan or inf for `patience` batches in a row, the run has
    diverged: `diverged_at_step` records the step where that began and, with `stop`, training stops.
    The losses are read every `check_every` batches (a single GPU sync then, none per step)."""

    def __init__(self, check_every: int, stop: bool = True, patience: int = 3):
        self.check_every, self.stop, self.patience = max(1, check_every), stop, patience
        self.diverged_at_step: Optional[int] = None
        self.value: Optional[float] = None  # the first non-finite loss of the streak
        self._pending: List[Tuple[int, torch.Tensor]] = []  # (step, loss) not read yet
        self._streak: List[Tuple[int, float]] = []  # the current run of non-finite losses

    @property
    def diverged(self) -> bool:
        return self.diverged_at_step is not None

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self.diverged or not torch.is_tensor(loss):
            return
        self._pending.append((pl_module.global_step, loss.detach()))
        if len(self._pending) >= self.check_every or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.check(trainer)

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self.diverged and self._pending:
            self.check(trainer)

    def check(self, trainer: "L.Trainer") -> None:
        values = torch.stack([loss.float() for _, loss in self._pending]).tolist()
        steps = [step for step, _ in self._pending]
        self._pending = []
        for step, value in zip(steps, values):
            if math.isfinite(value):
                self._streak = []
                continue
            self._streak.append((step, value))
            if len(self._streak) >= self.patience:
                self.diverged_at_step, self.value = self._streak[0]
                if self.stop:
                    trainer.should_stop = True
                return


class _ShowsModuleMetrics:
    """Progress bar showing `pl_module.progress_metrics` (plain floats the LMTrainer updates when it
    has them anyway), so that the bar, refreshed every batch, never reads a GPU tensor (a sync)."""

    def get_metrics(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> dict:
        return {**super().get_metrics(trainer, pl_module), **getattr(pl_module, "progress_metrics", {})}


class RichBar(_ShowsModuleMetrics, RichProgressBar):
    pass


class TQDMBar(_ShowsModuleMetrics, TQDMProgressBar):
    pass


class LineProgress(ProgressBar):
    """Progress for logs, `nohup` and CI (standard output not a terminal): one plain line every
    `every_s` seconds (step, loss, tokens/s, ETA) instead of a bar that redraws and is never seen."""

    default_every_s = 10.0

    def __init__(self, every_s: Optional[float] = None, stream: Any = None):
        super().__init__()
        self.every_s = self.default_every_s if every_s is None else every_s
        self.stream = stream
        self._enabled = True
        self._last = 0.0
        self._last_tokens = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def print(self, *args: Any, **kwargs: Any) -> None:
        """LightningModule.print goes through the progress bar: here a plain, flushed print."""
        print(*args, **{"flush": True, **kwargs})

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._last = time.perf_counter()
        self._last_tokens = self._tokens(pl_module)

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if not self._enabled or now - self._last < self.every_s or not trainer.is_global_zero:
            return
        tokens = self._tokens(pl_module)
        rate = (tokens - self._last_tokens) / max(now - self._last, 1e-9)
        self._last, self._last_tokens = now, tokens
        print(self.line(trainer, pl_module, rate), file=self.stream or sys.stdout, flush=True)

    @staticmethod
    def _tokens(pl_module: "L.LightningModule") -> int:
        throughput = getattr(pl_module, "throughput", None)
        return throughput.total_tokens if throughput is not None else 0

    @staticmethod
    def line(trainer: "L.Trainer", pl_module: "L.LightningModule", tokens_per_s: float) -> str:
        """e.g. "step 120/600 (epoch 0) | loss 2.4512 | 10,234 tokens/s | ETA 1m05s"."""
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        known_total = bool(total) and total != float("inf")
        parts = [f"step {step}/{total}" if known_total else f"step {step}", f"(epoch {trainer.current_epoch})"]
        loss = getattr(pl_module, "progress_metrics", {}).get("loss")
        if loss is not None:
            parts.append(f"| loss {loss:.4f}")
        parts.append(f"| {tokens_per_s:,.0f} tokens/s")
        elapsed = pl_module.elapsed_s() if hasattr(pl_module, "elapsed_s") else None
        if elapsed and step and known_total:
            remaining = elapsed / step * max(0, total - step)
            parts.append(f"| ETA {int(remaining // 60)}m{int(remaining % 60):02d}s")
        return " ".join(parts)


def progress_bar(interactive: Optional[bool] = None) -> ProgressBar:
    """Lightning's own bar (Rich when installed, else tqdm) showing the LMTrainer's metrics when standard
    output is a terminal; otherwise (logs, nohup, CI) a plain progress line every ~10 s."""
    if interactive is None:
        interactive = sys.stdout.isatty()
    if not interactive:
        return LineProgress()
    return RichBar() if _RICH_AVAILABLE else TQDMBar()
