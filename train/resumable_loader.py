"""The training batches of a run, in an order that survives stopping and resuming.

Epoch e visits the samples in a permutation drawn from a generator seeded by (seed, e) alone, so the
order does not depend on what ran before (an interrupted run, a resume, dropout drawing numbers).
The position is (epoch, batches done in it); Lightning stores it in its checkpoints through the
loader's `state_dict` / `load_state_dict` and restores it before iterating, and a resumed run starts
at the first batch it has not trained on.
"""
import math
from typing import Any, Dict, Iterator, List

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, RandomSampler, Sampler


class EpochBatchSampler(Sampler):
    """Batches of indices: a (seed, epoch)-seeded permutation (or 0..n-1 without shuffle), cut into
    batches, starting at batch `start`."""

    def __init__(self, n_samples: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = False):
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        round_ = math.floor if self.drop_last else math.ceil
        return round_(self.n_samples / self.batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n_samples, generator=generator)
        else:
            order = torch.arange(self.n_samples)
        for i in range(self.start, len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size].tolist()


class ResumableTrainLoader(Callback):
    """Wraps the data module's training DataLoader (same dataset, batch size, collate function) with an
    `EpochBatchSampler`. Pass it as the train dataloader AND as a callback: as a callback it follows
    which batch Lightning has trained (Lightning fetches a batch ahead, so counting the batches handed
    out would be off by one)."""

    def __init__(self, loader: DataLoader, seed: int):
        if not isinstance(loader, DataLoader) or loader.batch_size is None:
            raise TypeError("ResumableTrainLoader needs a torch DataLoader built with a batch_size "
                            f"(got {type(loader).__name__})")
        self.sampler = EpochBatchSampler(len(loader.dataset), loader.batch_size, seed,
                                         shuffle=isinstance(loader.sampler, RandomSampler), drop_last=loader.drop_last)
        self.loader = DataLoader(loader.dataset, batch_sampler=self.sampler, collate_fn=loader.collate_fn,
                                 num_workers=loader.num_workers,
                                 pin_memory=loader.pin_memory or torch.cuda.is_available(),  # async copies to the GPU
                                 worker_init_fn=loader.worker_init_fn,
                                 generator=torch.Generator().manual_seed(seed))  # iterating draws no global random number
        self.epoch = 0
        self.batches_done = 0  # in `epoch`

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        if self.batches_done >= len(self):  # the previous epoch is complete
            self.epoch, self.batches_done = self.epoch + 1, 0
        self.sampler.epoch, self.sampler.start = self.epoch, self.batches_done
        return iter(self.loader)

    def on_train_batch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch: Any,
                             batch_idx: int) -> None:
        self.batches_done = batch_idx + 1

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
