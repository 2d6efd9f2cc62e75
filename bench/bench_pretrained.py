"""A Llama-shaped model (~100M parameters, random weights) through our LM (pretrained.convert) against
transformers' LlamaForCausalLM, same weights, same run.

    python3 bench/bench_pretrained.py --threads 1                 # 10 layers, dim 768, GQA 12/4 heads: 101M
    python3 bench/bench_pretrained.py --n-layer 2 --dim 128 --n-head 4 --n-kv-head 2 --ff 256   # a quick check

Measures (best of --repeats rounds, every model once per round, in turn, after a warm-up), as
bench_gpt2.py does: greedy sampling tokens/s (`lm.sample(temperature=0)` with our key/value cache vs
`generate(do_sample=False)`), and perplexity tokens/s on a --ppl-batch x --ppl-len batch of random ids
(`lm.perplexities` vs transformers' forward + cross-entropy). Our model runs the custom-transformer
path (what get_pretrained returns). Outputs are checked equal (same tokens, same perplexity).
"""
import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_gpt2 import best_times, hf_greedy, hf_perplexity, start_bench  # noqa: E402
from data.data_path import find_data_path  # noqa: E402
from data.tokenizer import Tokenizer  # noqa: E402
from pretrained import convert  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=10)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--n-kv-head", type=int, default=4)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--ff", type=int, default=2048, help="SwiGLU hidden width")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--prompt", default="Well the weather for the whole area will")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--ppl-batch", type=int, default=8)
    parser.add_argument("--ppl-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = start_bench(args)
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = (find_data_path() or Path("?")) / "gpt2-tokenizer"
    gpt2 = Tokenizer.gpt2(str(folder))
    tokenizer = Tokenizer(gpt2.hf, vocab_size=50304)  # GPT-2's BPE in a padded vocabulary, as checkpoints have
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50304, hidden_size=args.dim, intermediate_size=args.ff, num_hidden_layers=args.n_layer,
                         num_attention_heads=args.n_head, num_key_value_heads=args.n_kv_head,
                         max_position_embeddings=args.context, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    hf = LlamaForCausalLM(config).eval()
    lm = convert(hf, tokenizer).to(device).eval()
    hf.to(device)
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"Llama shape: {args.n_layer} layers, {args.n_head} heads ({args.n_kv_head} kv), dim {args.dim}, ff {args.ff}, "
          f"{n_params / 1e6:.1f}M parameters; torch {torch.__version__}, device {device}, "
          f"{torch.get_num_threads()} threads, HF attention {hf.config._attn_implementation}")

    eos, name, hf_name = tokenizer.eos_id, "ours (custom-transformer)", "transformers generate"
    prompt = tokenizer(args.prompt)
    rows = []
    # both write the full --new-tokens (no stop at eos), so they do the same work
    runs = {hf_name: lambda: hf_greedy(hf, [tokenizer.bos_id] + prompt, args.new_tokens, eos),
            name: lambda: lm.sample(pref=prompt, max_seq_len=len(prompt) + args.new_tokens, temperature=0,
                                    as_str=False, stop_at_eos=False)[len(prompt):]}
    for run in runs.values():
        run()  # warm-up (and the full-length check below)
    timed = best_times(runs, args.repeats, device)
    reference = timed[hf_name][1]
    ours = timed[name][1]
    rows.append(("sampling", hf_name, len(reference) / timed[hf_name][0], f"{len(reference)} tokens"))
    rows.append(("sampling", name, len(ours) / timed[name][0],
                 "same tokens" if ours == reference else f"DIFFERENT tokens from {first_difference(ours, reference)}"))

    x = torch.randint(0, tokenizer.vocab_size, (args.ppl_batch, args.ppl_len + 1),
                      generator=torch.Generator().manual_seed(1)).to(device)
    batch = {"x_indices": x, "mask": torch.ones_like(x, dtype=torch.bool)}
    hf_name = "transformers forward"
    runs = {hf_name: lambda: hf_perplexity(hf, x), name: lambda: lm.perplexities([batch])[0]}
    hf_perplexity(hf, x[:1, :9])
    lm.perplexities([{"x_indices": x[:1, :9], "mask": batch["mask"][:1, :9]}])
    timed = best_times(runs, args.repeats, device)
    n_tokens = args.ppl_batch * args.ppl_len
    reference_ppl = timed[hf_name][1]
    for model_name, (seconds, ppl) in timed.items():
        close = abs(ppl - reference_ppl) <= 1e-4 * reference_ppl
        rows.append(("perplexity", model_name, n_tokens / seconds, f"ppl {ppl:.2f}" + ("" if close else " (DIFFERENT)")))
    print(f"\nsampling: {args.new_tokens} new tokens, greedy, batch 1; perplexity: batch {args.ppl_batch} x "
          f"{args.ppl_len} tokens; best of {args.repeats}")
    print("| measurement | model | tokens/s | ours / HF | check |\n|---|---|---:|---:|---|")
    for measurement, model_name, speed, check in rows:
        reference = next(s for m, n, s, _ in rows if m == measurement and n.startswith("transformers"))
        ratio = "" if model_name.startswith("transformers") else f"{speed / reference:.2f}x"
        print(f"| {measurement} | {model_name} | {speed:.1f} | {ratio} | {check} |")


def first_difference(a: list, b: list) -> int:
    return next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))


if __name__ == "__main__":
    main()
