"""pretrained.py: the framework (any family's checkpoint folder -> our LM, clear errors) on GPT-2,
and export_hf / `main.py --export-hf`: runs trained here load in plain transformers with equal logits.
Families other than GPT-2 are tested in test_pretrained_families.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ElectraConfig, GPT2Config, GPT2LMHeadModel

from data.data_params import DataParams
from data.tokenizer import Tokenizer
from main import build_arg_parser, main
from train.runs import Namer
from model.lm import LM
from model.model_params import ModelParams
from pretrained import export_hf, get_pretrained
from pretrained_helpers import TEXTS, check_all, check_export, check_tokenizer_ids, randomize, save_tokenizer
from train.run import run_training
from train.train_params import TrainParams

REPO = Path(__file__).resolve().parents[1]
EOS = 50256


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """A random 3-layer, 4-head GPT-2 with a vocabulary padded past the tokenizer's (50304 > 50257)."""
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=96, vocab_size=50304, bos_token_id=EOS,
                        eos_token_id=EOS)
    randomize(GPT2LMHeadModel(config)).save_pretrained(folder)
    save_tokenizer(folder, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    return folder


def test_gpt2_through_get_pretrained_matches_transformers(gpt2_folder):
    lm = get_pretrained(gpt2_folder)
    assert not lm.training and lm.model_params.layer_architecture == "custom-transformer"
    assert lm.n_tokens == 50304 and lm.tokenizer.vocab_size == 50304  # the checkpoint's padded vocabulary
    assert (lm.tokenizer.bos_id, lm.tokenizer.eos_id, lm.tokenizer.pad_id) == (EOS, EOS, EOS)
    assert lm.tokenizer.tokens([5779, 50300]) == ["Well", "<id 50300>"]  # an id only the model's vocabulary has
    check_all(lm, gpt2_folder, n_layers=3, n_heads=4)


def test_dtype_and_special_ids_from_the_config(tmp_path, gpt2_folder):
    lm = get_pretrained(gpt2_folder, dtype=torch.bfloat16)
    assert lm.embedding.weight.dtype == torch.bfloat16 and lm("Hello").dtype == torch.bfloat16
    folder = tmp_path / "own-specials"
    hf = randomize(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=50259, bos_token_id=50257,
                                              eos_token_id=[50258, EOS], pad_token_id=EOS)))
    hf.save_pretrained(folder)
    save_tokenizer(folder, ["<s>", "</s>"], bos_token="<s>", eos_token="</s>")
    lm = get_pretrained(folder)
    assert (lm.tokenizer.bos_id, lm.tokenizer.eos_id, lm.tokenizer.pad_id) == (50257, 50258, EOS)
    assert lm.sample("Hello", max_seq_len=5, temperature=0, as_str=False)[:1] == lm.tokenizer("Hello")
    check_tokenizer_ids(lm, folder)


def test_unsupported_or_broken_checkpoints_fail_clearly(tmp_path, gpt2_folder):
    electra = tmp_path / "electra"
    ElectraConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64).save_pretrained(electra)
    with pytest.raises(ValueError, match=r"'electra' checkpoint.*Supported model_types: gpt2 \(GPT-2\)"):
        get_pretrained(electra)
    with pytest.raises(FileNotFoundError, match="no model folder"):
        get_pretrained(tmp_path / "missing")
    with pytest.raises(OSError, match="(?s)could not load a model config from 'EleutherAI/not-in-the-cache'.*network"):
        get_pretrained("EleutherAI/not-in-the-cache")  # tests run offline: a hub name not in the HF cache
    with pytest.raises(FileNotFoundError, match="no tokenizer folder"):
        get_pretrained(gpt2_folder, tokenizer_path=tmp_path / "no-such-tokenizer")
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        odd = tmp_path / "odd"
        GPT2Config(n_layer=1, n_embd=32, n_head=2, scale_attn_by_inverse_layer_idx=True).save_pretrained(odd)
        get_pretrained(odd)
    no_tokenizer = tmp_path / "weights-only"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2)).save_pretrained(no_tokenizer)
    with pytest.raises(FileNotFoundError, match="no tokenizer.*tokenizer_path="):
        get_pretrained(no_tokenizer)
    weights = load_file(gpt2_folder / "model.safetensors")
    for name, change in (("missing", lambda w: w.pop("transformer.h.1.mlp.c_fc.bias")),
                         ("extra", lambda w: w.update({"transformer.h.0.attn.rotary.extra": torch.ones(2)}))):
        broken = tmp_path / name
        broken.mkdir()
        for f in gpt2_folder.iterdir():
            (broken / f.name).write_bytes(f.read_bytes())
        w = dict(weights)
        change(w)
        save_file(w, broken / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.bias" if name == "missing" else "rotary.extra"):
            get_pretrained(broken)


# ---- export ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_shaped_run(tmp_path_factory) -> Path:
    """A GPT-2-shaped run (learned positions, layernorm, gelu; the default editable layer) trained a few steps on PTB."""
    save_dir = tmp_path_factory.mktemp("saved")
    args = build_arg_parser().parse_args(["--config=export", "--no-wandb", "--save", f"--save-dir={save_dir}"])
    namer = Namer(DataParams(dataset_name="ptb", max_seq_len=32, max_train_samples=64, max_eval_samples=16),
                  ModelParams(n_layers=2, n_heads=2, dim=32, activation="gelu_tanh"),
                  TrainParams(max_steps=3, batch_size=16, lr=1e-2, n_print_samples=0), args, config_name="export")
    return Path(run_training(namer)["save_folder"])


def test_a_trained_gpt2_shaped_run_exports_from_the_command_line(gpt2_shaped_run, tmp_path):
    from train.run_folder import load_run
    out = tmp_path / "exported"
    result = subprocess.run([sys.executable, "main.py", "--export-hf", gpt2_shaped_run.name, str(out),
                             f"--save-dir={gpt2_shaped_run.parents[3]}"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AutoModelForCausalLM.from_pretrained" in result.stdout
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    check_export(load_run(gpt2_shaped_run).lm, out)



def test_export_hf_command_line_errors(gpt2_shaped_run, tmp_path, capsys):
    save_dir = f"--save-dir={gpt2_shaped_run.parents[3]}"
    with pytest.raises(SystemExit) as stop:
        main(["--export-hf", "2024-01-01--00-00-00", str(tmp_path / "x"), save_dir])
    assert stop.value.code == 2 and "no saved run with timestamp '2024-01-01--00-00-00'" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as stop:
        main(["--export-hf", str(gpt2_shaped_run), str(tmp_path / "full")])
    assert stop.value.code == 2 and "already exists and is not empty" in capsys.readouterr().err


def test_export_writes_no_bias_sinusoidal_and_untied_models_as_gpt2(tmp_path):
    tokenizer = Tokenizer.train("word", TEXTS)
    for i, options in enumerate([dict(bias=False, positional_encoding="sinusoidal", activation="relu"),
                                 dict(positional_encoding="none", tie_embeddings=False, dim_ff=40, activation="gelu")]):
        torch.manual_seed(i)
        lm = randomize(LM(ModelParams(n_layers=2, n_heads=2, dim=16, max_seq_len=48, **options), tokenizer))
        check_export(lm, export_hf(lm, tmp_path / f"export-{i}"))


def test_export_refuses_what_transformers_cannot_express(tmp_path):
    tokenizer = Tokenizer.train("char", TEXTS)
    lm = LM(ModelParams(n_layers=1, n_heads=2, dim=16, max_seq_len=16, norm_first=False), tokenizer)
    with pytest.raises(ValueError, match=r"GPT-2: norm_first=False \(GPT-2 is pre-LN\)"):
        export_hf(lm, tmp_path / "post-ln")
    assert not (tmp_path / "post-ln").exists()
    lstm = LM(ModelParams(n_layers=1, n_heads=2, dim=16, max_seq_len=16, layer_architecture="lstm"), tokenizer)
    with pytest.raises(ValueError, match=r"GPT-2: layer_architecture='lstm' \(GPT-2 is a transformer\)"):
        export_hf(lstm, tmp_path / "lstm")
