"""The child process of `bench/bench_startup.py --breakdown`: runs `main.py ARGS` in this process and prints,
on standard error, a line "probe <seconds since BENCH_T0> <milestone>" at each milestone of a run's start.

    BENCH_T0=$(python3 -c 'import time; print(time.time())') python3 bench/startup_probe.py --config=test-nlp --no-wandb

Milestones: interpreter up, torch imported, lightning imported, the training code imported (train.run), the
runs checked, the data module built, the model built, the Trainer built, fit entered, the first training step
begun and ended, training ended, the final evaluation done, exit. The timings wrap functions of train.run from
outside (this file only): the run itself is exactly `main.py`'s.
"""
import atexit
import os
import sys
import time

T0 = float(os.environ.get("BENCH_T0", time.time()))


def mark(what: str) -> None:
    print(f"probe {time.time() - T0:.3f} {what}", file=sys.stderr, flush=True)


mark("interpreter up")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
atexit.register(mark, "exit")

import torch  # noqa: E402

mark("import torch")
import lightning.pytorch  # noqa: E402,F401

mark("import lightning")
import main  # noqa: E402
import train.run as run  # noqa: E402

mark("import train.run (our modules)")


def timed(name: str, fn, after: str):
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        mark(after)
        return result
    setattr(run, name, wrapper)


class _Milestones(lightning.pytorch.Callback):
    def __init__(self):
        self.steps = 0

    def on_fit_start(self, trainer, pl_module):
        mark("fit entered")

    def on_train_start(self, trainer, pl_module):
        mark("train start (after set-up, sanity check)")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.steps == 0:
            mark("first training step begins")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1
        if self.steps in (1, 2, 10):
            mark(f"training step {self.steps} done")

    def on_validation_start(self, trainer, pl_module):
        mark("validation begins")

    def on_validation_end(self, trainer, pl_module):
        mark("validation done")

    def on_train_end(self, trainer, pl_module):
        mark("training ended")


_check_runs = main.check_runs


def check_runs(*args, **kwargs):
    _check_runs(*args, **kwargs)
    mark("runs checked (main.check_runs)")


main.check_runs = check_runs
timed("LMDataModule", run.LMDataModule, "data module built")
timed("LM", run.LM, "model built")
timed("make_trainer", run.make_trainer, "Trainer built")
timed("final_losses", run.final_losses, "final evaluation done")
_run_training = run.run_training
run.run_training = lambda namer, callbacks=(): _run_training(namer, [*callbacks, _Milestones()])

if __name__ == "__main__":
    main.main(sys.argv[1:])
