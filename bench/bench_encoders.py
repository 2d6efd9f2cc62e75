"""A BERT-base-shaped masked LM (random weights) through our LM (pretrained.convert) against transformers'
BertForMaskedLM, same weights, same run: fill-mask and pseudo-perplexity tokens/s.

    python3 bench/bench_encoders.py --threads 2                 # BERT-base: 12 layers, dim 768, vocab 30522
    python3 bench/bench_encoders.py --layers 2 --dim 128 --heads 4 --repeats 2   # a quick check

fill-mask: --batch texts of --length tokens, framed [CLS] text [SEP], one mask each: `lm.fill_mask(ids,
top_k=5)` against transformers' forward on the same padded batch + softmax + top 5 at the masks (the work
of the fill-mask pipeline without its per-text Python). Pseudo-perplexity: --ppl-texts texts, every
token masked in turn, 32 masked copies per forward on both sides: `lm.perplexities` against a loop over
transformers' model. Tokens/s count the input tokens read (fill-mask) and the tokens scored
(pseudo-perplexity). Best of --repeats rounds, each model once per round in turn, after a warm-up; the
results are checked equal (the same top-5 tokens, perplexities to 1e-4).
"""
import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_gpt2 import best_times, start_bench  # noqa: E402
from data.tokenizer import Tokenizer  # noqa: E402
from pretrained import convert  # noqa: E402

PPL_BATCH = 32  # masked copies per forward, ours (masked_token_losses' default) and theirs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--batch", type=int, default=16, help="fill-mask: texts per call")
    parser.add_argument("--length", type=int, default=64, help="tokens per text (without [CLS] and [SEP])")
    parser.add_argument("--ppl-texts", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def word_tokenizer(vocab: int) -> Tokenizer:
    """A word-level tokenizer with BERT's special tokens, as our Tokenizer with [CLS] / [SEP] framing."""
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = {t: i for i, t in enumerate(special + [f"w{i}" for i in range(vocab - len(special))])}
    hf = HFTokenizer(models.WordLevel(words, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens(special)
    hf.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return Tokenizer(hf, bos_id=2, eos_id=3, pad_id=0, mask_token="[MASK]")


def hf_fill_mask(hf, x: torch.Tensor, real: torch.Tensor, mask_id: int, k: int = 5) -> list:
    with torch.inference_mode():
        probs = hf(input_ids=x, attention_mask=real.long()).logits.float().softmax(dim=-1)
    return [probs[row, x[row] == mask_id].topk(k, dim=-1).indices.tolist() for row in range(x.shape[0])]


def hf_pseudo_perplexity(hf, rows: list, mask_id: int) -> float:
    """exp of the mean cross-entropy of every token but [CLS] / [SEP], each masked alone, PPL_BATCH copies a forward."""
    total, count = 0.0, 0
    for ids in rows:
        x = torch.tensor(ids, device=hf.device)
        positions = torch.arange(1, len(ids) - 1, device=hf.device)
        for start in range(0, len(positions), PPL_BATCH):
            p = positions[start:start + PPL_BATCH]
            copies = x.repeat(len(p), 1)
            copies[torch.arange(len(p)), p] = mask_id
            with torch.inference_mode():
                logits = hf(input_ids=copies).logits[torch.arange(len(p)), p]
            total += F.cross_entropy(logits.float(), x[p], reduction="sum").item()
            count += len(p)
    return math.exp(total / count)


def main() -> None:
    args = parse_args()
    device = start_bench(args)
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = word_tokenizer(args.vocab)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=args.vocab, hidden_size=args.dim, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=4 * args.dim,
                        max_position_embeddings=max(512, args.length + 2))
    hf = BertForMaskedLM(config).eval()
    lm = convert(hf, tokenizer).to(device).eval()
    hf.to(device)
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"BERT shape: {args.layers} layers, {args.heads} heads, dim {args.dim}, vocab {args.vocab}, "
          f"{n_params / 1e6:.1f}M parameters; torch {torch.__version__}, device {device}, "
          f"{torch.get_num_threads()} threads, HF attention {hf.config._attn_implementation}")

    generator = torch.Generator().manual_seed(1)
    texts = torch.randint(5, args.vocab, (args.batch, args.length), generator=generator)
    texts[torch.arange(args.batch), torch.randint(0, args.length, (args.batch,), generator=generator)] = 4  # [MASK]
    texts = texts.tolist()
    framed = torch.tensor([[2] + t + [3] for t in texts], device=device)
    real = torch.ones_like(framed, dtype=torch.bool)
    ppl_texts = [" ".join(f"w{i - 5}" for i in t if i != 4) for t in texts[:args.ppl_texts]]
    ppl_rows = [[2] + tokenizer(t) + [3] for t in ppl_texts]

    runs = {"fill-mask: transformers": lambda: hf_fill_mask(hf, framed, real, 4),
            "fill-mask: ours": lambda: [o for row in lm.fill_mask(texts, top_k=5, as_str=False) for o in row],
            "pseudo-ppl: transformers": lambda: hf_pseudo_perplexity(hf, ppl_rows, 4),
            "pseudo-ppl: ours": lambda: lm.perplexities(ppl_texts)[0]}
    for run in runs.values():
        run()  # warm-up
    timed = best_times(runs, args.repeats, device)
    theirs = [row[0] for row in timed["fill-mask: transformers"][1]]
    ours = [[t for t, _ in options] for options in timed["fill-mask: ours"][1]]
    assert theirs == ours, "fill-mask: different top-5 tokens"
    ppl_theirs, ppl_ours = timed["pseudo-ppl: transformers"][1], timed["pseudo-ppl: ours"][1]
    assert abs(ppl_ours / ppl_theirs - 1) < 1e-4, (ppl_ours, ppl_theirs)

    work = {"fill-mask": framed.numel(), "pseudo-ppl": sum(len(r) - 2 for r in ppl_rows)}
    print(f"\n| measurement | model | tokens/s | ours / transformers |\n|---|---|---:|---:|")
    for what in ("fill-mask", "pseudo-ppl"):
        reference = work[what] / timed[f"{what}: transformers"][0]
        for side in ("transformers", "ours"):
            speed = work[what] / timed[f"{what}: {side}"][0]
            ratio = "" if side == "transformers" else f"{speed / reference:.2f}x"
            print(f"| {what} | {side} | {speed:,.0f} | {ratio} |")
    print(f"\nsame top-5 tokens at every mask; pseudo-perplexity {ppl_ours:.6g} (ours) vs {ppl_theirs:.6g} (transformers)")


if __name__ == "__main__":
    main()
