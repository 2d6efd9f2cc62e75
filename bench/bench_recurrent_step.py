"""Training-step cost of configs/ptb-lstm.txt's LSTM against configs/ptb-small.txt's transformer, in one
process: the same batch shape (32 x 64 PTB-sized ids, vocabulary 10,000), AdamW steps, CPU time per step
on one thread (steadier than wall time on a shared machine).

    .venv/bin/python bench/bench_recurrent_step.py [--steps 8] [--threads 1]
"""
import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from config_parser import load_runs  # noqa: E402
from model.lm import LM  # noqa: E402


class PTBSizedTokenizer:
    vocab_size, bos_id, eos_id, pad_id = 10000, 0, 0, 0


def step_seconds(config: str, steps: int) -> float:
    [run] = load_runs(config, [])
    mp, dp, tp = run.params["ModelParams"], run.params["DataParams"], run.params["TrainParams"]
    mp.max_seq_len = dp.max_seq_len
    torch.manual_seed(0)
    lm = LM(mp, PTBSizedTokenizer())
    optimizer = torch.optim.AdamW(lm.parameters(), lr=tp.lr)
    x = torch.randint(0, 10000, (tp.batch_size, dp.max_seq_len + 1))
    batch = {"x_indices": x, "mask": torch.ones_like(x, dtype=torch.bool)}
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        start = time.process_time()
        loss, _ = lm.get_losses(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.process_time() - start)
    return sorted(times[2:])[len(times[2:]) // 2]  # median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {config: step_seconds(config, args.steps) for config in ("ptb-small", "ptb-lstm")}
    for config, seconds in results.items():
        print(f"{config}: {seconds:.3f} s CPU per training step (median of {args.steps})")
    print(f"ptb-lstm / ptb-small: {results['ptb-lstm'] / results['ptb-small']:.2f}x")


if __name__ == "__main__":
    main()
