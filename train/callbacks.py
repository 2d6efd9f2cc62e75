"""Lightning callbacks of a run: keep `last.ckpt` for --resume, stop cleanly on Ctrl-C, show the loss,
gather FSDP-sharded weights at the end."""
import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import lightning as L
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

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self._stop_saved_at: Optional[int] = None  # global step of the checkpoint written at a stop

    def save(self, trainer: "L.Trainer") -> None:
        """Every rank takes part (the state may be spread over them); rank 0 writes the file."""
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

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
    """The first Ctrl-C lets the current optimizer step finish, then stops training as if it were
    done (the run is then saved, marked interrupted). A second Ctrl-C stops at once.

        with ctrl_c.handling_ctrl_c():
            trainer.fit(...)

    (The handler is installed around fit(), not in a hook: Lightning puts back at its teardown
    whatever handlers were there when fit() set up.)"""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def handling_ctrl_c(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this batch, then saving (press Ctrl-C again to stop at once)", flush=True)

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step_done = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if not (step_done or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            return
        requested = self.requested
        if trainer.world_size > 1:  # a Ctrl-C reaches the ranks at different moments: all stop at the same step
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
            self.requested = requested
        if requested:
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


class _ShowsModuleMetrics:
    """Progress bar showing `pl_module.progress_metrics` (plain floats the LMTrainer updates when it
    has them anyway), so that the bar, refreshed every batch, never reads a GPU tensor (a sync)."""

    def get_metrics(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> dict:
        return {**super().get_metrics(trainer, pl_module), **getattr(pl_module, "progress_metrics", {})}


class RichBar(_ShowsModuleMetrics, RichProgressBar):
    pass


class TQDMBar(_ShowsModuleMetrics, TQDMProgressBar):
    pass


def progress_bar() -> ProgressBar:
    """Lightning's own choice (Rich when installed, else tqdm), showing the LMTrainer's metrics."""
    return RichBar() if _RICH_AVAILABLE else TQDMBar()
