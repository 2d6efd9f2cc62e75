"""TrainParams: how to train. Plain dataclass, no torch import (configs parse without it).

Each field's trailing comment is its description (`python3 main.py --list-params`).
"""
import math
from dataclasses import dataclass, field
from typing import List, Optional, Union

LR_SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
MAX_SEED = 2 ** 32 - 1


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
    precision: str = "auto"  # "auto" (bf16-mixed where the device multiplies bfloat16 natively: CPUs with AVX512-BF16 or AMX, recent GPUs; else 32), "32", "bf16-mixed" or "16-mixed" (CUDA only)
    compile: bool = False  # torch.compile the model before training
    devices: Union[int, List[int], str] = 1  # devices per node: a count, a list of GPU numbers, or "auto" (every GPU); without CUDA, the number of CPU processes
    strategy: str = "auto"  # "auto" (DDP when several devices), "ddp", or "fsdp" (shards each transformer block; CUDA only)
    num_nodes: int = 1  # machines in the run (launched by srun or torchrun, see README "Beyond one device")
    val_check_interval: Optional[int] = None  # validate every N training batches of an epoch (instead of at its end); None validates once per epoch
    limit_val_batches: Optional[int] = None  # validate on at most N batches per set; None uses the whole set
    hyperparams_log_freq: int = 50  # call log_hyperparams_and_time every N batches
    n_print_samples: int = 2  # samples printed after each epoch (one greedy, the rest sampled)
    print_sample_len: int = 30  # tokens generated per printed sample
    stop_on_nonfinite: bool = True  # stop (and mark the run diverged) when the training loss is nan/inf for 3 batches in a row
    eval_tasks: List[str] = field(default_factory=list)  # lm-eval tasks scored at each validation and at the end (eval/{task}/{metric} in train_stats, wandb, final.json), e.g. [["ptb_next_word"]]; local ones in eval_tasks/
    eval_limit: Optional[int] = None  # at most N documents per eval task; None scores each whole task


STRATEGIES = ("auto", "ddp", "fsdp")


def check_device_params(tp: TrainParams) -> None:
    """devices / strategy / num_nodes, as far as they can be checked without looking at the machine
    (train/devices.py checks the rest when the run starts: GPUs present, FSDP on CUDA only)."""
    devices = tp.devices
    count = isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1
    gpu_list = (isinstance(devices, list) and bool(devices) and len(set(devices)) == len(devices)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices))
    problems = []
    if not (count or gpu_list or devices == "auto"):
        problems.append(f"devices={devices!r}: must be a count >= 1, a list of distinct GPU numbers (in a config: "
                        "devices=[[0, 1]], since a plain list sweeps), or \"auto\"")
    if tp.strategy not in STRATEGIES:
        problems.append(f"strategy={tp.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if not isinstance(tp.num_nodes, int) or isinstance(tp.num_nodes, bool) or tp.num_nodes < 1:
        problems.append(f"num_nodes={tp.num_nodes!r}: must be a whole number >= 1")
    if problems:
        raise ValueError("bad TrainParams: " + "; ".join(problems))


def check_train_params(tp: TrainParams) -> None:
    """Raise ValueError listing every bad setting (run before any data is loaded or model built)."""
    problems: List[str] = []

    def need(ok: bool, field: str, rule: str) -> None:
        if not ok:
            problems.append(f"{field}={getattr(tp, field)!r}: must be {rule}")

    def number(value: object) -> bool:  # a finite int or float (configs check the type; Python callers may not)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    need(tp.epochs >= 1, "epochs", ">= 1")
    need(tp.max_steps is None or tp.max_steps >= 1, "max_steps", ">= 1, or None to train for `epochs`")
    need(tp.batch_size >= 1, "batch_size", ">= 1")
    need(number(tp.lr) and tp.lr > 0, "lr", "a number > 0")
    need(number(tp.min_lr_frac) and 0 <= tp.min_lr_frac <= 1, "min_lr_frac", "in [0, 1] (a fraction of lr)")
    need(tp.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {', '.join(LR_SCHEDULES)}")
    need(tp.warmup_steps >= 0, "warmup_steps", ">= 0")
    need(number(tp.weight_decay) and tp.weight_decay >= 0, "weight_decay", ">= 0")
    for field in ("beta1", "beta2"):
        need(number(getattr(tp, field)) and 0 <= getattr(tp, field) < 1, field, "in [0, 1)")
    need(tp.grad_clip is None or (number(tp.grad_clip) and tp.grad_clip > 0), "grad_clip",
         "> 0, or None for no clipping")
    need(tp.accumulate_grad_batches >= 1, "accumulate_grad_batches", ">= 1")
    need(isinstance(tp.seed, int) and not isinstance(tp.seed, bool) and 0 <= tp.seed <= MAX_SEED, "seed",
         f"a whole number in [0, {MAX_SEED}] (2^32 - 1: what numpy's and Lightning's seeding accept)")
    need(tp.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
    need(tp.val_check_interval is None or tp.val_check_interval >= 1, "val_check_interval",
         ">= 1 (training batches), or None to validate once per epoch")
    need(tp.limit_val_batches is None or tp.limit_val_batches >= 1, "limit_val_batches",
         ">= 1, or None for the whole validation set")
    need(tp.hyperparams_log_freq >= 1, "hyperparams_log_freq", ">= 1")
    need(tp.n_print_samples >= 0, "n_print_samples", ">= 0")
    need(tp.print_sample_len >= 1, "print_sample_len", ">= 1")
    need(isinstance(tp.eval_tasks, list) and all(isinstance(t, str) and t.strip() for t in tp.eval_tasks),
         "eval_tasks", "a list of lm-eval task names (in a config: eval_tasks=[[\"ptb_next_word\"]])")
    need(tp.eval_limit is None or (isinstance(tp.eval_limit, int) and tp.eval_limit >= 1), "eval_limit",
         ">= 1 (documents per task), or None for whole tasks")
    if problems:
        raise ValueError("invalid TrainParams:\n  " + "\n  ".join(problems))
