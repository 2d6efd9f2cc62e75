"""TrainParams: how to train. Plain dataclass, no torch import (configs parse without it).

Each field's trailing comment is its description (`python3 main.py --list-params`).
"""
from dataclasses import dataclass
from typing import List, Optional, Union


@dataclass
class TrainParams:
    epochs: int = 1  # passes over the training set (ignored when max_steps is set)
    max_steps: Optional[int] = None  # stop after this many optimizer steps; None trains for `epochs`
    batch_size: int = 32  # samples per batch on each device (the global batch is batch_size x devices x num_nodes)
    lr: float = 1e-3  # peak learning rate
    min_lr_frac: float = 0.1  # the schedule decays to lr * min_lr_frac
    lr_schedule: str = "cosine"  # after warmup: cosine, linear or constant
    warmup_steps: int = 100  # linear warmup steps from 0 to lr
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not applied to norms, biases, embeddings)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.99  # AdamW beta2
    grad_clip: Optional[float] = 1.0  # clip the gradient norm to this; None disables clipping
    accumulate_grad_batches: int = 1  # batches per optimizer step
    seed: int = 0  # seed for weights, batch order and dropout
    precision: str = "32"  # "32", "bf16-mixed" or "16-mixed" (CUDA only)
    compile: bool = False  # torch.compile the model before training
    devices: Union[int, List[int], str] = 1  # devices per node: a count, a list of GPU numbers, or "auto" (every GPU); without CUDA, the number of CPU processes
    strategy: str = "auto"  # "auto" (DDP when several devices), "ddp", or "fsdp" (shards each transformer block; CUDA only)
    num_nodes: int = 1  # machines in the run (launched by srun or torchrun, see README "Beyond one device")
    val_check_interval: Optional[int] = None  # validate every N training batches of an epoch (instead of at its end); None validates once per epoch
    limit_val_batches: Optional[int] = None  # validate on at most N batches per set; None uses the whole set
    hyperparams_log_freq: int = 50  # call log_hyperparams_and_time every N batches
    n_print_samples: int = 2  # samples printed after each epoch (one greedy, the rest sampled)
    print_sample_len: int = 30  # tokens generated per printed sample
