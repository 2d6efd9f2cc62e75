"""LM forward: input forms, masking, the two layer architectures, embeddings/attention, losses, errors."""
import itertools
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.tokenizer import Tokenizer
from model.lm import LM
from model.model_params import ModelParams
from model_helpers import ARCHS, TEXTS, char_tokenizer, make_lm


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return char_tokenizer()




def randomize(lm: LM) -> LM:
    """Weights of a trained model's size (GPT-2's init is tiny and LayerNorms start at (1, 0)), so that
    every part of the computation, e.g. the exact shape of the activation, shows in the outputs."""
    with torch.no_grad():
        for name, p in lm.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "norm" in name else 0.5))
    return lm


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    """Equal up to float32 rounding, relative to the size of the values."""
    scale = max(a.abs().max().item(), 1.0)
    assert (a - b).abs().max().item() <= 1e-5 * scale, f"{what}: max diff {(a - b).abs().max().item()}, scale {scale}"


# ---- input forms ------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_every_input_form_gives_the_same_logits(tok, arch):
    lm = make_lm(tok, layer_architecture=arch).eval()
    ids = tok("hello")
    a = lm("hello")
    assert a.shape == (1, len(ids), tok.vocab_size)
    assert torch.equal(a, lm(ids))
    assert torch.equal(a, lm(tuple(ids)))
    assert torch.equal(a, lm(torch.tensor(ids)))
    assert torch.equal(a, lm(torch.Tensor(ids)))  # float tensor of whole numbers
    assert torch.equal(a, lm(torch.tensor([ids], dtype=torch.int32)))
    batch = lm([ids, tok("world")])  # equally long id lists make a batch
    assert batch.shape == (2, len(ids), tok.vocab_size)
    assert torch.allclose(a[0], batch[0], atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_right_padding_leaves_real_tokens_unchanged(tok, arch):
    lm = make_lm(tok, layer_architecture=arch).eval()
    short, long = tok("hi"), tok("hello world")
    for pad in (tok.pad_id, 5):
        batch = torch.full((2, len(long)), pad)
        batch[0, :len(short)] = torch.tensor(short)
        batch[1] = torch.tensor(long)
        out = lm(batch)
        assert torch.allclose(out[0, :len(short)], lm(short)[0], atol=1e-5)
        assert torch.allclose(out[1], lm(long)[0], atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_later_tokens_do_not_change_earlier_logits(tok, arch):
    lm = make_lm(tok, layer_architecture=arch)
    x = torch.tensor([tok("hello world")])
    y = x.clone()
    y[0, 6:] = tok("a")[0]
    a, b = lm(x), lm(y)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


# ---- the two layer architectures -----------------------------------------------------------
def assert_paths_agree(tok, **params):
    fast = randomize(make_lm(tok, layer_architecture="torch-transformer", **params))
    custom = make_lm(tok, seed=1, layer_architecture="custom-transformer", **params)
    custom.load_state_dict(fast.state_dict())
    x = torch.randint(0, tok.vocab_size, (3, 11))
    # train mode (dropout 0): PyTorch's scaled_dot_product_attention path, with gradients
    a, b = fast(x), custom(x)
    assert_close(a, b, "train-mode logits")
    a.square().mean().backward()
    b.square().mean().backward()
    grads = dict(custom.named_parameters())
    for name, p in fast.named_parameters():
        assert_close(p.grad, grads[name].grad, name)
    # eval mode under no_grad: PyTorch's fused encoder-layer kernel (when it applies)
    fast.eval(), custom.eval()
    with torch.no_grad():
        a, b = fast(x), custom(x)
    assert_close(a, b, "eval-mode logits")


@pytest.mark.parametrize("norm_first,activation,positional_encoding",
                         list(itertools.product((True, False), ("relu", "gelu", "gelu_tanh"),
                                           ("learned", "sinusoidal", "none"))))
def test_fast_path_equals_custom_path(tok, norm_first, activation, positional_encoding):
    assert_paths_agree(tok, norm_first=norm_first, activation=activation, positional_encoding=positional_encoding)


@pytest.mark.parametrize("params", [dict(bias=False), dict(final_norm=False), dict(tie_embeddings=False),
                                    dict(n_heads=1, dim_ff=24), dict(n_heads=4, layer_norm_eps=1e-3)])
def test_fast_path_equals_custom_path_other_settings(tok, params):
    assert_paths_agree(tok, **params)


def test_same_seed_gives_same_initial_weights_in_both_paths(tok):
    fast = make_lm(tok, seed=3, layer_architecture="torch-transformer", tie_embeddings=False)
    custom = make_lm(tok, seed=3, layer_architecture="custom-transformer", tie_embeddings=False)
    theirs = custom.state_dict()
    for name, value in fast.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    # and the global RNG is left in the same state too
    make_lm(tok, seed=4, layer_architecture="torch-transformer")
    after_fast = torch.rand(3)
    make_lm(tok, seed=4, layer_architecture="custom-transformer")
    assert torch.equal(after_fast, torch.rand(3))


def test_with_layer_architecture_copies_weights(tok):
    fast = randomize(make_lm(tok, layer_architecture="torch-transformer")).eval()
    custom = fast.with_layer_architecture("custom-transformer")
    assert custom.model_params.layer_architecture == "custom-transformer" and not custom.training
    x = torch.tensor([tok("lazy dog")])
    assert_close(fast(x), custom(x))



def test_with_layer_architecture_keeps_the_dtype(tok):
    fast = randomize(make_lm(tok, layer_architecture="torch-transformer")).double().eval()
    custom = fast.with_layer_architecture("custom-transformer")
    assert all(p.dtype == torch.float64 for p in custom.parameters())
    x = torch.tensor([tok("lazy dog")])
    assert custom(x).dtype == torch.float64
    assert_close(fast(x), custom(x))

def test_parameter_names_and_tied_embeddings(tok):
    lm = make_lm(tok, layer_architecture="custom-transformer", dim_ff=40)
    shapes = {k: tuple(v.shape) for k, v in lm.state_dict().items()}
    V, d = tok.vocab_size, 16
    expected = {"embedding.weight": (V, d), "pos_embedding.weight": (24, d),
                "decoder.final_norm.weight": (d,), "decoder.final_norm.bias": (d,), "out_proj.weight": (V, d)}
    for i in range(2):
        p = f"decoder.layers.{i}."
        expected.update({p + "self_attn.in_proj_weight": (3 * d, d), p + "self_attn.in_proj_bias": (3 * d,),
                         p + "self_attn.out_proj.weight": (d, d), p + "self_attn.out_proj.bias": (d,),
                         p + "linear1.weight": (40, d), p + "linear1.bias": (40,),
                         p + "linear2.weight": (d, 40), p + "linear2.bias": (d,)})
        for n in ("norm1", "norm2"):
            expected.update({p + n + ".weight": (d,), p + n + ".bias": (d,)})
    assert shapes == expected
    assert lm.out_proj.weight is lm.embedding.weight
    assert lm.out_proj.bias is None
    assert repr(lm).startswith("LM(custom-transformer: 2 layers") and f"{lm.n_parameters():,} parameters" in repr(lm)
    assert lm.n_parameters() == sum(v.numel() for k, v in lm.state_dict().items() if k != "out_proj.weight")
    untied = make_lm(tok, tie_embeddings=False)
    assert untied.out_proj.weight is not untied.embedding.weight


# ---- embeddings and attention --------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_embeddings_and_attention(tok, arch):
    lm = randomize(make_lm(tok, layer_architecture=arch, n_layers=3)).eval()
    x = torch.tensor([tok("hello world"), tok("abc, xyz!!!")])
    out = lm(x, get_embeddings=True, get_attn=True)
    B, T = x.shape
    assert out["logits"].shape == (B, T, tok.vocab_size)
    assert torch.allclose(out["logits"], lm(x), atol=1e-5)
    emb, attns = out["embeddings"], out["attns"]
    assert emb.shape == (B, 3 + 1, T, 16)
    assert torch.allclose(emb[:, 0], lm.embed(x))
    assert torch.allclose(lm.out_proj(lm.decoder.final_norm(emb[:, -1])), out["logits"], atol=1e-5)
    assert attns.shape == (B, 3, 2, T, T)
    assert torch.allclose(attns.sum(-1), torch.ones(B, 3, 2, T), atol=1e-5)
    assert torch.all(attns.triu(1) == 0)
    assert set(lm(x, get_embeddings=True)) == {"logits", "embeddings"}
    assert set(lm(x, get_attn=True)) == {"logits", "attns"}


def test_attention_is_the_same_in_both_paths(tok):
    fast = randomize(make_lm(tok, layer_architecture="torch-transformer")).eval()
    custom = fast.with_layer_architecture("custom-transformer")
    x = torch.tensor([tok("the quick brown")])
    a, b = fast(x, get_attn=True, get_embeddings=True), custom(x, get_attn=True, get_embeddings=True)
    for key in ("logits", "attns", "embeddings"):
        assert_close(a[key], b[key], key)


# ---- researchers' edits --------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_plain_module_inserted_between_blocks(tok, arch):
    lm = make_lm(tok, layer_architecture=arch, n_layers=3).eval()
    x = torch.tensor([tok("hello world")])
    before = lm(x)
    lm.decoder.layers.insert(1, nn.ReLU())
    out = lm(x, get_embeddings=True, get_attn=True)
    assert out["logits"].shape == before.shape and not torch.allclose(out["logits"], before)
    assert out["embeddings"].shape[1] == 3 + 1 and out["attns"].shape[1] == 3
    assert torch.all(out["embeddings"][:, 1] >= 0)  # block 1 reads the ReLU's output
    assert lm.decoder.n_blocks == 3 and len(lm.new_kv_cache()) == 3


def test_attn_requests_reach_the_attention(tok, monkeypatch):
    from model.transformer.torch_f_multi_head_attention_forward import SelfAttention
    seen = []
    original = SelfAttention.forward

    def recording(self, *args, **kwargs):
        seen.append((kwargs["attn_requests"], self.model_params))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SelfAttention, "forward", recording)
    lm = make_lm(tok)  # the default path is the editable one
    lm("hello")
    assert seen == [(None, lm.model_params)] * 2


# ---- training interface ------------------------------------------------------------------
def test_get_batch_xyz_and_get_losses(tok):
    lm = make_lm(tok, layer_architecture="custom-transformer")
    x_indices = torch.tensor([[0, 5, 6, 7, 0], [0, 8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    x, y, z = lm.get_batch_xyz({"x_indices": x_indices, "mask": mask})
    assert torch.equal(x, x_indices[:, :-1])
    assert torch.equal(y, torch.tensor([[5, 6, 7, 0], [8, 9, 0, -100]]))
    assert torch.allclose(z, lm(x))
    target_mask = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    _, y, _ = lm.get_batch_xyz({"x_indices": x_indices, "mask": mask, "target_mask": target_mask})
    assert torch.equal(y, torch.tensor([[-100, -100, 7, 0], [-100, 9, 0, -100]]))
    loss, n = lm.get_losses({"x_indices": x_indices, "mask": mask, "target_mask": target_mask}, None)
    counted = y != -100
    expected = F.cross_entropy(z[counted], y[counted])
    assert n == 2 and loss.dim() == 0 and torch.allclose(loss, expected)
    loss.backward()
    assert lm.embedding.weight.grad is not None


# ---- errors --------------------------------------------------------------------------------
def test_input_errors_are_clear(tok):
    lm = make_lm(tok)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, "):
        lm([1, 2, tok.vocab_size])
    with pytest.raises(ValueError, match="token ids must be in"):
        lm(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match=r"longer than the model's context \(model_params.max_seq_len = 24\)"):
        lm(list(range(5)) * 5)
    for empty in ("", [], torch.zeros(0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long)):
        with pytest.raises(ValueError, match="empty input"):
            lm(empty)
    with pytest.raises(ValueError, match="non-whole"):
        lm(torch.tensor([1.5, 2.0]))
    with pytest.raises(ValueError, match="one sequence or a \\[batch, seq\\] batch"):
        lm(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="equally long id lists"):
        lm([[1, 2, 3], [4]])
    with pytest.raises(TypeError, match="string, a list of token ids or a tensor"):
        lm(3)


def test_model_params_errors(tok):
    with pytest.raises(ValueError, match="divisible by n_heads"):
        make_lm(tok, dim=10, n_heads=3)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        make_lm(tok, activation="swish")
    with pytest.raises(ValueError, match="unknown layer_architecture"):
        make_lm(tok, layer_architecture="mamba")
    with pytest.raises(ValueError, match="max_seq_len must be a positive int"):
        make_lm(tok, max_seq_len=None)


def test_gpt2_tokenizer_readme_forward_examples():
    tok = Tokenizer.gpt2(Path(os.environ["LM_DATA_PATH"]) / "gpt2-tokenizer")
    lm = make_lm(tok, dim=8, n_layers=1, max_seq_len=16).eval()
    a = lm("hello")
    b = lm(lm.tokenizer("hello"))
    assert torch.equal(a, b)
    c = lm(torch.Tensor(lm.tokenizer("hello")))
    assert torch.equal(a, c)
    d = lm(torch.Tensor(lm.tokenizer(["hello", "hi"])))
    assert torch.allclose(a, d[0:1], atol=1e-6)  # batch 2 may take other matmul kernels than batch 1
    assert lm.n_tokens == 50257
