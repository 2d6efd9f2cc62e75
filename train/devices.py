"""Which devices a run trains on, and how data is split between the processes of a distributed run.

TrainParams.devices / strategy / num_nodes (and --gpu-id=0,1) become Lightning's accelerator, devices,
strategy and num_nodes: Lightning launches the processes (one per device; or torchrun / srun launch
them, see README "Beyond one device") and runs DDP or FSDP. On a machine without GPUs, devices=N with
strategy "ddp" (or "auto") runs N CPU processes that talk through gloo.

Data under several processes (Lightning's distributed sampler is off, these samplers replace it):
- training: the global batch of step i is the same `batch_size * world_size` samples of the same
  (seed, epoch) permutation as one process with that batch size would take; rank r trains on part r
  of it (`EpochBatchSampler` in resumable_loader.py);
- evaluation: rank r evaluates samples r, r + W, r + 2W, ... (`ShardedSampler`): each sample once,
  none padded or repeated, and the losses are summed over ranks before dividing (trainer.py).
"""
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Sampler

from train.train_params import check_device_params



@dataclass
class DeviceSetup:
    """What lightning.Trainer gets, and the device this process evaluates on afterwards."""
    accelerator: str  # "cpu" or "gpu"
    devices: Union[int, List[int]]
    strategy: Any  # "auto", or a Lightning strategy object
    num_nodes: int
    device: torch.device  # this process's device for the final evaluation (rank 0's on the first GPU)

    @property
    def world_size(self) -> int:
        per_node = len(self.devices) if isinstance(self.devices, list) else self.devices
        return per_node * self.num_nodes

    def describe(self) -> str:
        if self.world_size == 1:
            return str(self.device)
        name = self.strategy if isinstance(self.strategy, str) else type(self.strategy).__name__
        where = f"GPUs {self.devices}" if self.accelerator == "gpu" else f"{self.devices} CPU processes"
        nodes = f" on each of {self.num_nodes} nodes" if self.num_nodes > 1 else ""
        return f"{where}{nodes} ({name}, {self.world_size} processes)"


def device_setup(tp: Any, gpu_ids: Optional[Sequence[int]] = None, cuda: Optional[bool] = None) -> DeviceSetup:
    """DeviceSetup from TrainParams (devices, strategy, num_nodes) and --gpu-id (a list overrides devices)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    check_device_params(tp)
    devices = list(gpu_ids) if gpu_ids and cuda else tp.devices
    if cuda:
        n_gpus = torch.cuda.device_count()
        if devices == "auto":
            devices = list(range(n_gpus))
        elif isinstance(devices, int):
            devices = list(range(devices))
        bad = [d for d in devices if not isinstance(d, int) or not 0 <= d < n_gpus] if isinstance(devices, list) else [devices]
        if bad or not devices:
            raise ValueError(f"devices={devices!r}: this machine has CUDA devices 0..{n_gpus - 1}; give a count, "
                             "a list of device numbers, or \"auto\"")
        accelerator, device = "gpu", torch.device("cuda", devices[0])
    else:
        if devices == "auto":
            devices = 1
        if isinstance(devices, list) or not isinstance(devices, int) or devices < 1:
            raise ValueError(f"TrainParams.devices={devices!r}: without CUDA, devices is the number of CPU processes "
                             "(an int >= 1); lists of device numbers name GPUs")
        accelerator, device = "cpu", torch.device("cpu")
    setup = DeviceSetup(accelerator, devices, "auto", tp.num_nodes, device)
    setup.strategy = make_strategy(tp.strategy, setup)
    return setup


def make_strategy(name: str, setup: DeviceSetup) -> Any:
    if name == "fsdp":
        if setup.accelerator != "gpu":
            raise ValueError("strategy=\"fsdp\" shards the model over CUDA GPUs and needs them; on the CPU use "
                             "strategy=\"ddp\" (devices=N runs N processes) or \"auto\"")
        from lightning.pytorch.strategies import FSDPStrategy

        from model.transformer.transformer import BLOCK_TYPES
        # one FSDP unit per transformer block: each block's parameters are gathered only while it runs
        return FSDPStrategy(auto_wrap_policy=set(BLOCK_TYPES), state_dict_type="full")
    if name == "ddp" or (name == "auto" and setup.world_size > 1):
        from lightning.pytorch.strategies import DDPStrategy
        # buffers (masks) are the same on every rank: no broadcast, so ranks may run different numbers
        # of evaluation batches without waiting for each other
        return DDPStrategy(forward_sync_buffers=False)
    return "auto"


def check_fsdp_model(strategy: Any, lm: Any) -> None:
    """FSDP wraps transformer blocks: refuse the layer architectures it has no blocks for."""
    from lightning.pytorch.strategies import FSDPStrategy

    from model.transformer.transformer import is_block
    if isinstance(strategy, FSDPStrategy) and not any(is_block(m) for m in lm.modules()):
        raise ValueError(f"strategy=\"fsdp\" shards transformer blocks, and layer_architecture="
                         f"{lm.model_params.layer_architecture!r} has none: use strategy=\"ddp\" for it")


def is_rank_zero() -> bool:
    """True in the process that prints and saves (global rank 0). Lightning sets the rank from the
    launcher's environment (RANK, LOCAL_RANK, SLURM_PROCID) before the processes talk to each other."""
    return getattr(rank_zero_only, "rank", 0) == 0


def rank_and_world() -> tuple:
    """(this process's rank, number of processes) of the running distributed job; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardedSampler(Sampler):
    """Samples r, r + W, r + 2W, ... for rank r of W (all samples outside distributed training).
    Read when iterated, so the same loader works before and after the processes are launched."""

    def __init__(self, n_samples: int):
        self.n_samples = n_samples

    def __iter__(self) -> Iterator[int]:
        rank, world = rank_and_world()
        return iter(range(rank, self.n_samples, world))

    def __len__(self) -> int:
        rank, world = rank_and_world()
        return len(range(rank, self.n_samples, world))


def sharded(loader: DataLoader, max_batches: Optional[int] = None) -> DataLoader:
    """The same evaluation loader with each rank reading its own share of the samples; with
    `max_batches` (TrainParams.limit_val_batches), a share of the samples of the first max_batches
    batches, the ones a single process would evaluate."""
    dataset = loader.dataset.head(max_batches * loader.batch_size) if max_batches else loader.dataset
    return DataLoader(dataset, batch_size=loader.batch_size, sampler=ShardedSampler(len(dataset)),
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory)
