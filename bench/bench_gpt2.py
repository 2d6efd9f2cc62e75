"""Decoding and perplexity: GPT-2 (or with --llama a Llama) through our LM against transformers' model, same weights.

    .venv/bin/python bench/bench_gpt2.py --threads 2                 # GPT-2-small-sized random model
    .venv/bin/python bench/bench_gpt2.py --threads 2 --small         # a small trained model's size (shakespeare-char)
    .venv/bin/python bench/bench_gpt2.py --n-layer 2 --n-embd 128 --n-head 2   # a quick check
    .venv/bin/python bench/bench_gpt2.py --llama --n-layer 10 --n-kv-head 4 --only sampling,perplexity --threads 1
                                         # a Llama shape (rope, rmsnorm, swiglu, GQA 12/4 heads, ff 2048): 101M

--llama builds transformers' LlamaForCausalLM (GPT-2's BPE in a vocabulary padded to 50304, as checkpoints
have; tied embeddings) and converts it with pretrained.convert, as get_pretrained does; --n-kv-head and
--ff set its grouped-query heads and SwiGLU width. PyTorch's layer cannot compute a Llama block, so
only our custom-transformer path runs then.

Measures, best of --repeats rounds (every model once per round, in turn) after a warm-up:
  sampling:   tokens/s generating --new-tokens tokens greedily (batch 1) after a short prompt:
              our `lm.sample(temperature=0)` (key/value cache) vs `hf.generate(do_sample=False, use_cache=True)`;
  beam:       tokens/s of beam search (--beam-size beams, --beam-tokens new tokens): our `lm.beam_search`
              vs `hf.generate(num_beams=..., do_sample=False, early_stopping=True)`;
  batched:    tokens/s of greedy samples for --batch-prompts prompts of different lengths (--batch-tokens
              new tokens each): our `lm.sample(pref=[...])` (one batch) vs the same prompts one by one;
  perplexity: tokens/s scoring a --ppl-batch x --ppl-len batch of random ids:
              our `lm.perplexities` vs HF's forward + cross-entropy.
Rows for our model run in the custom-transformer path (what get_gpt2 returns) and, unless
--no-fast-path, in the torch-transformer path (the same weights in PyTorch's fused layer).
The outputs are checked equal (same tokens, same perplexity), so the speeds compare like with like.
Generation runs to its length limit (no stop at eos) on both sides, so both do the same work.
Weights are random (the hub is not needed); the timing does not depend on them.
--cpu-time times this process's CPU time instead of wall time: on a machine shared with other
jobs wall time swings several-fold between identical runs, CPU time much less.
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
from pretrained import convert  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--n-positions", type=int, default=1024)
    parser.add_argument("--prompt", default="Well the weather for the whole area will")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens to generate (default: %(default)s)")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--beam-tokens", type=int, default=100, help="tokens to generate by beam search")
    parser.add_argument("--batch-prompts", type=int, default=16, help="prompts sampled as one batch")
    parser.add_argument("--batch-tokens", type=int, default=50, help="tokens to generate per batched prompt")
    parser.add_argument("--llama", action="store_true", help="a Llama shape instead of GPT-2 (see above)")
    parser.add_argument("--n-kv-head", type=int, default=None, help="--llama: key/value heads (default: --n-head)")
    parser.add_argument("--ff", type=int, default=2048, help="--llama: SwiGLU hidden width (default: %(default)s)")
    parser.add_argument("--small", action="store_true",
                        help="a small trained model's shape instead: 4 layers, 4 heads, dim 128, 256 positions, "
                             "a character vocabulary (configs/shakespeare-char.txt's model)")
    parser.add_argument("--only", default="sampling,beam,batched,perplexity",
                        help="comma-separated measurements to run (default: %(default)s)")
    parser.add_argument("--cpu-time", action="store_true", help="time process CPU time instead of wall time")
    parser.add_argument("--ppl-batch", type=int, default=8, help="sequences in the perplexity batch")
    parser.add_argument("--ppl-len", type=int, default=256, help="tokens per sequence in the perplexity batch")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-fast-path", action="store_true", help="skip our torch-transformer path")
    parser.add_argument("--tokenizer", default=None,
                        help="GPT-2 tokenizer folder (default: the data folder's gpt2-tokenizer/)")
    return parser.parse_args()


def best_times(runs: Dict[str, Callable[[], object]], repeats: int, device: torch.device,
               clock: Callable[[], float] = time.perf_counter) -> Dict[str, Tuple[float, object]]:
    """name -> (fastest wall time, last result) over `repeats` rounds; each round runs every entry once,
    in turn, so that load from other jobs on a shared machine falls on all of them alike.
    The caller has warmed each run up."""
    best: Dict[str, Tuple[float, object]] = {name: (math.inf, None) for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = clock()
            result = run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = (min(best[name][0], clock() - start), result)
    return best


def hf_greedy(hf, context: List[int], new_tokens: int, pad: int) -> List[int]:
    """transformers' greedy continuation of `context` (bos + prompt). The explicit attention mask keeps
    generate from masking the bos as padding (bos == pad, and eos is off)."""
    x = torch.tensor([context], device=hf.device)
    out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=new_tokens,
                      pad_token_id=pad, use_cache=True)
    return out[0, len(context):].tolist()


def hf_beam(hf, context: List[int], new_tokens: int, beam_size: int, pad: int) -> List[int]:
    """transformers' best beam-search continuation of `context` (bos + prompt)."""
    x = torch.tensor([context], device=hf.device)
    out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=beam_size, early_stopping=True,
                      max_new_tokens=new_tokens, pad_token_id=pad, use_cache=True)
    return out[0, len(context):].tolist()


def hf_perplexity(hf, x: torch.Tensor) -> float:
    """exp(mean cross-entropy) of the batch x [batch, len + 1], reading x[:, :-1] as ours does."""
    with torch.no_grad():
        logits = hf(x[:, :-1]).logits
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
    return math.exp(ce.item())


BATCH_TEXTS = ["Well the weather for the whole area will", "The", "In the beginning", "A quick brown fox jumps",
               "She said that", "It was the best of times, it was the worst of times", "Why", "Once upon a time there",
               "The results of the study show", "We", "Scientists have found", "And then", "Tomorrow the market",
               "He opened the door and saw", "One", "Prices rose sharply in the last quarter of"]


def build_llama(args: argparse.Namespace, tokenizer_folder: Path):
    """(transformers' LlamaForCausalLM, our LM, tokenizer): GPT-2's BPE in a vocabulary padded to 50304."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tokenizer = Tokenizer(Tokenizer.gpt2(str(tokenizer_folder)).hf, vocab_size=50304)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50304, hidden_size=args.n_embd, intermediate_size=args.ff,
                         num_hidden_layers=args.n_layer, num_attention_heads=args.n_head,
                         num_key_value_heads=args.n_kv_head or args.n_head, max_position_embeddings=args.n_positions,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                         initializer_range=0.1)  # wide, as for GPT-2 below: no near-ties in beam search
    hf = LlamaForCausalLM(config).eval()
    return hf, convert(hf, tokenizer), tokenizer


def build_models(args: argparse.Namespace, device: torch.device):
    """(transformers' model, {row name: our LM}, tokenizer), the same random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if args.llama:
        tokenizer_folder = Path(args.tokenizer) if args.tokenizer else (find_data_path() or Path("?")) / "gpt2-tokenizer"
        hf, lm, tokenizer = build_llama(args, tokenizer_folder)
        hf.generation_config.eos_token_id = None
        return hf.to(device), {"ours (custom-transformer)": lm.to(device).eval()}, tokenizer
    if args.small:
        data = find_data_path()
        text = (data / "tinyshakespeare" / "input.txt").read_text()[:200_000] if data else BATCH_TEXTS[0]
        tokenizer = Tokenizer.train("char", [text + "".join(BATCH_TEXTS)])
        shape = dict(n_layer=4, n_head=4, n_embd=128, n_positions=256, vocab_size=tokenizer.vocab_size)
    else:
        tokenizer_folder = Path(args.tokenizer) if args.tokenizer else (find_data_path() or Path("?")) / "gpt2-tokenizer"
        if not tokenizer_folder.is_dir():
            sys.exit(f"no GPT-2 tokenizer at {tokenizer_folder}: set LM_DATA_PATH or pass --tokenizer FOLDER")
        tokenizer = Tokenizer.gpt2(str(tokenizer_folder))
        shape = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, n_positions=args.n_positions)
    torch.manual_seed(0)
    # wider than GPT-2's init (0.02): far from uniform next-token distributions, so that beam search has no
    # near-ties for float rounding to break differently (the timing does not depend on the weights)
    hf = GPT2LMHeadModel(GPT2Config(**shape, initializer_range=0.1)).eval()
    hf.generation_config.eos_token_id = None  # generate to the length limit, as ours with stop_at_eos=False
    models = {"ours (custom-transformer)": convert_gpt2(hf, tokenizer)}
    if not args.no_fast_path:
        models["ours (torch-transformer)"] = models["ours (custom-transformer)"].with_layer_architecture("torch-transformer")
    hf.to(device)
    models = {name: lm.to(device).eval() for name, lm in models.items()}
    return hf, models, tokenizer


def start_bench(args: argparse.Namespace) -> torch.device:
    """torch's threads (--threads), transformers without progress bars and warnings; the device (--device)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return torch.device(args.device)


def main() -> None:
    args = parse_args()
    device = start_bench(args)

    hf, models, tokenizer = build_models(args, device)
    n_params = sum(p.numel() for p in hf.parameters())
    mp = next(iter(models.values())).model_params
    print(f"{'Llama' if args.llama else 'GPT-2'} shape: {mp.n_layers} layers, {mp.n_heads} heads "
          f"({mp.n_kv_heads or mp.n_heads} kv), dim {mp.dim}, vocab {hf.config.vocab_size}, "
          f"{n_params / 1e6:.1f}M parameters; torch {torch.__version__}, device {device}, "
          f"{torch.get_num_threads()} threads, HF attention {hf.config._attn_implementation}, "
          f"timing {'CPU' if args.cpu_time else 'wall'} time")
    clock = time.process_time if args.cpu_time else time.perf_counter
    only = set(args.only.split(","))
    bos = tokenizer.bos_id
    prompt = tokenizer(args.prompt)
    rows = []  # (measurement, name, tokens/s, check)

    def compare(measurement: str, reference_name: str, runs: Dict[str, Callable[[], List[int]]],
                count: Callable[[object], int]) -> None:
        """Warm each run up, time them in turns, check every result equals the reference's."""
        for run in runs.values():
            run()
        timed = best_times(runs, args.repeats, device, clock)
        reference = timed[reference_name][1]
        for name, (seconds, result) in timed.items():
            if name == reference_name:
                check = f"{count(result)} tokens"
            elif result == reference:
                check = "same tokens"
            else:
                check = "DIFFERENT tokens"
            rows.append((measurement, name, count(result) / seconds, check))

    # ---- greedy sampling, batch 1 ----
    if "sampling" in only:
        runs = {"transformers generate": lambda: hf_greedy(hf, [bos] + prompt, args.new_tokens, bos)}
        for name, lm in models.items():
            runs[name] = lambda lm=lm: lm.sample(pref=prompt, max_seq_len=len(prompt) + args.new_tokens, temperature=0,
                                                 as_str=False, stop_at_eos=False)[len(prompt):]
        compare("sampling", "transformers generate", runs, len)

    # ---- beam search ----
    if "beam" in only:
        runs = {"transformers generate": lambda: hf_beam(hf, [bos] + prompt, args.beam_tokens, args.beam_size, bos)}
        for name, lm in models.items():
            runs[name] = lambda lm=lm: lm.beam_search(pref=prompt, beam_size=args.beam_size, as_str=False,
                                                      max_seq_len=len(prompt) + args.beam_tokens,
                                                      stop_at_eos=False)[len(prompt):]
        compare("beam", "transformers generate", runs, len)

    # ---- batched prompts against one by one ----
    if "batched" in only:
        prompts = [tokenizer(text) for text in (BATCH_TEXTS * args.batch_prompts)[:args.batch_prompts]]
        length = max(len(p) for p in prompts) + args.batch_tokens  # max_seq_len counts the prompt: the same for all
        for name, lm in models.items():
            path = name[name.index("("):]
            runs = {f"ours {path} one by one": lambda lm=lm: [
                        lm.sample(pref=p, max_seq_len=length, temperature=0, as_str=False, stop_at_eos=False)
                        for p in prompts],
                    f"ours {path} batched": lambda lm=lm: lm.sample(pref=prompts, max_seq_len=length, temperature=0,
                                                                    as_str=False, stop_at_eos=False)}
            compare(f"batched {path}", f"ours {path} one by one", runs,
                    lambda result: sum(len(ids) - len(p) for ids, p in zip(result, prompts)))

    # ---- perplexity ----
    if "perplexity" in only:
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
        timed = best_times(runs, args.repeats, device, clock)
        reference_ppl = timed[hf_name][1]
        for name, (seconds, ppl) in timed.items():
            close = math.isclose(ppl, reference_ppl, rel_tol=1e-4)
            rows.append(("perplexity", name, n_tokens / seconds, f"ppl {ppl:.2f}" + ("" if close else " (DIFFERENT)")))

    print_table(rows, args)



def print_table(rows, args: argparse.Namespace) -> None:
    """One row per model and measurement; the ratio is against the measurement's first row (the reference)."""
    reference_speed: Dict[str, float] = {}
    for measurement, name, speed, _ in rows:
        reference_speed.setdefault(measurement, speed)
    print(f"\nsampling: {args.new_tokens} new tokens, greedy, batch 1; beam: {args.beam_size} beams, {args.beam_tokens} "
          f"new tokens; batched: {args.batch_prompts} prompts x {args.batch_tokens} new tokens, greedy; "
          f"perplexity: batch {args.ppl_batch} x {args.ppl_len} tokens; best of {args.repeats}")
    print(f"| {'measurement':<30} | {'model':<38} | {'tokens/s':>9} | {'ratio':>7} | check |")
    print(f"|{'-' * 32}|{'-' * 40}|{'-' * 11}|{'-' * 9}|-------|")
    for measurement, name, speed, check in rows:
        ratio = f"{speed / reference_speed[measurement]:.2f}x"
        print(f"| {measurement:<30} | {name:<38} | {speed:>9.1f} | {ratio:>7} | {check} |")


if __name__ == "__main__":
    main()
