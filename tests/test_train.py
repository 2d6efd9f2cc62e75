"""Real short trainings through run_training: learning, train_stats, saving, wandb offline,
determinism, Ctrl-C and --resume. Tiny models and data slices: a few seconds per run."""
import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from data.data_params import DataParams
from main import build_arg_parser
from train.runs import Namer
from model.model_params import ModelParams
from train.precision import resolve_precision
from train.run import run_training
from train.run_folder import FILES, load_run
from train.train_params import TrainParams
from train.trainer import corpus_loss

TINY_MODEL = dict(n_layers=1, dim=32, n_heads=2, dropout=0.1)  # dropout: resume must restore the random state too


def make_namer(tmp_path: Path, data: Dict[str, Any], train: Dict[str, Any], flags: List[str] = (),
               model: Dict[str, Any] = None) -> Namer:
    args = build_arg_parser().parse_args(["--config=test-train", "--no-wandb", f"--save-dir={tmp_path / 'saved'}",
                                          *flags])
    return Namer(DataParams(**data), ModelParams(**(model or TINY_MODEL)), TrainParams(**train), args,
                 config_name="test-train")


def sort_task(**overrides: Any) -> Dict[str, Any]:
    return dict(dataset_name="sort", n_train_samples=320, n_eval_samples=64, min_len=2, max_len=4, long_len=6,
                max_seq_len=16, **overrides)


SORT_TRAIN = dict(epochs=2, batch_size=32, lr=1e-2, warmup_steps=3, hyperparams_log_freq=4, n_print_samples=2,
                  print_sample_len=8)


class KeepModel(Callback):
    """Holds on to the trained LM so that a test can compare it with the saved one."""

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.lm = pl_module.model


class SigintAtStep(Callback):
    """Presses Ctrl-C (a real SIGINT to this process) when training reaches `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def check_train_stats(stats: Dict[str, list]) -> None:
    entries = sorted((e for values in stats.values() for e in values), key=lambda e: e[2])
    assert [e[2] for e in entries] == list(range(len(entries))), "c counts every recorded value exactly once"
    for values in stats.values():
        for (s0, n0, c0, _), (s1, n1, c1, _) in zip(values, values[1:]):
            assert s0 <= s1 and n0 <= n1 and c0 < c1
        assert all(isinstance(e, tuple) and len(e) == 4 and isinstance(e[3], float) for e in values)
    for (s0, n0, _, _), (s1, n1, _, _) in zip(entries, entries[1:]):
        assert s0 <= s1 and n0 <= n1, "steps and samples never decrease along the global counter"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """One saved sort run, two epochs: the reference for determinism and resume."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    return run_training(make_namer(tmp_path, sort_task(), SORT_TRAIN, ["--save"]))


def test_sort_run_learns_and_records_well_formed_train_stats(uninterrupted: Dict[str, Any]) -> None:
    stats = uninterrupted["train_stats"]
    for name in ("stat/train_loss", "stat/val_loss:main", "stat/val_loss:long", "stat/lr", "stat/tokens_per_s",
                 "stat/elapsed_s", "stat/test_loss"):
        assert stats.get(name), f"{name} not recorded"
    check_train_stats(stats)
    train_losses = [v for _, _, _, v in stats["stat/train_loss"]]
    assert len(train_losses) == 20  # 10 batches per epoch, 2 epochs
    assert sum(train_losses[-4:]) / 4 < 0.8 * sum(train_losses[:4]) / 4
    assert [s for s, _, _, _ in stats["stat/train_loss"]] == list(range(20))
    assert [n for _, n, _, _ in stats["stat/train_loss"]] == [32 * (i + 1) for i in range(20)]
    assert len(stats["stat/val_loss:main"]) == 2  # once per epoch
    assert uninterrupted["val_loss"] == pytest.approx(stats["stat/val_loss:main"][-1][3], rel=1e-5)
    assert not uninterrupted["interrupted"]


def test_same_seed_gives_the_same_losses(tmp_path: Path, uninterrupted: Dict[str, Any]) -> None:
    again = run_training(make_namer(tmp_path, sort_task(), SORT_TRAIN))
    for name in ("stat/train_loss", "stat/val_loss:main", "stat/val_loss:long"):
        assert [e[3] for e in again["train_stats"][name]] == [e[3] for e in uninterrupted["train_stats"][name]]
    assert again["test_loss"] == uninterrupted["test_loss"]


def test_ctrl_c_saves_an_interrupted_run_and_resume_matches_the_uninterrupted_run(
        tmp_path: Path, uninterrupted: Dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    stopped = run_training(make_namer(tmp_path, sort_task(), SORT_TRAIN, ["--save"]), callbacks=[SigintAtStep(4)])
    assert "Ctrl-C: stopping after this batch" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the Ctrl-C handler is put back"
    folder = Path(stopped["save_folder"])
    final = json.loads((folder / "final.json").read_text())
    assert final["interrupted"] is True and final["steps"] == 4
    saved = load_run(folder)
    assert saved.final["val_loss"] == pytest.approx(final["val_loss"])
    assert len(saved.train_stats["stat/train_loss"]) == 4

    resumed = run_training(make_namer(tmp_path, sort_task(), SORT_TRAIN, ["--save", f"--resume={folder}"]))
    assert not resumed["interrupted"]
    expected = load_run(uninterrupted["save_folder"]).lm.state_dict()
    got = load_run(resumed["save_folder"]).lm.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), f"{name} differs after stop + resume"
    # the resumed run continues the stats: the same steps and losses as the uninterrupted run
    ref, res = uninterrupted["train_stats"]["stat/train_loss"], resumed["train_stats"]["stat/train_loss"]
    assert [(s, n, v) for s, n, _, v in res] == [(s, n, v) for s, n, _, v in ref]
    check_train_stats(resumed["train_stats"])
    for name in ("stat/lr", "stat/val_loss:main", "stat/val_loss:long"):  # the same records, at the same counter
        assert [e[:3] for e in resumed["train_stats"][name]] == [e[:3] for e in uninterrupted["train_stats"][name]]


def test_ptb_run_saves_a_reloadable_folder_and_an_offline_wandb_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-root"))
    keep = KeepModel()
    namer = make_namer(tmp_path, dict(dataset_name="ptb", max_seq_len=16, max_train_samples=96, max_eval_samples=32),
                       dict(epochs=1, batch_size=16, lr=3e-3, warmup_steps=2, hyperparams_log_freq=2), [])
    namer.args.no_wandb, namer.args.save = False, True
    namer.varying = {"lr": 3e-3}  # as in a sweep: the run's wandb tags
    result = run_training(namer, callbacks=[keep])

    folder = Path(result["save_folder"])
    assert folder == Path(namer.save_folder_name()) and not Path(str(folder) + ".partial").exists()
    assert all((folder / name).is_file() for name in FILES)
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    params = json.loads((folder / "params.json").read_text())
    assert params["model_params"]["max_seq_len"] == 16  # resolved from DataParams
    assert {"argv", "versions", "git_commit", "run"} <= set(params) and params["versions"]["torch"]

    saved = load_run(folder)
    x = torch.tensor([[saved.tokenizer.bos_id, 5, 17, 42, 9]])
    with torch.no_grad():
        assert torch.equal(saved.lm(x), keep.lm.eval()(x))
    # saved as the run used them: precision "auto" as what it chose on this machine
    assert namer.train_params.precision == "auto"
    used = dataclasses.replace(namer.train_params, precision=resolve_precision("auto", torch.device("cpu")))
    assert saved.params["train_params"] == used
    assert saved.train_stats == result["train_stats"]
    from data.dataloader import LMDataModule
    dm = LMDataModule(saved.params["data_params"], batch_size=16, tokenizer=saved.tokenizer)
    assert corpus_loss(saved.lm, dm.val_dataloader()[0]) == pytest.approx(saved.final["val_loss"], rel=1e-5)

    run_dir = Path(params["run"]["wandb"]["dir"])
    assert run_dir.parent.parent == tmp_path / "wandb-root" and run_dir.name.startswith("offline-run-")
    records = b"".join(p.read_bytes() for p in run_dir.glob("*.wandb"))
    for metric in (b"stat/train_loss", b"stat/val_loss:main", b"stat/lr", b"stat/test_loss"):
        assert metric in records, f"{metric} missing from the offline wandb run"
    # the sweep's group (config name) and tags (swept values): the run record's run_group (protobuf field 6)
    # and tags (field 10); and the printed samples as a table
    assert b"2\ntest-train" in records and b"R\x08lr=0.003" in records
    [table] = run_dir.glob("files/media/table/samples_*.table.json")
    table = json.loads(table.read_text())
    assert table["columns"] == ["epoch", "step", "kind", "text"] and [row[2] for row in table["data"]] == ["greedy", "sampled"]


def test_a_run_stopped_by_max_steps_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """The other way to stop: max_steps in mid-epoch, then a longer run resumed from its folder. (A constant
    learning rate, since the schedule's length follows max_steps.)"""
    train = dict(SORT_TRAIN, lr_schedule="constant", max_steps=20)
    reference = run_training(make_namer(tmp_path, sort_task(), train, ["--save"]))
    short = run_training(make_namer(tmp_path, sort_task(), dict(train, max_steps=7), ["--save"]))
    resumed = run_training(make_namer(tmp_path, sort_task(), train, ["--save", f"--resume={short['save_folder']}"]))
    assert short["final"]["steps"] == 7 and resumed["final"]["steps"] == 20
    expected = load_run(reference["save_folder"]).lm.state_dict()
    got = load_run(resumed["save_folder"]).lm.state_dict()
    assert all(torch.equal(got[name], tensor) for name, tensor in expected.items())
    for name in ("stat/train_loss", "stat/lr", "stat/val_loss:main", "stat/val_loss:long", "stat/test_loss"):
        assert resumed["train_stats"][name] == reference["train_stats"][name]
