"""Every family pretrained.py converts, on small random checkpoints built from transformers' config
classes (several layers and heads; GQA for Llama-likes, partial rotary and parallel residual for
Pythia): logits, attention, embeddings, greedy samples, perplexities and tokenizer ids equal
transformers' (pretrained_helpers.check_all). Then a Llama-shaped run trained here exports."""
import re
from pathlib import Path

import pytest
import torch

from data.data_params import DataParams
from data.tokenizer import Tokenizer
from main import build_arg_parser
from train.runs import Namer
from model.lm import LM
from model.model_params import ModelParams
from pretrained import export_hf, get_pretrained
from pretrained_helpers import CHECKPOINTS, TEXTS, check_all, check_export, make_checkpoint, randomize
from train.run import run_training
from train.train_params import TrainParams

LLAMA_SHAPE = dict(positional_encoding="rope", norm="rmsnorm", activation="swiglu", bias=False,
                   layer_architecture="custom-transformer")  # the new options run on the custom path


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_family_matches_transformers(name, tmp_path):
    model_class, config, expected = CHECKPOINTS[name]
    folder = make_checkpoint(tmp_path / name, model_class, config)
    lm = get_pretrained(folder)
    mp = lm.model_params
    assert {k: getattr(mp, k) for k in expected} == expected
    assert mp.layer_architecture == "custom-transformer" and not lm.training
    assert (lm.tokenizer.bos_id, lm.tokenizer.eos_id) == (config.bos_token_id, config.eos_token_id)
    check_all(lm, folder, n_layers=config.num_hidden_layers, n_heads=config.num_attention_heads)


def test_a_trained_llama_shaped_run_exports(tmp_path):
    """rope, rmsnorm, swiglu, no biases, GQA, untied: trained a few steps on PTB, exported from its folder."""
    args = build_arg_parser().parse_args(["--config=export", "--no-wandb", "--save", f"--save-dir={tmp_path}"])
    namer = Namer(DataParams(dataset_name="ptb", max_seq_len=32, max_train_samples=64, max_eval_samples=16),
                  ModelParams(n_layers=2, n_heads=4, n_kv_heads=2, dim=32, dim_ff=48, rope_base=5000.0,
                              tie_embeddings=False, **LLAMA_SHAPE),
                  TrainParams(max_steps=3, batch_size=16, lr=1e-2, n_print_samples=0), args, config_name="export")
    folder = Path(run_training(namer)["save_folder"])
    from train.run_folder import load_run
    out = export_hf(folder, tmp_path / "exported")
    assert (out / "config.json").read_text().count('"model_type": "llama"') == 1
    check_export(load_run(folder).lm, out)


def test_pretrained_models_export_back(tmp_path):
    """A converted Qwen3 (qk_norm) and a biased Llama-shaped model write out and read back identically."""
    model_class, config, _ = CHECKPOINTS["qwen3"]
    qwen3 = get_pretrained(make_checkpoint(tmp_path / "qwen3", model_class, config))
    check_export(qwen3, export_hf(qwen3, tmp_path / "qwen3-out"))
    torch.manual_seed(0)
    lm = randomize(LM(ModelParams(n_layers=2, n_heads=2, dim=16, max_seq_len=32, **{**LLAMA_SHAPE, "bias": True}),
                      Tokenizer.train("word", TEXTS)))
    check_export(lm, export_hf(lm, tmp_path / "biased"))


def test_export_names_the_fields_without_an_equivalent(tmp_path):
    lm = LM(ModelParams(n_layers=1, n_heads=2, dim=16, max_seq_len=16, rotary_frac=0.5, qk_norm=True,
                        **{**LLAMA_SHAPE, "activation": "geglu"}), Tokenizer.train("char", TEXTS))
    with pytest.raises(ValueError) as error:
        export_hf(lm, tmp_path / "out")
    message = str(error.value)
    assert "Llama: activation='geglu' (Llama's MLP is SwiGLU); rotary_frac=0.5 (Llama rotates every head dim)" in message
    assert "GPT-2: " in message and "norm='rmsnorm'" in message
    assert not (tmp_path / "out").exists()
    lm = LM(ModelParams(n_layers=1, n_heads=2, dim=16, max_seq_len=16, qk_norm=True, **{**LLAMA_SHAPE, "bias": True}),
            Tokenizer.train("char", TEXTS))
    with pytest.raises(ValueError, match=r"qk_norm=True with bias=True \(written as Qwen3"):
        export_hf(lm, tmp_path / "out")


def test_pythia_hub_file_layout_loads(tmp_path):
    """The hub's Pythia files: the head named embed_out, and causal-mask and rotary buffers stored next to
    the weights (attention.bias, attention.masked_bias, attention.rotary_emb.inv_freq)."""
    from safetensors.torch import load_file, save_file
    model_class, config, _ = CHECKPOINTS["pythia"]
    folder = make_checkpoint(tmp_path / "pythia", model_class, config)
    weights = load_file(folder / "model.safetensors")
    assert "embed_out.weight" in weights  # save_pretrained writes the hub's name
    for i in range(config.num_hidden_layers):
        weights[f"gpt_neox.layers.{i}.attention.bias"] = torch.ones(1, 1, 128, 128, dtype=torch.bool).tril()
        weights[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        weights[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(2)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    lm = get_pretrained(folder)
    hf = model_class.from_pretrained(folder).eval()
    x = torch.tensor([[0, 5, 9, 300, 7]])
    with torch.no_grad():
        torch.testing.assert_close(lm(x), hf(x).logits, atol=1e-4, rtol=0)


def test_options_our_layer_does_not_compute_are_refused_before_loading(tmp_path):
    """Only config.json is written: the refusal comes from the config, before any weight is read."""
    from transformers import GPTNeoXConfig, LlamaConfig, OPTConfig, Qwen3Config
    size = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1)
    cases = {
        "rope-scaling": (LlamaConfig(**size, rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_type='linear'"),
        "wide-heads": (Qwen3Config(**size, head_dim=32), "head_dim=32 with 4 heads != hidden_size 64"),
        "gelu-fast": (GPTNeoXConfig(**size, hidden_act="gelu_fast"), "hidden_act='gelu_fast'"),
        "opt-350m": (OPTConfig(**size, word_embed_proj_dim=32, do_layer_norm_before=False), "project_in/project_out"),
    }
    for name, (config, message) in cases.items():
        config.save_pretrained(tmp_path / name)
        with pytest.raises(ValueError, match=re.escape(message)):
            get_pretrained(tmp_path / name)
