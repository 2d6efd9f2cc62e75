"""model_explorer on real runs saved by a few steps of training: loading by timestamp or folder,
the run table, verify_stable_load (and catching a tampered folder), clear errors for missing and
ambiguous timestamps, metric plots and attention plots (both layer architectures and GPT-2)
written to disk headless. Plots go to temp folders through model_explorer.METRICS_DIR / ATTENTIONS_DIR."""
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import model_explorer
import train.runs
from data.data_params import DataParams
from data.dataloader import LMDataModule
from main import build_arg_parser
from train.runs import Namer
from main import main as main_cli
from model.lm import LM
from model.model_params import ModelParams
from model_explorer import (VerificationError, find_run_folder, get_model_by_path, get_model_by_timestamp, list_runs,
                            plot_metrics, show_lm_attns, verify_stable_load)
from train.run import run_training
from train.train_params import TrainParams


class KeepModel(Callback):
    """Holds on to the trained LM, to compare it with the one loaded from disk."""

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.lm = pl_module.model


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """Two saved runs under one save root: "sort" (synthetic, torch-transformer, trained through
    run_training so the trained model is kept) and "ptb" (a slice of PTB, custom-transformer, through
    the command line; in-training validation limited to 1 batch, the final one over the whole set)."""
    save_dir = tmp_path_factory.mktemp("saved-models")
    args = build_arg_parser().parse_args(["--config=test-synth", "--no-wandb", "--save", f"--save-dir={save_dir}"])
    namer = Namer(DataParams(dataset_name="sort", n_train_samples=96, n_eval_samples=40, min_len=2, max_len=4,
                             long_len=6, max_seq_len=16),
                  ModelParams(n_layers=1, n_heads=2, dim=16),
                  TrainParams(epochs=1, batch_size=16, lr=1e-2, warmup_steps=2, hyperparams_log_freq=2,
                              n_print_samples=0), args, config_name="test-synth")
    keep = KeepModel()
    sort = run_training(namer, callbacks=[keep])
    overrides = ["max_train_samples=64", "max_eval_samples=48", "DataParams.max_seq_len=16", "n_layers=2", "dim=16",
                 "epochs=1", "batch_size=16", "val_check_interval=2", "limit_val_batches=1", "n_print_samples=0",
                 "layer_architecture=custom-transformer"]
    [ptb] = main_cli(["--config=test-nlp", "--task=ptb", "--no-wandb", "--save", f"--save-dir={save_dir}",
                      *[arg for setting in overrides for arg in ("--set", setting)]])
    return {"save_dir": save_dir, "sort": sort, "sort_lm": keep.lm, "ptb": ptb,
            "sort_ts": Path(sort["save_folder"]).name, "ptb_ts": Path(ptb["save_folder"]).name}


@pytest.fixture
def plot_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(model_explorer, "METRICS_DIR", tmp_path / "metrics")
    monkeypatch.setattr(model_explorer, "ATTENTIONS_DIR", tmp_path / "attentions")
    return tmp_path


def copy_run(folder: str, save_dir: Path, config: str) -> Path:
    """A copy of a run folder under save_dir/{config}/{task}/{run name}/{timestamp}."""
    src = Path(folder)
    dst = save_dir / config / src.parts[-3] / src.parts[-2] / src.name
    shutil.copytree(src, dst)
    return dst


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- loading ----------------------------------------------------------------------------------------
def test_get_model_by_timestamp_loads_the_trained_model(runs: Dict[str, Any]) -> None:
    lm, dataset, train_stats, params = get_model_by_timestamp(runs["sort_ts"], save_dir=runs["save_dir"])
    assert isinstance(lm, LM) and not lm.training
    assert isinstance(dataset, LMDataModule) and dataset.val_names == ["main", "long"]
    assert dataset.tokenizer.vocab_size == lm.tokenizer.vocab_size == runs["sort_lm"].tokenizer.vocab_size
    assert isinstance(params["data_params"], DataParams) and params["data_params"].dataset_name == "sort"
    assert isinstance(params["model_params"], ModelParams) and params["model_params"].max_seq_len == 16
    assert isinstance(params["train_params"], TrainParams) and params["train_params"].batch_size == 16
    assert train_stats == runs["sort"]["train_stats"]
    assert [s for s, _, _, _ in train_stats["stat/train_loss"]] == list(range(6))

    trained = runs["sort_lm"].eval()
    for name, tensor in trained.state_dict().items():
        assert torch.equal(lm.state_dict()[name], tensor), name
    batch = next(iter(dataset.val_dataloader()[0]))
    with torch.no_grad():
        assert torch.equal(lm(batch["x_indices"][:, :-1]), trained(batch["x_indices"][:, :-1]))


def test_get_model_by_path_and_the_default_save_root(runs: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    lm, dataset, _, params = get_model_by_path(runs["ptb"]["save_folder"])
    assert params["model_params"].layer_architecture == "custom-transformer"
    assert dataset.sample_mode == "stream" and lm.n_tokens == dataset.tokenizer.vocab_size
    monkeypatch.setenv("LM_SAVE_DIR", str(runs["save_dir"]))  # read at call time, not only at import
    assert find_run_folder(runs["ptb_ts"]) == Path(runs["ptb"]["save_folder"])
    monkeypatch.delenv("LM_SAVE_DIR")
    monkeypatch.setattr(train.runs, "DEFAULT_SAVE_DIR", runs["save_dir"])
    assert find_run_folder(runs["sort_ts"]) == Path(runs["sort"]["save_folder"])


def test_list_runs_shows_every_saved_run(runs: Dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    rows = list_runs(runs["save_dir"])
    assert [r["timestamp"] for r in rows] == sorted([runs["sort_ts"], runs["ptb_ts"]])
    by_task = {r["task"]: r for r in rows}
    assert by_task["sort"]["config"] == "test-synth" and by_task["sort"]["run_name"] == "default"
    assert by_task["ptb"]["config"] == "test-nlp"
    assert by_task["ptb"]["val_loss"] == pytest.approx(runs["ptb"]["val_loss"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["timestamp", "config", "task", "run_name", "val_loss"]
    assert any(runs["sort_ts"] in line and f"{runs['sort']['val_loss']:.4f}" in line for line in table[1:])
    assert list_runs(runs["save_dir"] / "nothing-here") == []


def test_list_runs_marks_interrupted_runs(runs: Dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = copy_run(runs["sort"]["save_folder"], tmp_path, "stopped")
    final = json.loads((folder / "final.json").read_text())
    (folder / "final.json").write_text(json.dumps({**final, "interrupted": True}))
    shutil.copytree(folder, folder.with_name(folder.name + "-2.partial"))  # one still being written: not listed
    [row] = list_runs(tmp_path)
    assert row["interrupted"] and row["config"] == "stopped" and row["folder"] == str(folder)
    assert capsys.readouterr().out.rstrip().endswith("(interrupted)")


# ---- errors -----------------------------------------------------------------------------------------
def test_missing_timestamp_lists_the_nearest_saved_ones(runs: Dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        get_model_by_timestamp("2001-01-01--00-00-00", save_dir=runs["save_dir"])
    message = str(error.value)
    assert "2001-01-01--00-00-00" in message and runs["sort_ts"] in message and runs["ptb_ts"] in message
    assert "test-synth/sort/default" in message and "list_runs()" in message
    with pytest.raises(FileNotFoundError, match="no saved runs under"):
        find_run_folder(runs["sort_ts"], save_dir=tmp_path)


def test_ambiguous_timestamp_lists_every_folder_that_has_it(runs: Dict[str, Any], tmp_path: Path) -> None:
    first = copy_run(runs["sort"]["save_folder"], tmp_path, "config-a")
    second = copy_run(runs["sort"]["save_folder"], tmp_path, "config-b")
    with pytest.raises(ValueError, match="ambiguous") as error:
        get_model_by_timestamp(runs["sort_ts"], save_dir=tmp_path)
    assert str(first) in str(error.value) and str(second) in str(error.value)
    assert "get_model_by_path" in str(error.value)
    assert get_model_by_path(second)[3]["data_params"].dataset_name == "sort"


# ---- verification -----------------------------------------------------------------------------------
@pytest.mark.parametrize("run", ["sort", "ptb"])
def test_verify_stable_load_passes_on_saved_runs(runs: Dict[str, Any], run: str,
                                                 capsys: pytest.CaptureFixture) -> None:
    checked = verify_stable_load(runs[f"{run}_ts"], save_dir=runs["save_dir"])
    out = capsys.readouterr().out
    assert "ok: two loads have identical parameters" in out and "deterministic" in out
    for name, loss in runs[run]["val_losses"].items():
        assert checked["val_losses"][name] == pytest.approx(loss, rel=1e-5)
        assert f"ok: recomputed val:{name} loss" in out
    assert "final.json's val_loss" in out


def test_final_val_loss_is_over_the_whole_set_even_when_validation_is_limited(runs: Dict[str, Any]) -> None:
    """limit_val_batches=1 cuts the in-training validation (stat/val_loss:main) to one batch of 16 of the
    48 samples; final.json's val_loss (what verify_stable_load compares) is over all of them."""
    ptb = runs["ptb"]
    last_in_training = ptb["train_stats"]["stat/val_loss:main"][-1][3]
    assert ptb["val_loss"] != pytest.approx(last_in_training, rel=1e-4)
    lm, dataset, _, _ = get_model_by_path(ptb["save_folder"])
    assert dataset.len("val:main") == 48
    assert lm.perplexities(dataset.val_dataloader()[0], before_exp=True)[0] == pytest.approx(ptb["val_loss"], rel=1e-5)
    first_batch = next(iter(dataset.val_dataloader()[0]))
    assert lm.perplexities([first_batch], before_exp=True)[0] == pytest.approx(last_in_training, rel=1e-5)


def test_verify_stable_load_catches_a_changed_val_loss(runs: Dict[str, Any], tmp_path: Path) -> None:
    folder = copy_run(runs["sort"]["save_folder"], tmp_path, "tampered")
    final = json.loads((folder / "final.json").read_text())
    final["val_loss"] += 1e-3  # val_losses["main"] is left as it was
    (folder / "final.json").write_text(json.dumps(final))
    with pytest.raises(VerificationError, match=r"recomputed val:main loss .* != final.json's val_loss"):
        verify_stable_load(folder)
    final["val_loss"] -= 1e-3
    final["val_losses"]["long"] *= 1.001
    (folder / "final.json").write_text(json.dumps(final))
    with pytest.raises(VerificationError, match=r"recomputed val:long loss .* != final.json's val_losses\['long'\]"):
        verify_stable_load(folder)
    final["val_loss"] = final["val_losses"] = None
    (folder / "final.json").write_text(json.dumps(final))
    with pytest.raises(VerificationError, match="no validation loss"):
        verify_stable_load(folder)


# ---- metric plots -----------------------------------------------------------------------------------
def test_plot_metrics_writes_pngs(runs: Dict[str, Any], plot_dirs: Path) -> None:
    save_dir, sort_ts = runs["save_dir"], runs["sort_ts"]
    plot_metrics(sort_ts, "stat/train_loss", save_dir=save_dir, filename="one")
    fig = plot_metrics(sort_ts, ["stat/train_loss", "val_loss:main", "val_loss:long"], x="s", save_dir=save_dir,
                      filename="several-metrics")
    assert [line.get_label() for line in fig.axes[0].lines] == ["stat/train_loss", "val_loss:main", "val_loss:long"]
    assert fig.axes[0].get_xlabel() == "optimizer steps"
    assert list(fig.axes[0].lines[0].get_xdata()) == list(range(6))
    fig = plot_metrics([sort_ts, runs["ptb"]["train_stats"]], "stat/val_loss:main", save_dir=save_dir,
                       filename="several-runs")
    assert [line.get_label() for line in fig.axes[0].lines] == [sort_ts, "run 1"]
    plot_metrics([sort_ts, runs["ptb"]["save_folder"]], ["stat/train_loss", "stat/val_loss:main"], save_dir=save_dir,
                 labels=["sort", "ptb"], logy=True, filename="runs-and-metrics")
    for name in ("one", "several-metrics", "several-runs", "runs-and-metrics"):
        assert_png(plot_dirs / "metrics" / f"{name}.png")


def test_plot_metrics_errors(runs: Dict[str, Any]) -> None:
    stats = runs["sort"]["train_stats"]
    with pytest.raises(ValueError, match=r"'stat/val_los' is not recorded.*closest: \['stat/val_loss:main'"):
        plot_metrics(stats, "stat/val_los")
    with pytest.raises(ValueError, match="x must be one of"):
        plot_metrics(stats, "stat/train_loss", x="steps")
    with pytest.raises(FileNotFoundError, match="no saved run"):
        plot_metrics("1999-01-01--00-00-00", "stat/train_loss", save_dir=runs["save_dir"])


# ---- attention plots --------------------------------------------------------------------------------
def test_show_lm_attns_torch_transformer(runs: Dict[str, Any], plot_dirs: Path) -> None:
    lm = runs["sort_lm"].with_layer_architecture("torch-transformer")  # the reference path plots too
    lm.train()
    ids = [lm.tokenizer.bos_id] + lm.tokenizer("3 1 2")
    out_embeds, attns = show_lm_attns(lm, ids, folder_name="sort")
    assert lm.training, "the train/eval mode is put back"
    assert out_embeds.shape == (1, len(ids), lm.n_tokens) and attns.shape == (1, 1, 2, len(ids), len(ids))
    assert torch.allclose(attns.sum(-1), torch.ones(1, 1, 2, len(ids)), atol=1e-5)
    assert torch.equal(attns.triu(1), torch.zeros_like(attns)), "causal: no query sees a later key"
    folder = plot_dirs / "attentions" / "sort"
    assert sorted(p.name for p in folder.iterdir()) == ["grid.png", "layer0-head0.png", "layer0-head1.png"]
    for png in folder.iterdir():
        assert_png(png)
    with pytest.raises(ValueError, match=r"heads must be .* in 0..1"):
        show_lm_attns(lm, ids, heads=[2])


def test_show_lm_attns_custom_transformer(runs: Dict[str, Any], plot_dirs: Path) -> None:
    lm = get_model_by_path(runs["ptb"]["save_folder"])[0]
    text = "the company said it will"
    out_embeds, attns = show_lm_attns(lm, text, layers=[1], heads=[0], folder_name="ptb/custom")
    n = len(lm.tokenizer(text))
    assert out_embeds.shape == (1, n, lm.n_tokens) and attns.shape == (1, 2, 2, n, n)
    with torch.no_grad():
        assert torch.allclose(attns, lm(text, get_attn=True)["attns"])
    folder = plot_dirs / "attentions" / "ptb" / "custom"
    assert sorted(p.name for p in folder.iterdir()) == ["grid.png", "layer1-head0.png"]
    assert_png(folder / "grid.png")


def test_show_lm_attns_gpt2(tmp_path: Path, plot_dirs: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2 import get_gpt2

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32)).save_pretrained(tmp_path / "gpt2")
    lm = get_gpt2(tmp_path / "gpt2", tokenizer_path=Path(os.environ["LM_DATA_PATH"]) / "gpt2-tokenizer")
    text = "Well the weather for the whole area"
    out_embeds, attns = show_lm_attns(lm, text, heads=[1], folder_name="gpt2")
    n = len(lm.tokenizer(text))
    assert out_embeds.shape == (1, n, 50257) and attns.shape == (1, 2, 2, n, n)
    assert model_explorer.token_labels(lm, lm.tokenizer(text))[:2] == ["Well", "␣the"]
    folder = plot_dirs / "attentions" / "gpt2"
    assert sorted(p.name for p in folder.iterdir()) == ["grid.png", "layer0-head1.png", "layer1-head1.png"]
    assert_png(folder / "layer1-head1.png")
