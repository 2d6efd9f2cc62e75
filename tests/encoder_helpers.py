"""Tiny random BERT, RoBERTa and DistilBERT checkpoints with real tokenizers trained here (WordPiece for
BERT and DistilBERT, byte-level BPE for RoBERTa, on PTB lines): no network."""
import json
import os
from pathlib import Path
from typing import Dict, List

import torch


N_LAYERS, N_HEADS, DIM = 2, 4, 32
TEXTS = ["the company said it expects to report a loss", "shares rose", "the bank 's chairman declined to comment"]


def ptb_lines(n: int = 3000) -> List[str]:
    return (Path(os.environ["LM_DATA_PATH"]) / "ptb" / "ptb.train.txt").read_text().splitlines()[:n]


def wordpiece_tokenizer():
    """transformers' BertTokenizerFast over a WordPiece vocabulary trained with `tokenizers`."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast
    trained = BertWordPieceTokenizer(lowercase=True)
    trained.train_from_iterator(ptb_lines(), vocab_size=1000, show_progress=False,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return BertTokenizerFast(vocab=trained.get_vocab())


def byte_level_bpe_tokenizer():
    """transformers' RobertaTokenizerFast over a byte-level BPE trained with `tokenizers`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast
    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(ptb_lines(), vocab_size=1000, show_progress=False,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    model = json.loads(trained._tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    return RobertaTokenizerFast(vocab=model["vocab"], merges=merges)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Wide random weights, LayerNorm gains around 1 and nonzero biases (tied tensors drawn once); eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() == 1 and "norm" in name.lower():
                p.copy_((1 + 0.2 * noise) if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(0.1 * noise if name.endswith("bias") else 0.2 * noise)
    return model.eval()


def make_encoders(root: Path) -> Dict[str, Path]:
    """{"bert", "roberta", "distilbert", "bert-pretraining"}: save_pretrained folders (model + tokenizer).
    "bert-pretraining" is a BertForPreTraining checkpoint (pooler and next-sentence head, as the hub's
    bert-base-uncased), read as a masked LM."""
    from transformers import (BertConfig, BertForMaskedLM, BertForPreTraining, DistilBertConfig,
                              DistilBertForMaskedLM, RobertaConfig, RobertaForMaskedLM)
    wordpiece, bpe = wordpiece_tokenizer(), byte_level_bpe_tokenizer()
    bert = dict(vocab_size=len(wordpiece), hidden_size=DIM, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                intermediate_size=2 * DIM, max_position_embeddings=64)
    made = {
        "bert": (BertForMaskedLM(BertConfig(**bert)), wordpiece),
        "bert-pretraining": (BertForPreTraining(BertConfig(**bert)), wordpiece),
        "roberta": (RobertaForMaskedLM(RobertaConfig(**{**bert, "vocab_size": len(bpe), "max_position_embeddings": 66},
                                                     pad_token_id=1, bos_token_id=0, eos_token_id=2)), bpe),
        "distilbert": (DistilBertForMaskedLM(DistilBertConfig(vocab_size=len(wordpiece), dim=DIM, n_layers=N_LAYERS,
                                                              n_heads=N_HEADS, hidden_dim=2 * DIM,
                                                              max_position_embeddings=64)), wordpiece),
    }
    folders = {}
    for seed, (name, (model, tokenizer)) in enumerate(made.items()):
        model = randomize(model, seed=seed)
        folders[name] = root / name
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders
