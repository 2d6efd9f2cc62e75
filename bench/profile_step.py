"""Where a float32 training step of the nanoGPT-sized model goes: our LM in a plain loop, in Lightning as
run_training sets it up, and (with --nanogpt DIR) nanoGPT's GPT in the same process, on the same batch shape.

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 LM_DATA_PATH=YOUR_DATA_FOLDER \
        .venv/bin/python bench/profile_step.py [--nanogpt /tmp/nanoGPT] [--steps 60] [--profile]

The model is the one of ../shared/bench/vs-nanogpt.sh (4 layers, 4 heads, dim 128, context 64, batch 12, no biases
as nanoGPT's train.py has bias=False (--bias for ours with biases),
Tiny Shakespeare characters, AdamW lr 1e-3, betas (0.9, 0.99), weight decay 0.1, gradient clipping at 1.0).
Prints the median ms per step of each loop; --profile adds torch.profiler's table of the plain loop's ops (nanoGPT's with --only nanogpt).
nanoGPT's code is imported from its own checkout for the comparison only (nothing of it is copied here).
"""
import argparse
import os
import dataclasses
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def median_ms(step, steps: int, warmup: int = 5) -> float:
    times = []
    for i in range(steps + warmup):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def ours(precision: str, bias: bool = False):
    from data.dataloader import DataParams, LMDataModule
    from model.lm import LM
    from model.model_params import ModelParams
    from train.train_params import TrainParams
    from train.trainer import make_optimizer
    dp = DataParams(dataset_name="shakespeare", tokenizer="char", max_seq_len=64)
    tp = TrainParams(max_steps=600, batch_size=12, lr=1e-3, warmup_steps=100, min_lr_frac=0.1, weight_decay=0.1,
                     beta2=0.99, precision=precision)
    dm = LMDataModule(dp, batch_size=12)
    torch.manual_seed(0)
    lm = LM(ModelParams(n_layers=4, dim=128, n_heads=4, dropout=0.0, max_seq_len=64, bias=bias), dm.tokenizer)
    return dm, lm, tp, make_optimizer(lm, tp)


def plain_loop_step(lm, optimizer, batches):
    it = iter(batches)

    def step():
        batch = next(it)
        loss, _ = lm.get_losses(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
    return step


def nanogpt_step(nano_dir: str, vocab: int):
    import importlib.util
    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(nano_dir) / "model.py")
    nano = importlib.util.module_from_spec(spec)  # nanoGPT's model.py, from its checkout (ours is also "model")
    spec.loader.exec_module(nano)
    GPT, GPTConfig = nano.GPT, nano.GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=vocab, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    x = torch.randint(vocab, (12, 64))
    y = torch.randint(vocab, (12, 64))

    def step():
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def lightning_ms(dm, lm, tp, steps: int) -> float:
    import lightning.pytorch as pl
    from train.resumable_loader import ResumableTrainLoader
    from train.run import make_trainer
    from train.trainer import LMTrainer

    class StepTimes(pl.Callback):
        def __init__(self):
            self.starts = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.starts.append(time.perf_counter())

    times = StepTimes()
    loader = ResumableTrainLoader(dm.train_dataloader(), seed=tp.seed)
    trainer = make_trainer(dataclasses.replace(tp, max_steps=steps + 6), torch.device("cpu"),
                           n_train_batches=len(loader), callbacks=[loader, times], enable_progress_bar=False)
    if os.environ.get("PROFILE_NONDETERMINISTIC"):  # what make_trainer's deterministic=True costs
        torch.use_deterministic_algorithms(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(LMTrainer(lm, tp), train_dataloaders=loader, val_dataloaders=[])
    gaps = [b - a for a, b in zip(times.starts, times.starts[1:])][5:]
    return 1000 * statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", help="a checkout of karpathy/nanoGPT: time its model too")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precision", default="32")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", default="plain,lightning,nanogpt")
    parser.add_argument("--bias", action="store_true", help="biases in our linear layers and norms (nanoGPT's "
                        "train.py has bias=False, and so do we by default here)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, precision {args.precision}")
    only = args.only.split(",")
    dm, lm, tp, optimizer = ours(args.precision, args.bias)
    batches = [b for _, b in zip(range(args.steps + 40), dm.train_dataloader())]
    if "plain" in only:
        print(f"ours, plain loop:     {median_ms(plain_loop_step(lm, optimizer, batches), args.steps):6.2f} ms/step")
    if args.nanogpt and "nanogpt" in only:
        print(f"nanoGPT, plain loop:  {median_ms(nanogpt_step(args.nanogpt, len(dm.tokenizer)), args.steps):6.2f} ms/step")
    if "lightning" in only:
        print(f"ours, Lightning loop: {lightning_ms(dm, lm, tp, args.steps):6.2f} ms/step")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        step = (nanogpt_step(args.nanogpt, len(dm.tokenizer)) if args.nanogpt and only == ["nanogpt"]
                else plain_loop_step(lm, optimizer, batches))
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


if __name__ == "__main__":
    main()
