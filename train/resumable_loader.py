"""The training batches of a run, in an order that survives stopping and resuming.

Epoch e visits the samples in a permutation drawn from a generator seeded by (seed, e) alone, so the
order does not depend on what ran before (an interrupted run, a resume, dropout drawing numbers).
The position is (epoch, batches done in it); Lightning stores it in its checkpoints through the
loader's `state_dict` / `load_state_dict` and restores it before iterating, and a resumed run starts
at the first batch it has not trained on.

With several processes (DDP), batch i of an epoch is the same `batch_size * world_size` samples that one
process with that batch size would take, cut into equal parts, one per rank (see train/devices.py), so
a run's data order does not depend on how many devices it uses.
"""
from typing import Any, Dict, Iterator, List

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, RandomSampler, Sampler

from train.devices import rank_and_world


class EpochBatchSampler(Sampler):
    """Batches of indices: a (seed, epoch)-seeded permutation (or 0..n-1 without shuffle), cut into
    global batches of batch_size * world_size, starting at batch `start`; this rank's part of each.

    With world_size > 1 every rank gets the same number of samples per step (DDP averages the ranks'
    gradients, which equals the gradient of the whole global batch only then): the last global batch
    of an epoch drops its last (size % world_size) samples, and is left out if smaller than world_size."""

    def __init__(self, n_samples: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = False,
                 world_size: int = 1):
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        self.shuffle, self.drop_last, self.world_size = shuffle, drop_last, world_size
        self.epoch, self.start = 0, 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        full, rest = divmod(self.n_samples, self.global_batch_size)
        return full + (rest >= self.world_size and not self.drop_last)

    def __iter__(self) -> Iterator[List[int]]:
        rank, world = rank_and_world()
        if world != self.world_size:
            raise RuntimeError(f"the training loader was built for {self.world_size} process(es) but runs in {world}")
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n_samples, generator=generator)
        else:
            order = torch.arange(self.n_samples)
        size = self.global_batch_size
        for i in range(self.start, len(self)):
            batch = order[i * size:(i + 1) * size]
            part = len(batch) // world
            yield batch[rank * part:(rank + 1) * part].tolist()


class ResumableTrainLoader(Callback):
    """Wraps the data module's training DataLoader (same dataset, batch size, collate function) with an
    `EpochBatchSampler`. Pass it as the train dataloader AND as a callback: as a callback it follows
    which batch Lightning has trained (Lightning fetches a batch ahead, so counting the batches handed
    out would be off by one)."""

    def __init__(self, loader: DataLoader, seed: int, world_size: int = 1):
        if not isinstance(loader, DataLoader) or loader.batch_size is None:
            raise TypeError("ResumableTrainLoader needs a torch DataLoader built with a batch_size "
                            f"(got {type(loader).__name__})")
        self.sampler = EpochBatchSampler(len(loader.dataset), loader.batch_size, seed,
                                         shuffle=isinstance(loader.sampler, RandomSampler), drop_last=loader.drop_last,
                                         world_size=world_size)
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
