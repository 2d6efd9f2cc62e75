"""TrainParams.precision: what "auto" chooses, and training in bfloat16 mixed precision on the CPU (fused
AdamW with clipping, validation in float32, same seed => same losses, bitwise resume)."""
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.profiler import profile

from model.lm import LM
from model.model_params import ModelParams
from model_helpers import char_tokenizer
from test_train import SORT_TRAIN, make_namer, sort_task
from train.precision import describe_precision, native_bf16, resolve_precision
from train.run import run_training
from train.run_folder import load_run
from train.trainer import corpus_loss


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16-mixed"), (False, True, "bf16-mixed"),
                                                        (False, False, "32")])
def test_auto_is_bf16_mixed_where_the_cpu_multiplies_bfloat16(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool,
                                                              amx: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert native_bf16(cpu) == (expected == "bf16-mixed")
    assert resolve_precision("auto", cpu) == expected
    for explicit in ("32", "bf16-mixed"):  # an explicit choice is kept
        assert resolve_precision(explicit, cpu) == explicit
    assert describe_precision("auto", expected).startswith(f'{expected} (precision="auto": ')
    assert describe_precision("32", "32") == "32"


class OptimizerSeen(Callback):
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.fused = trainer.optimizers[0].defaults["fused"]
        self.precision = trainer.precision


@pytest.fixture(scope="module")
def bf16_runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """The sort run in bf16-mixed (twice) and in float32, saved."""
    tmp_path = tmp_path_factory.mktemp("precision")
    runs: Dict[str, Any] = {}
    for name, precision in (("bf16", "bf16-mixed"), ("bf16 again", "bf16-mixed"), ("fp32", "32")):
        seen = OptimizerSeen()
        runs[name] = run_training(make_namer(tmp_path, sort_task(), dict(SORT_TRAIN, precision=precision), ["--save"]),
                                  callbacks=[seen])
        runs[name]["seen"] = seen
    return runs


def test_bf16_mixed_trains_with_the_fused_clipped_adamw_and_learns_like_float32(bf16_runs: Dict[str, Any]) -> None:
    bf16, fp32 = bf16_runs["bf16"], bf16_runs["fp32"]
    assert bf16["seen"].precision == "bf16-mixed" and fp32["seen"].precision == "32-true"
    assert bf16["seen"].fused and fp32["seen"].fused  # clipping (grad_clip=1.0) through the fused step
    losses = {name: [e[3] for e in run["train_stats"]["stat/train_loss"]] for name, run in bf16_runs.items()}
    assert losses["bf16"] == losses["bf16 again"]  # same seed, same losses
    assert losses["bf16"] != losses["fp32"]  # the training steps did run in bfloat16 ...
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)  # ... and learned as float32 does
    assert bf16["val_loss"] == pytest.approx(fp32["val_loss"], rel=0.05)
    assert load_run(bf16["save_folder"]).params["train_params"].precision == "bf16-mixed"


def test_bf16_mixed_validates_in_float32(bf16_runs: Dict[str, Any]) -> None:
    """Every validation loss is the float32 loss of the weights at that point: the last one (at the
    end of the last epoch) equals the final evaluation and the saved model's loss, recomputed here."""
    run = bf16_runs["bf16"]
    saved = load_run(run["save_folder"])
    from data.dataloader import LMDataModule
    recomputed = corpus_loss(saved.lm, LMDataModule(saved.params["data_params"], batch_size=50).val_dataloader()[0])
    assert run["train_stats"]["stat/val_loss:main"][-1][3] == pytest.approx(recomputed, rel=1e-6)
    assert run["val_loss"] == pytest.approx(recomputed, rel=1e-6)


def test_bf16_mixed_resumes_bitwise(tmp_path: Path) -> None:
    train = dict(SORT_TRAIN, precision="bf16-mixed", lr_schedule="constant", max_steps=12)
    reference = run_training(make_namer(tmp_path, sort_task(), train, ["--save"]))
    short = run_training(make_namer(tmp_path, sort_task(), dict(train, max_steps=5), ["--save"]))
    resumed = run_training(make_namer(tmp_path, sort_task(), train, ["--save", f"--resume={short['save_folder']}"]))
    expected = load_run(reference["save_folder"]).lm.state_dict()
    got = load_run(resumed["save_folder"]).lm.state_dict()
    assert all(torch.equal(got[name], tensor) for name, tensor in expected.items())
    assert resumed["train_stats"]["stat/train_loss"] == reference["train_stats"]["stat/train_loss"]


def attention_kernels_used(lm: LM, bf16: bool) -> set:
    x = torch.randint(0, lm.n_tokens, (2, 16))
    with profile() as prof, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        lm(x).float().sum().backward()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_torch_path_attention_avoids_the_flash_kernel_under_cpu_bf16_autocast() -> None:
    """The CPU flash kernel's bfloat16 backward is ~4x slower than the math kernel (model/transformer/torch_layer.py)."""
    lm = LM(ModelParams(layer_architecture="torch-transformer", n_layers=1, dim=32, n_heads=2, max_seq_len=16),
            char_tokenizer()).train()
    assert any("flash" in key for key in attention_kernels_used(lm, bf16=False))
    kernels = attention_kernels_used(lm, bf16=True)
    assert kernels and not any("flash" in key for key in kernels), kernels
