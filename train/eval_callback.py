"""TrainParams.eval_tasks while training: lm-eval's tasks after every validation and at the end of training.

Each metric goes into train_stats (and so wandb) as `eval/{task}/{metric}` (train/lm_eval_adapter.py,
flat_metrics), at the step it was measured; the last values also go into final.json (train/run.py).
Task names are checked when the callback is made, before training starts.
"""
from typing import Any, Dict, List, Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback

from train.lm_eval_adapter import check_eval_request, evaluate, flat_metrics


class LMEvalCallback(Callback):
    """Scores the model on `tasks` (at most `limit` documents each) on global rank 0; the other ranks
    wait at their next collective. Throughput is paused meanwhile, so tokens/s counts training alone."""

    def __init__(self, tasks: Sequence[str], limit: Optional[int] = None, batch_size: int = 16, seed: int = 0):
        self.tasks: List[str] = check_eval_request(list(tasks), limit)[0]
        self.limit = limit
        self.batch_size = batch_size
        self.seed = seed
        self.last: Dict[str, float] = {}  # the latest {"eval/{task}/{metric}": value}
        self._evaluated_at: Optional[int] = None  # global step of `last`

    def on_validation_end(self, trainer: "L.Trainer", pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: "L.Trainer", pl_module: Any) -> None:
        self.run(trainer, pl_module)

    def run(self, trainer: "L.Trainer", pl_module: Any) -> None:
        """Evaluate once per global step (a validation at the last step also serves the end of training)."""
        if not trainer.is_global_zero or self._evaluated_at == trainer.global_step:
            return
        pl_module.throughput.pause()
        try:
            results = evaluate(pl_module.model, self.tasks, limit=self.limit, batch_size=self.batch_size,
                               seed=self.seed)
        finally:
            pl_module.throughput.resume()
        self.last = flat_metrics(results)
        self._evaluated_at = trainer.global_step
        for name, value in self.last.items():
            pl_module.log_stat(name, value)
        shown = ", ".join(f"{name[len('eval/'):]} {value:.4g}" for name, value in self.last.items()
                          if "_stderr" not in name)
        print(f"step {trainer.global_step}: lm-eval {shown}", flush=True)
