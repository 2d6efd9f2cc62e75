"""Tokenization speed and peak memory of building the data module on a generated corpus.

    .venv/bin/python bench/bench_tokenize.py --tokens 20e6 [--tokenizer word] [--json]

Writes a corpus of about `--tokens` words (a Zipf-distributed 5,000-word vocabulary, lines of 5-40
words) as {tmp}/bigcorpus/train.txt + valid.txt, then in this process builds `LMDataModule` on it
twice: the first build trains the tokenizer and tokenizes (streamed into the memory-mapped token
cache), the second finds both in the cache. Prints the time of each build, tokens/s of the first,
and the peak RSS (VmHWM, reset before the build) above the RSS before the first build. tests/test_data_memmap.py runs it
on a small corpus to bound the memory.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_corpus(folder: Path, n_tokens: int, seed: int = 0) -> int:
    """train.txt (99%) and valid.txt (1%) of random words; returns the number of words written."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, share in (("train.txt", 0.99), ("valid.txt", 0.01)):
        target = int(n_tokens * share)
        with open(folder / name, "w") as f:
            done = 0
            while done < target:
                n = min(1_000_000, target - done)
                words = vocab[np.minimum(rng.zipf(1.3, n) - 1, len(vocab) - 1)]
                cuts = np.cumsum(rng.integers(5, 41, n // 5 + 1))
                cuts = cuts[cuts < n]
                f.write("\n".join(" ".join(line) for line in np.split(words, cuts)) + "\n")
                done += n
        written += done
    return written


def write_corpus_in_child(folder: Path, n_tokens: int) -> int:
    """write_corpus in a forked process, so that generating it does not count in this one's peak RSS."""
    import multiprocessing
    process = multiprocessing.get_context("fork").Process(target=write_corpus, args=(folder, n_tokens))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"writing the corpus failed (exit code {process.exitcode})")
    return sum(len(line.split()) for name in ("train.txt", "valid.txt") for line in open(folder / name))


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Start the peak (VmHWM) again from the current RSS, so it measures what follows only."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=float, default=20e6, help="words in the corpus (default: %(default)g)")
    parser.add_argument("--tokenizer", default="word", help="word, bpe or char (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON line (for tests)")
    args = parser.parse_args()

    from data.dataloader import DataParams, LMDataModule  # imported before measuring the baseline RSS

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_words = write_corpus_in_child(tmp / "bigcorpus", int(args.tokens))
        corpus_mb = sum(f.stat().st_size for f in (tmp / "bigcorpus").iterdir()) / 2 ** 20
        os.environ["LM_CACHE_DIR"] = str(tmp / "cache")
        params = DataParams(dataset_name="bigcorpus", tokenizer=args.tokenizer, sample_mode="stream",
                            max_seq_len=256, vocab_size=8192)
        reset_peak_rss()
        base_mb = rss_mb()
        start = time.perf_counter()
        dm = LMDataModule(params, batch_size=32, data_path=tmp)
        first_s = time.perf_counter() - start
        peak_mb = rss_mb("VmHWM")
        n_tokens = int((dm.datasets["train"].lengths - 1).sum() + (dm.datasets["val:main"].lengths - 1).sum())
        batch = next(iter(dm.train_dataloader()))
        start = time.perf_counter()
        LMDataModule(params, batch_size=32, data_path=tmp)
        second_s = time.perf_counter() - start
    result = {"words": n_words, "tokens": n_tokens, "corpus_mb": round(corpus_mb, 1), "first_build_s": round(first_s, 2),
              "tokens_per_s": round(n_tokens / first_s), "second_build_s": round(second_s, 2),
              "rss_before_mb": round(base_mb, 1), "peak_rss_mb": round(peak_mb, 1),
              "peak_above_before_mb": round(peak_mb - base_mb, 1), "batch_shape": list(batch["x_indices"].shape),
              "token_dtype": dm.datasets["train"].token_file.dtype.name}
    if args.json:
        print(json.dumps(result))
        return
    print(f"corpus: {n_words / 1e6:.1f}M words ({corpus_mb:.0f} MB of text), {n_tokens / 1e6:.1f}M tokens "
          f"with <eos>, {args.tokenizer} tokenizer, ids stored as {result['token_dtype']}")
    print(f"first build (train tokenizer + tokenize): {first_s:.1f} s = {n_tokens / first_s / 1e6:.2f}M tokens/s")
    print(f"second build (cache hit): {second_s:.2f} s")
    print(f"peak RSS {peak_mb:.0f} MB ({peak_mb - base_mb:.0f} MB above the {base_mb:.0f} MB before building)")


if __name__ == "__main__":
    main()
