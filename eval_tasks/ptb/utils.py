"""Local lm-eval tasks on PTB's test split, read from the data folder (no network).

The data folder is found as the rest of the repo finds it (data/data_path.py: LM_DATA_PATH, then
data-path.txt); the documents are built here, so the YAMLs name no path.
"""
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import datasets

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # lm-eval imports this file by path, from any working directory
    sys.path.insert(0, str(REPO))
from data.data_path import describe_data_path, find_data_path  # noqa: E402

N_CHOICES = 4
SKIPPED_ANSWERS = {"<unk>", "N"}


def ptb_test_lines() -> List[str]:
    folder = find_data_path()
    path = folder / "ptb" / "ptb.test.txt" if folder is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"PTB's test split is not in the data folder ({describe_data_path()}): "
                                f"the local eval tasks read <data folder>/ptb/ptb.test.txt")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def next_word_docs(lines: List[str]) -> List[Dict[str, Any]]:
    """One question per line of at least 6 words: the first half as context, the next word against
    three frequent test-split words (drawn with the line's index as seed), in a shuffled order."""
    counts = Counter(word for line in lines for word in line.split())
    common = sorted(w for w, n in counts.items() if n >= 20 and w not in SKIPPED_ANSWERS)
    docs = []
    for index, line in enumerate(lines):
        words = line.split()
        cut = len(words) // 2
        if len(words) < 6 or words[cut] in SKIPPED_ANSWERS:
            continue
        rng = random.Random(index)
        answer = words[cut]
        choices = [answer] + rng.sample([w for w in common if w != answer], N_CHOICES - 1)
        rng.shuffle(choices)
        docs.append({"context": " ".join(words[:cut]), "choices": choices, "label": choices.index(answer)})
    return docs


def load_next_word(**kwargs: Any) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(next_word_docs(ptb_test_lines()))})


def load_lines(**kwargs: Any) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"text": t} for t in ptb_test_lines()])})


def perplexity_results(doc: Dict[str, Any], results: List[float]) -> Dict[str, Any]:
    """Word and byte perplexities and bits per byte of one line (lm-eval aggregates the pairs)."""
    (loglikelihood,) = results
    n_words = len(re.split(r"\s+", doc["text"].strip()))
    n_bytes = len(doc["text"].encode("utf-8"))
    return {"word_perplexity": (loglikelihood, n_words), "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}
