"""lm.out_proj: the unembedding, hidden state [..., dim] -> logits [..., n_tokens].

An nn.Linear(dim, n_tokens, bias=False) (weight [n_tokens, dim], tied to the embedding when
tie_embeddings) that computes the same product faster while decoding on a CPU. There the
projection of a few rows (sampling: 1 row; beam search and batched prompts: 2 to 64) onto a large
vocabulary reads the whole weight for every step and dominates the step (GPT-2: 50257 x 768 = 154 MB).
While decoding, a large head has a oneDNN copy (model/decoding_weights.py) and `linear` multiplies
one row, or 8 rows and more, through it (GPT-2's head: one row 5.6 -> 3.8 ms, 16 rows 16.5 -> 8.0 ms).
Without one (or for 2 to 7 rows), the CPU BLAS reads it 1.3x (one row) to 2x (2 to 64 rows) faster as
weight @ h.T than as F.linear's h @ weight.T (model/decoding_linear.py; one row is doubled, as BLAS'
matrix-vector kernel is the slow one). Training (gradients on), other devices, larger batches and small
vocabularies use F.linear as is.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.decoding_linear import has_onednn_copy, linear

LARGE_WEIGHT = 1 << 22  # 4M values (16 MB): below this, a single row goes through F.linear


class OutputProjection(nn.Linear):
    def forward(self, h: Tensor) -> Tensor:
        if h.numel() != h.shape[-1] or has_onednn_copy(self.weight):  # several rows, or decoding with oneDNN
            return linear(h, self.weight, self.bias)
        if (h.device.type != "cpu" or torch.is_grad_enabled() or self.bias is not None
                or self.weight.numel() < LARGE_WEIGHT):
            return F.linear(h, self.weight, self.bias)
        # one row, doubled: h_rows.t() is a column-major view, BLAS' fast kernel (a row-major copy is slow)
        h_rows = h.reshape(1, -1)
        h_rows = torch.cat((h_rows, h_rows))
        return torch.mm(self.weight, h_rows.t())[:, :1].t().reshape(*h.shape[:-1], -1)
