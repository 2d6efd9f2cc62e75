"""GPT-2 through our LM (gpt2.convert_gpt2) against transformers' GPT2LMHeadModel, same weights.

    .venv/bin/python bench/bench_gpt2.py                      # GPT-2-small-sized random model
    .venv/bin/python bench/bench_gpt2.py --n-layer 2 --n-embd 128 --n-head 2   # a quick check

Measures, best of --repeats rounds (every model once per round, in turn) after a warm-up:
  sampling:   tokens/s generating --new-tokens tokens greedily (batch 1) after a short prompt:
              our `lm.sample(temperature=0)` (key/value cache) vs `hf.generate(do_sample=False, use_cache=True)`;
  perplexity: tokens/s scoring a --ppl-batch x --ppl-len batch of random ids:
              our `lm.perplexities` vs HF's forward + cross-entropy.
Rows for our model run in the custom-transformer path (what get_gpt2 returns) and, unless
--no-fast-path, in the torch-transformer path (the same weights in PyTorch's fused layer).
The outputs are checked equal (same greedy tokens, same perplexity), so the speeds compare like with like.
Weights are random (the hub is not needed); the timing does not depend on them.
About 2-3 minutes with the defaults on 2 CPU cores. On a machine shared with other jobs pass
--threads 1: there, thread contention slows every model several-fold and swamps the ratios.
"""
import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.data_path import find_data_path  # noqa: E402
from data.tokenizer import Tokenizer  # noqa: E402
from gpt2 import convert_gpt2  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--n-positions", type=int, default=1024)
    parser.add_argument("--prompt", default="Well the weather for the whole area will")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens to generate (default: %(default)s)")
    parser.add_argument("--ppl-batch", type=int, default=8, help="sequences in the perplexity batch")
    parser.add_argument("--ppl-len", type=int, default=256, help="tokens per sequence in the perplexity batch")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-fast-path", action="store_true", help="skip our torch-transformer path")
    parser.add_argument("--tokenizer", default=None,
                        help="GPT-2 tokenizer folder (default: the data folder's gpt2-tokenizer/)")
    return parser.parse_args()


def best_times(runs: Dict[str, Callable[[], object]], repeats: int,
               device: torch.device) -> Dict[str, Tuple[float, object]]:
    """name -> (fastest wall time, last result) over `repeats` rounds; each round runs every entry once,
    in turn, so that load from other jobs on a shared machine falls on all of them alike.
    The caller has warmed each run up."""
    best: Dict[str, Tuple[float, object]] = {name: (math.inf, None) for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = (min(best[name][0], time.perf_counter() - start), result)
    return best


def hf_greedy(hf, context: List[int], new_tokens: int, eos: int) -> List[int]:
    """transformers' greedy continuation of `context` (bos + prompt), without the eos it may stop at."""
    x = torch.tensor([context], device=hf.device)
    out = hf.generate(x, do_sample=False, max_new_tokens=new_tokens, pad_token_id=eos, use_cache=True)
    new = out[0, len(context):].tolist()
    return new[:new.index(eos)] if eos in new else new


def hf_perplexity(hf, x: torch.Tensor) -> float:
    """exp(mean cross-entropy) of the batch x [batch, len + 1], reading x[:, :-1] as ours does."""
    with torch.no_grad():
        logits = hf(x[:, :-1]).logits
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
    return math.exp(ce.item())


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()

    tokenizer_folder = Path(args.tokenizer) if args.tokenizer else (find_data_path() or Path("?")) / "gpt2-tokenizer"
    if not tokenizer_folder.is_dir():
        sys.exit(f"no GPT-2 tokenizer at {tokenizer_folder}: set LM_DATA_PATH or pass --tokenizer FOLDER")
    tokenizer = Tokenizer.gpt2(str(tokenizer_folder))
    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, n_positions=args.n_positions)
    hf = GPT2LMHeadModel(config).eval()
    models = {"ours (custom-transformer)": convert_gpt2(hf, tokenizer)}
    if not args.no_fast_path:
        models["ours (torch-transformer)"] = models["ours (custom-transformer)"].with_layer_architecture("torch-transformer")
    hf.to(device)
    models = {name: lm.to(device).eval() for name, lm in models.items()}
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"GPT-2 shape: {args.n_layer} layers, {args.n_head} heads, dim {args.n_embd}, {n_params / 1e6:.1f}M parameters; "
          f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"HF attention {hf.config._attn_implementation}")

    eos = tokenizer.eos_id
    prompt = tokenizer(args.prompt)
    rows = []  # (measurement, name, tokens/s, check)

    # ---- sampling ----
    hf_name = "transformers generate"
    runs = {hf_name: lambda: hf_greedy(hf, [eos] + prompt, args.new_tokens, eos)}
    for name, lm in models.items():
        runs[name] = lambda lm=lm: lm.sample(pref=prompt, max_seq_len=len(prompt) + args.new_tokens,
                                             temperature=0, as_str=False)[len(prompt):]
        lm.sample(pref=prompt, max_seq_len=len(prompt) + 5, temperature=0, as_str=False)  # warm-up
    hf_greedy(hf, [eos] + prompt, 5, eos)  # warm-up
    timed = best_times(runs, args.repeats, device)
    reference = timed[hf_name][1]
    for name, (seconds, new) in timed.items():
        if name == hf_name:
            check = f"{len(new)} tokens"
        else:
            check = "same tokens" if new == reference else f"DIFFERENT tokens from {first_difference(new, reference)}"
        rows.append(("sampling", name, len(new) / seconds, check))

    # ---- perplexity ----
    x = torch.randint(0, tokenizer.vocab_size, (args.ppl_batch, args.ppl_len + 1),
                      generator=torch.Generator().manual_seed(1)).to(device)
    batch = {"x_indices": x, "mask": torch.ones_like(x, dtype=torch.bool)}
    n_tokens = args.ppl_batch * args.ppl_len
    hf_name = "transformers forward"
    runs = {hf_name: lambda: hf_perplexity(hf, x)}
    for name, lm in models.items():
        runs[name] = lambda lm=lm: lm.perplexities([batch])[0]
        lm.perplexities([{"x_indices": x[:1, :9], "mask": batch["mask"][:1, :9]}])  # warm-up
    hf_perplexity(hf, x[:1, :9])  # warm-up
    timed = best_times(runs, args.repeats, device)
    reference_ppl = timed[hf_name][1]
    for name, (seconds, ppl) in timed.items():
        close = math.isclose(ppl, reference_ppl, rel_tol=1e-4)
        rows.append(("perplexity", name, n_tokens / seconds, f"ppl {ppl:.2f}" + ("" if close else " (DIFFERENT)")))

    print_table(rows, args)


def first_difference(a: List[int], b: List[int]) -> int:
    return next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))


def print_table(rows, args: argparse.Namespace) -> None:
    hf_speed = {measurement: speed for measurement, name, speed, _ in rows if name.startswith("transformers")}
    print(f"\nsampling: {args.new_tokens} new tokens, greedy, batch 1; "
          f"perplexity: batch {args.ppl_batch} x {args.ppl_len} tokens; best of {args.repeats}")
    print(f"| {'measurement':<10} | {'model':<26} | {'tokens/s':>9} | {'ours / HF':>9} | check |")
    print(f"|{'-' * 12}|{'-' * 28}|{'-' * 11}|{'-' * 11}|-------|")
    for measurement, name, speed, check in rows:
        ratio = "" if name.startswith("transformers") else f"{speed / hf_speed[measurement]:.2f}x"
        print(f"| {measurement:<10} | {name:<26} | {speed:>9.1f} | {ratio:>9} | {check} |")


if __name__ == "__main__":
    main()
