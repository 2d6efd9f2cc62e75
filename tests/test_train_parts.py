"""The training layer's pieces on their own: schedule, optimizer groups, train_stats recording, batch
order, run-folder errors, wandb mode choice; and a hard interrupt (a second Ctrl-C) still saving."""
import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from data.tokenizer import Tokenizer
from model.lm import LM
from model.model_params import ModelParams
from train import wandb_setup
from train.resumable_loader import EpochBatchSampler
from train.run import run_training
from train.run_folder import find_checkpoint, load_run, partial_folder
from train.train_params import TrainParams
from train.train_stats import StatsRecorder
from train.trainer import LMTrainer, corpus_loss, group_by_step, lr_schedule, make_optimizer


def tiny_lm() -> LM:
    tok = Tokenizer.train("word", ["a b c d e f g"], vocab_size=20)
    return LM(ModelParams(n_layers=1, dim=16, n_heads=2, max_seq_len=8), tok)


def test_lr_schedule_warms_up_then_decays_to_min_lr_frac() -> None:
    tp = TrainParams(warmup_steps=10, min_lr_frac=0.1, lr_schedule="cosine")
    f = lr_schedule(tp, total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    linear = lr_schedule(TrainParams(warmup_steps=0, min_lr_frac=0.0, lr_schedule="linear"), total_steps=100)
    assert linear(50) == pytest.approx(0.5)
    assert lr_schedule(TrainParams(warmup_steps=0, lr_schedule="constant"), 100)(99) == 1.0


def test_weight_decay_only_on_weight_matrices() -> None:
    lm = tiny_lm()
    opt = make_optimizer(lm, TrainParams(weight_decay=0.1))
    names = {id(p): n for n, p in lm.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    kept = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "embedding.weight" in kept and "pos_embedding.weight" in kept  # out_proj.weight is tied to it
    assert all(lm.get_parameter(n).ndim == 2 and "embedding" not in n for n in decayed)
    assert any(n.endswith("linear1.weight") for n in decayed) and any(n.endswith("norm1.weight") for n in kept)
    assert len(decayed) + len(kept) == len(list(lm.parameters()))


def test_stats_recorder_converts_tensors_at_flush_and_counts_globally() -> None:
    rec = StatsRecorder()
    rec.record("a", 0, 4, torch.tensor(1.5))
    rec.record("b", 0, 4, 2)
    rec.record("a", 1, 8, torch.tensor(0.5))
    assert torch.is_tensor(rec.stats["a"][0][3])  # not converted yet: no device sync per step
    flushed = rec.flush()
    assert flushed == [("a", (0, 4, 0, 1.5)), ("b", (0, 4, 1, 2.0)), ("a", (1, 8, 2, 0.5))]
    assert rec.stats == {"a": [(0, 4, 0, 1.5), (1, 8, 2, 0.5)], "b": [(0, 4, 1, 2.0)]}
    assert rec.flush() == []
    resumed = StatsRecorder(rec.stats)
    resumed.record("b", 2, 12, 3.0)
    assert resumed.flush() == [("b", (2, 12, 3, 3.0))]
    assert group_by_step(flushed) == [(0, {"a": 1.5, "b": 2.0}), (1, {"a": 0.5})]



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stats_recorder_flushes_cpu_and_gpu_tensors_together() -> None:
    rec = StatsRecorder()
    rec.record("train", 0, 4, torch.tensor(1.5, device="cuda"))
    rec.record("user", 0, 4, torch.tensor(3, dtype=torch.int64))  # a CPU tensor logged by an edit
    assert rec.flush() == [("train", (0, 4, 0, 1.5)), ("user", (0, 4, 1, 3.0))]


def test_stats_recorder_accepts_any_numeric_dtype_and_one_element_shapes() -> None:
    rec = StatsRecorder()
    rec.record("a", 0, 1, torch.tensor([2], dtype=torch.int64))
    rec.record("b", 0, 1, torch.tensor(0.25, dtype=torch.float64))
    assert rec.flush() == [("a", (0, 1, 0, 2.0)), ("b", (0, 1, 1, 0.25))]


def test_corpus_loss_restores_train_mode_after_an_error() -> None:
    lm = tiny_lm().train()

    def broken_loader():
        yield {"x_indices": torch.tensor([[1, 2, 3]]), "mask": torch.ones(1, 3, dtype=torch.bool), "name": "x"}
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        corpus_loss(lm, broken_loader())
    assert lm.training
    batch = {"x_indices": torch.tensor([[1, 2, 3]]), "mask": torch.ones(1, 3, dtype=torch.bool), "name": "x"}
    assert math.isfinite(corpus_loss(lm, [batch])) and lm.training  # non-tensor batch entries are passed through

def test_epoch_batch_order_depends_on_seed_and_epoch_and_resumes_mid_epoch() -> None:
    sampler = EpochBatchSampler(10, 3, seed=1)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 4 and sorted(sum(epoch0, [])) == list(range(10))
    assert list(sampler) == epoch0
    sampler.epoch = 1
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    sampler.start = 2
    assert list(sampler) == epoch1[2:]
    assert list(EpochBatchSampler(10, 3, seed=2)) != epoch0
    assert list(EpochBatchSampler(5, 2, seed=0, shuffle=False)) == [[0, 1], [2, 3], [4]]


def test_unknown_schedule_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="lr_schedule='cos'.*cosine, linear, constant"):
        LMTrainer(tiny_lm(), TrainParams(lr_schedule="cos"))


def test_missing_checkpoint_and_partial_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint found.*--save"):
        find_checkpoint(tmp_path)
    partial = partial_folder(tmp_path / "2024-01-01--00-00-00")
    partial.mkdir()
    with pytest.raises(FileNotFoundError, match="still being written.*missing model.safetensors"):
        load_run(partial)


def test_wandb_goes_offline_without_an_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    mode, reason = wandb_setup.choose_mode()
    assert mode == "offline" and "wandb login" in reason
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    mode, reason = wandb_setup.choose_mode()
    assert mode == "offline" and "cannot be reached" in reason
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_setup.choose_mode()[0] == "disabled"


class RaiseKeyboardInterrupt(Callback):
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == 2:
            raise KeyboardInterrupt


def test_a_hard_interrupt_still_saves_the_weights_marked_interrupted(tmp_path: Path) -> None:
    from tests.test_train import SORT_TRAIN, make_namer, sort_task

    result = run_training(make_namer(tmp_path, sort_task(), SORT_TRAIN, ["--save"]),
                          callbacks=[RaiseKeyboardInterrupt()])
    final = json.loads((Path(result["save_folder"]) / "final.json").read_text())
    assert final["interrupted"] is True and final["steps"] == 2 and final["val_loss"] is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C works again"
    saved = load_run(result["save_folder"])
    assert math.isfinite(saved.lm("1 2 3").sum().item())


def test_max_steps_gives_enough_epochs_to_reach_it():
    from train.run import make_trainer
    trainer = make_trainer(TrainParams(max_steps=10, accumulate_grad_batches=2), torch.device("cpu"),
                           n_train_batches=4, enable_progress_bar=False)
    assert (trainer.max_steps, trainer.max_epochs) == (10, 5)  # 10 steps x 2 batches / 4 batches per epoch
    assert make_trainer(TrainParams(epochs=3), torch.device("cpu"), n_train_batches=4,
                        enable_progress_bar=False).max_epochs == 3


def test_final_losses_measure_a_test_set_that_is_the_validation_set_once(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from data.dataloader import DataParams, LMDataModule
    from train import run

    (tmp_path / "mytask").mkdir()
    (tmp_path / "mytask" / "data.txt").write_text("\n".join(f"w{i % 7} w{i % 5} w{i % 3}" for i in range(60)) + "\n")
    lm_for = lambda dm: LM(ModelParams(n_layers=1, dim=16, n_heads=2, max_seq_len=8), dm.tokenizer)  # noqa: E731
    calls = []
    monkeypatch.setattr(run, "corpus_loss", lambda lm, loader, device: calls.append(loader) or corpus_loss(lm, loader, device))
    for test_frac, expected_calls in ((0.0, 1), (0.2, 2)):
        dm = LMDataModule(DataParams(dataset_name="mytask", max_seq_len=8, test_frac=test_frac), batch_size=4,
                          data_path=tmp_path, cache_dir=tmp_path / "cache")
        lm = lm_for(dm)
        calls.clear()
        final = run.final_losses(lm, dm, torch.device("cpu"))
        assert len(calls) == expected_calls
        assert final["test_loss"] == corpus_loss(lm, dm.test_dataloader())
    assert dm.same_split["test"] == "test"
