"""lm.out_proj: the unembedding, hidden state [..., dim] -> logits [..., n_tokens].

An nn.Linear(dim, n_tokens, bias=False) (weight [n_tokens, dim], tied to the embedding when
tie_embeddings) that computes the same product faster while decoding on a CPU. There the
projection of a few rows (sampling: 1 row; beam search: beam_size rows) onto a large vocabulary
reads the whole weight for every step and dominates the step (GPT-2: 50257 x 768 = 154 MB). The
CPU BLAS reads it 1.3x (one row) to 3x (2 to 8 rows) faster as weight @ h.T than as F.linear's h @ weight.T
(measured with bench/bench_gpt2.py's shapes; one row is doubled, as BLAS' matrix-vector kernel is the slow one).
Training (gradients on), other devices, larger batches and small vocabularies use F.linear as is.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEW_ROWS = 8  # up to this many rows, weight @ h.T is the faster product on a CPU
LARGE_WEIGHT = 1 << 22  # 4M values (16 MB): smaller weights stay in cache, where the layouts do not differ


class OutputProjection(nn.Linear):
    def forward(self, h: Tensor) -> Tensor:
        rows = h.numel() // h.shape[-1]
        if (h.device.type != "cpu" or torch.is_grad_enabled() or rows > FEW_ROWS or self.bias is not None
                or self.weight.numel() < LARGE_WEIGHT):
            return F.linear(h, self.weight, self.bias)
        h_rows = h.reshape(rows, -1)
        if rows == 1:
            h_rows = torch.cat((h_rows, h_rows))
        # h_rows.t() is a column-major view: BLAS' fast kernel for this product (a row-major copy is slow)
        return torch.mm(self.weight, h_rows.t())[:, :rows].t().reshape(*h.shape[:-1], -1)
