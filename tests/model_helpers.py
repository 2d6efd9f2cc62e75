"""Tiny models for the model tests: a char tokenizer and an LM of a few thousand parameters."""
import torch

from data.tokenizer import Tokenizer
from model.lm import LM
from model.model_params import ModelParams

ARCHS = ("torch-transformer", "custom-transformer")
TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world", "abc, xyz!"]


def char_tokenizer() -> Tokenizer:
    return Tokenizer.train("char", TEXTS)


def make_lm(tok: Tokenizer, seed: int = 0, **overrides) -> LM:
    params = dict(n_layers=2, n_heads=2, dim=16, max_seq_len=24, dropout=0.0)
    params.update(overrides)
    torch.manual_seed(seed)
    return LM(ModelParams(**params), tok)


def make_spread_lm(tok: Tokenizer, seed: int = 0, noise: float = 0.3, **overrides) -> LM:
    """make_lm with weights of a trained model's size, so that its logits are far from uniform
    (greedy and sampled tokens then differ clearly between positions)."""
    lm = make_lm(tok, seed, **overrides)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(torch.randn_like(p) * noise)
    return lm
