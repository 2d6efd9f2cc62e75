"""No trained model is lost, no broken run looks like a good one (issue 17): concurrent runs, divergence,
unusable save folders, checks before any compute, resume refusals, damaged folders, weight hashes, signals."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import save_model

import main
from config_parser import parse_config_file
from data.data_params import DataParams
from data.dataloader import LMDataModule
from main import build_arg_parser
from train.runs import Namer
from model.model_params import ModelParams
from model_explorer import VerificationError, list_runs, verify_stable_load
from tests.model_helpers import char_tokenizer, make_lm
from train.resume import checked_checkpoint
from train.run import run_training
from train.run_folder import DamagedRunError, load_run, read_params
from train.train_params import TrainParams, check_train_params

REPO = Path(__file__).resolve().parents[1]
TINY_SORT_CONFIG = """\
DataParams
dataset_name="sort"
n_train_samples=96
n_eval_samples=16
min_len=2
max_len=3
long_len=0
max_seq_len=12

ModelParams
n_layers=1
dim=16
n_heads=2

TrainParams
epochs=1
batch_size=16
lr=1e-2
warmup_steps=1
hyperparams_log_freq=2
n_print_samples=0
"""


def tiny_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "tiny-sort.txt"
    path.write_text(TINY_SORT_CONFIG + extra)
    return path


def strict_json(path: Path) -> Any:
    """json.loads that refuses NaN / Infinity, as strict JSON readers (browsers, jq, other languages) do."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{path.name} holds {constant}: not strict JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


class SignalAtStep(Callback):
    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.fixture(scope="module")
def sigtermed(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A tiny sort run (6 batches an epoch) stopped by SIGTERM at step 3 and saved: the subject of the
    signal, epoch-count, resume, damaged-folder and hash tests."""
    tmp_path = tmp_path_factory.mktemp("sigtermed")
    args = build_arg_parser().parse_args(["--config=tiny", "--no-wandb", "--save", f"--save-dir={tmp_path / 'saved'}"])
    dp = DataParams(dataset_name="sort", n_train_samples=96, n_eval_samples=16, min_len=2, max_len=3, long_len=0,
                    max_seq_len=12)
    namer = Namer(dp, ModelParams(n_layers=1, dim=16, n_heads=2),
                  TrainParams(epochs=1, batch_size=16, lr=1e-2, warmup_steps=1, hyperparams_log_freq=2,
                              n_print_samples=0), args, config_name="tiny")
    before = signal.getsignal(signal.SIGTERM)
    result = run_training(namer, callbacks=[SignalAtStep(3, signal.SIGTERM)])
    assert signal.getsignal(signal.SIGTERM) is before, "the SIGTERM handler is put back"
    return {"result": result, "folder": Path(result["save_folder"]), "dp": dp, "namer": namer}


def damaged_copy(sigtermed: Dict[str, Any], tmp_path: Path) -> Path:
    folder = tmp_path / "saved" / "tiny" / "sort" / "default" / sigtermed["folder"].name
    shutil.copytree(sigtermed["folder"], folder)
    return folder


# ---- 1. concurrent runs: every one keeps its own folder ----------------------------------------------------
def test_four_runs_of_one_config_started_together_save_four_loadable_models(tmp_path: Path) -> None:
    """4 processes wait at a barrier after their slow imports and start in the same second: on a clash of
    timestamps the save folder is claimed atomically and the later runs take the next -1, -2, ... name."""
    config = tiny_config(tmp_path)
    flags = [f"--config={config}", "--no-wandb", "--save", f"--save-dir={tmp_path / 'saved'}"]
    # One Python imports torch and Lightning once, then forks 4 processes that start their runs at the same
    # instant, at the start of a second, so that all 4 take the same timestamp.
    code = ("import os, sys, time\nimport main, train.run\n"
            "time.sleep(1.02 - time.time() % 1)\npids = []\n"
            "for _ in range(4):\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        try:\n            main.main(sys.argv[1:])\n            os._exit(0)\n"
            "        except SystemExit as e:\n            os._exit(e.code or 0)\n"
            "        except BaseException:\n            os._exit(3)\n"
            "    pids.append(pid)\n"
            "codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]\n"
            "print('exit codes', codes)\nsys.exit(max(codes))\n")
    result = subprocess.run([sys.executable, "-c", code, *flags], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folders = sorted((tmp_path / "saved").glob("*/*/*/*"))
    assert len(folders) == 4 and not any(f.name.endswith(".partial") for f in folders), folders
    assert len({f.name[:20] for f in folders}) < 4, "the runs started in the same second (the clash is tested)"
    for folder in folders:
        load_run(folder)


# ---- 2. divergence -----------------------------------------------------------------------------------------
def test_a_diverging_run_stops_is_saved_marked_diverged_in_strict_json_and_exits_non_zero(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_dir = tmp_path / "saved"
    with pytest.raises(SystemExit) as info:
        main.main([f"--config={tiny_config(tmp_path)}", "--no-wandb", "--save", f"--save-dir={save_dir}",
                   "--set", "lr=1e10", "--set", "warmup_steps=0", "--set", "epochs=3"])
    assert info.value.code == 1
    out = capsys.readouterr().out
    assert "diverged: the training loss became nan at step" in out and "Try a lower lr (now 1e+10)" in out
    [folder] = save_dir.glob("*/*/*/*")
    files = {name: strict_json(folder / name) for name in ("final.json", "params.json", "train_stats.json")}
    final = files["final.json"]
    assert final["diverged"] is True and final["val_loss"] is None
    assert {"at": ["val_loss"], "value": "nan"} in final["nonfinite"]
    assert final["steps"] < 18, "stopped within a few steps, not after the 3 epochs"
    assert load_run(folder).final["val_loss"] != load_run(folder).final["val_loss"], "read back as nan"
    [row] = list_runs(save_dir)
    assert row["diverged"] and "DIVERGED" in capsys.readouterr().out
    with pytest.raises(VerificationError, match="NaN / inf values"):
        verify_stable_load(folder)


# ---- 3. the save folder ------------------------------------------------------------------------------------
def test_an_unusable_save_dir_stops_before_training_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        main.main([f"--config={tiny_config(tmp_path)}", "--no-wandb", "--save", f"--save-dir={blocker / 'runs'}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"{blocker} is a file, not a folder" in err and "Nothing was trained" in err
    namer = Namer(DataParams(), ModelParams(), TrainParams(),
                  build_arg_parser().parse_args(["--config=x", f"--save-dir={blocker}"]))
    with pytest.raises(ValueError, match="cannot create the save folder"):
        namer.claim_save_folder()


def test_the_save_dir_check_says_why_a_folder_is_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from train.save_dir import check_save_dir
    check_save_dir(tmp_path / "new" / "runs")  # not there yet: its nearest existing parent is checked
    with pytest.raises(ValueError, match=r"MiB free, the run needs about \d+\.\d MiB"):
        check_save_dir(tmp_path, need_bytes=2 ** 60)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a read-only folder (root may write anywhere)
    with pytest.raises(ValueError, match=rf"cannot save runs under {tmp_path}: {tmp_path} is not writable"):
        check_save_dir(tmp_path)


def test_a_save_that_fails_at_the_end_keeps_the_model_elsewhere_and_says_where(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import train.run_folder

    def disk_full_in_save_dir(model: Any, filename: str) -> None:
        if str(tmp_path / "saved") in filename:
            raise OSError(28, "No space left on device")
        save_model(model, filename)

    monkeypatch.setattr(train.run_folder, "save_model", disk_full_in_save_dir)
    monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as info:
        main.main([f"--config={tiny_config(tmp_path)}", "--no-wandb", "--save", f"--save-dir={tmp_path / 'saved'}"])
    out = capsys.readouterr().out
    assert info.value.code == 1 and "No space left on device" in out
    [rescued] = (tmp_path / "cache" / "rescued-runs").glob("*/*/*/*")
    assert f"The trained model is saved in {rescued} instead" in out
    load_run(rescued)
    assert not list(tmp_path.rglob("*.tmp"))


# ---- checks before any compute -----------------------------------------------------------------------------
def test_dry_run_and_sweep_start_check_every_run_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tiny_config(tmp_path)
    for flags in (["--dry-run"], ["--no-wandb"]):
        with pytest.raises(SystemExit) as info:
            main.main([f"--config={config}", *flags, "--set", "ModelParams.max_seq_len=[12,4]"])
        err = capsys.readouterr().err
        assert info.value.code == 2 and "run 2/2" in err and "run 1/2" not in err
        assert "ModelParams.max_seq_len=4 is shorter than DataParams.max_seq_len=12" in err
        assert "Nothing was trained" in err
    with pytest.raises(SystemExit) as info:
        main.main([f"--config={config}", "--task="])
    assert info.value.code == 2 and "--task is empty" in capsys.readouterr().err


def test_a_run_that_fails_anyway_does_not_stop_the_sweep_and_the_summary_names_it(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """max_len=30 makes samples longer than max_seq_len: found only when the data is built."""
    with pytest.raises(SystemExit) as info:
        main.main([f"--config={tiny_config(tmp_path)}", "--no-wandb", "--set", "max_len=[30,3]"])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and "Traceback" not in err
    assert "raised at data/samples.py:" in err and "LM_TRACEBACK=1" in err
    summary = out.split("=== summary")[1]
    assert "run 1 FAILED: sort train: a synthetic sample has" in summary
    [run2] = [line for line in summary.splitlines() if line.endswith("max_len=3")]
    assert run2.startswith("val_loss="), "run 2 trained and reports its losses"
    assert "1 of 2 run(s) did not finish well: run(s) 1" in summary


@pytest.mark.parametrize("field, value, rule", [
    ("epochs", 0, ">= 1"), ("max_steps", 0, ">= 1"), ("accumulate_grad_batches", 0, ">= 1"),
    ("min_lr_frac", 1.5, "in [0, 1]"), ("weight_decay", -0.1, ">= 0"), ("warmup_steps", -1, ">= 0"),
    ("grad_clip", 0.0, "> 0"), ("n_print_samples", -1, ">= 0"), ("val_check_interval", 0, ">= 1"),
    ("lr", 0.0, "> 0"), ("lr", float("nan"), "> 0"), ("beta1", 1.0, "in [0, 1)"), ("beta2", -0.5, "in [0, 1)"),
    ("batch_size", 0, ">= 1"),
])
def test_train_params_are_checked(field: str, value: Any, rule: str) -> None:
    with pytest.raises(ValueError, match=rf"invalid TrainParams:\n  {field}=.*: must be .*{re.escape(rule)}"):
        check_train_params(TrainParams(**{field: value}))


def test_layer_norm_eps_must_be_positive() -> None:
    from model.model_checks import check_model_params
    with pytest.raises(ValueError, match="layer_norm_eps must be > 0"):
        check_model_params(ModelParams(layer_norm_eps=0.0, max_seq_len=8))


# ---- resume ------------------------------------------------------------------------------------------------
def test_resume_takes_the_printed_folder_and_refuses_what_cannot_continue_the_run(
        sigtermed: Dict[str, Any], tmp_path: Path) -> None:
    folder, dp = sigtermed["folder"], sigtermed["dp"]
    saved = load_run(folder)
    mp, tok = saved.params["model_params"], saved.tokenizer
    building = tmp_path / "run"  # the name "saving to ..." printed, while only {name}.partial exists
    shutil.copytree(folder, tmp_path / "run.partial")
    main.check_paths(build_arg_parser().parse_args(["--config=x", f"--resume={building}"]))
    assert checked_checkpoint(building, dp, mp, tok) == tmp_path / "run.partial" / "checkpoints" / "last.ckpt"

    with pytest.raises(ValueError, match="DataParams.max_len: checkpoint 3, this run 4"):
        checked_checkpoint(folder, DataParams(**{**dp.__dict__, "max_len": 4}), mp, tok)
    with pytest.raises(ValueError, match="task: checkpoint 'sort', this run 'reverse'"):
        checked_checkpoint(folder, DataParams(**{**dp.__dict__, "dataset_name": "reverse"}), mp, tok)
    with pytest.raises(ValueError, match="tokenizer: the checkpoint's vocabulary"):
        checked_checkpoint(folder, dp, mp, char_tokenizer())
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(ValueError, match="is not a Lightning checkpoint this project can read"):
        checked_checkpoint(not_a_checkpoint, dp, mp, tok)
    pickled = tmp_path / "pickled.ckpt"  # loading it would run code: weights_only refuses it
    torch.save({"state_dict": {}, "lm_trainer": {}, "payload": types.SimpleNamespace(x=1)}, pickled)
    with pytest.raises(ValueError, match="is not a Lightning checkpoint this project can read"):
        checked_checkpoint(pickled, dp, mp, tok)


# ---- signals and counts ------------------------------------------------------------------------------------
def test_sigterm_stops_like_ctrl_c_saves_and_counts_whole_epochs_only(
        sigtermed: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    result = sigtermed["result"]
    assert result["interrupted"] and result["signal"] == "SIGTERM"
    final = load_run(sigtermed["folder"]).final
    assert final["steps"] == 3 and final["epochs_completed"] == 0 and final["signal"] == "SIGTERM"

    fake_run = types.ModuleType("train.run")  # run_all turns the signal into the exit status
    fake_run.run_training = lambda namer: {"interrupted": True, "signal": "SIGTERM", "val_loss": 1.0}
    monkeypatch.setitem(sys.modules, "train.run", fake_run)
    with pytest.raises(SystemExit) as info:
        main.main(["--config=sweep-example", "--no-wandb"])
    assert info.value.code == 143 and "stopped by SIGTERM: the remaining 3 run(s) were not started" in \
        capsys.readouterr().out


# ---- saved folders -----------------------------------------------------------------------------------------
def test_damaged_folders_name_the_file_and_list_runs_marks_them(sigtermed: Dict[str, Any], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    truncated = damaged_copy(sigtermed, tmp_path)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(DamagedRunError, match=r"model.safetensors is damaged: truncated"):
        load_run(truncated)
    corrupt = truncated.with_name("2000-01-01--00-00-00")
    shutil.copytree(sigtermed["folder"], corrupt)
    (corrupt / "params.json").write_text((corrupt / "params.json").read_text()[:50])
    with pytest.raises(DamagedRunError, match=r"params.json is not valid JSON"):
        load_run(corrupt)
    rows = {row["timestamp"]: row for row in list_runs(tmp_path / "saved")}
    assert "truncated" in rows[truncated.name]["damaged"] and "not valid JSON" in rows[corrupt.name]["damaged"]
    assert capsys.readouterr().out.count("DAMAGED, cannot load") == 2


def test_the_weight_hash_catches_changed_weights(sigtermed: Dict[str, Any], tmp_path: Path) -> None:
    folder = damaged_copy(sigtermed, tmp_path)
    saved = load_run(folder)
    verify_stable_load(folder)
    with torch.no_grad():
        weight = saved.lm.decoder.layers[0].linear1.weight
        weight.mul_(1 + 0.1 * torch.randn_like(weight))  # 10% noise in one layer
    save_model(saved.lm, str(folder / "model.safetensors"))
    with pytest.raises(VerificationError, match="is not the file the run saved"):
        verify_stable_load(folder)


def test_fields_of_a_newer_version_are_kept_and_weights_share_the_files_permissions(
        sigtermed: Dict[str, Any], tmp_path: Path) -> None:
    folder = sigtermed["folder"]
    assert (folder / "model.safetensors").stat().st_mode == (folder / "params.json").stat().st_mode
    copy = damaged_copy(sigtermed, tmp_path)
    params = json.loads((copy / "params.json").read_text())
    params["model_params"]["future_option"] = 3
    (copy / "params.json").write_text(json.dumps(params))
    with pytest.warns(UserWarning, match=r"saved by a newer version.*ModelParams: future_option=3"):
        read = read_params(copy)
    assert read["unknown_fields"] == {"model_params": {"future_option": 3}}


# ---- smaller items -----------------------------------------------------------------------------------------
def test_lines_longer_than_max_seq_len_are_reported_once_with_a_count(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "longlines").mkdir()
    lines = ["a b c d e f g h i j k l"] * 3 + ["a b"] * 17
    (tmp_path / "longlines" / "data.txt").write_text("\n".join(lines) + "\n")
    LMDataModule(DataParams(dataset_name="longlines", max_seq_len=6, val_frac=0.5), data_path=tmp_path)
    out = capsys.readouterr().out
    assert out.count("were cut to fit") == 1
    cut = [int(n) for n in re.findall(r"(\d+) of \d+ in", out)]
    assert sum(cut) == 3


def test_config_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffTrainParams\nlr=0.01\n".encode("utf-8"))
    [setting] = parse_config_file(path)
    assert (setting.section, setting.key, setting.values) == ("TrainParams", "lr", [0.01])


def test_nan_temperature_and_zero_batch_size_are_clear_errors() -> None:
    lm = make_lm(char_tokenizer())
    with pytest.raises(ValueError, match=r"temperature must be >= 0 \(0 = greedy\) and finite, got nan"):
        lm.sample(pref="ab", temperature=float("nan"))
    with pytest.raises(ValueError, match="batch_size is the number of texts per forward pass"):
        lm.perplexities(["abc"], batch_size=0)


def test_the_readme_shows_what_dry_run_prints_for_a_bad_run(capsys: pytest.CaptureFixture) -> None:
    readme = (REPO / "README.md").read_text()
    command = "$ python3 main.py --config=test-synth --set ModelParams.max_seq_len=[64,16] --dry-run\n"
    shown = readme[readme.index(command) + len(command):].split("```")[0]
    with pytest.raises(SystemExit) as info:
        main.main(["--config=test-synth", "--set", "ModelParams.max_seq_len=[64,16]", "--dry-run"])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out + err == shown
