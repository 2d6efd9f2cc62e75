"""lm-eval requests/s: our adapter (train/lm_eval_adapter.py) against lm-eval's HF backend (HFLM), same weights.

    .venv/bin/python bench/bench_lm_eval.py --threads 2 --limit 100          # GPT-2-small-shaped random model
    .venv/bin/python bench/bench_lm_eval.py --n-layers 2 --dim 64 --limit 10 # a quick check

A random GPT-2-shaped LM (our ModelParams: learned positions, layernorm, gelu_tanh; GPT-2's tokenizer from
$LM_DATA_PATH/gpt2-tokenizer) is exported with export_hf; both sides then run the local multiple-choice
task ptb_next_word (eval_tasks/, --limit questions of 4 choices each) through lm_eval.simple_evaluate,
--repeats rounds in turn, best round counted. Prints requests/s of each and the ratio (ours / HFLM); the
accuracies are checked equal, so both did the same work. Weights are random: the timing does not depend on them.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.data_path import find_data_path  # noqa: E402
from data.tokenizer import Tokenizer  # noqa: E402
from model.lm import LM  # noqa: E402
from model.model_params import ModelParams  # noqa: E402
from pretrained import export_hf  # noqa: E402
from train.lm_eval_adapter import ScaffoldLM, evaluate  # noqa: E402

TASK = "ptb_next_word"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layers", type=int, default=12)
    parser.add_argument("--n-heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--limit", type=int, default=100, help="questions (4 requests each)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM

    tokenizer = Tokenizer.gpt2(find_data_path() / "gpt2-tokenizer")
    torch.manual_seed(0)
    lm = LM(ModelParams(n_layers=args.n_layers, n_heads=args.n_heads, dim=args.dim, max_seq_len=1024,
                        activation="gelu_tanh", dropout=0.0), tokenizer).eval()
    folder = export_hf(lm, Path(tempfile.mkdtemp()) / "hf")
    lm = lm.to(args.device)
    models = {"ours": ScaffoldLM(lm, batch_size=args.batch_size),
              "hflm": HFLM(pretrained=str(folder), batch_size=args.batch_size, device=args.device)}
    n_requests = 4 * args.limit
    evaluate(models["ours"], [TASK], limit=2)  # warm-up (and the task index)
    evaluate(models["hflm"], [TASK], limit=2)
    best = {name: float("inf") for name in models}
    accuracy = {}
    for _ in range(args.repeats):
        for name, model in models.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            accuracy[name] = evaluate(model, [TASK], limit=args.limit, batch_size=args.batch_size)[TASK]["acc,none"]
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    assert accuracy["ours"] == accuracy["hflm"], accuracy
    print(f"{TASK}, {n_requests} requests, {args.n_layers} layers x {args.dim}, batch {args.batch_size}, "
          f"{args.device}, threads {torch.get_num_threads()}")
    for name in models:
        print(f"  {name}: {n_requests / best[name]:8.1f} requests/s ({best[name]:.2f} s)")
    print(f"  ratio ours / hflm: {best['hflm'] / best['ours']:.2f}x")


if __name__ == "__main__":
    main()
