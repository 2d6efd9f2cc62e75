"""Reliability round three (issue 26): diverged runs under --parallel / --slurm, export verification and
its output folder, damaged runs in list_runs, checks of the whole sweep before compute, remote code in
pretrained folders, and the smaller items (file modes, resuming a killed run, pseudo file systems,
divergence before the first checkpoint)."""
import json
import os
import re
import shutil
import types
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

import main
from data.data_params import DataParams
from main import build_arg_parser
from model.model_params import ModelParams
from tests.test_reliability import sigtermed, tiny_config  # noqa: F401,F811 (sigtermed: a fixture)
from train.run import run_training
from train.runs import Namer
from train.train_params import TrainParams

TINY_DATA = dict(dataset_name="sort", n_train_samples=96, n_eval_samples=16, min_len=2, max_len=3, long_len=0,
                 max_seq_len=12)
TINY_TRAIN = dict(epochs=1, batch_size=16, lr=1e-2, warmup_steps=1, hyperparams_log_freq=2, n_print_samples=0)


def tiny_run(save_dir: Path, callbacks: Any = (), resume: Any = None, **train: Any) -> Dict[str, Any]:
    """A tiny sort run (6 batches an epoch, 1 layer of width 16), saved under save_dir."""
    flags = ["--config=tiny", "--no-wandb", "--save", f"--save-dir={save_dir}"]
    args = build_arg_parser().parse_args(flags + ([f"--resume={resume}"] if resume else []))
    namer = Namer(DataParams(**TINY_DATA), ModelParams(n_layers=1, dim=16, n_heads=2),
                  TrainParams(**{**TINY_TRAIN, **train}), args, config_name="tiny")
    return run_training(namer, callbacks=callbacks)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny run that trained well: copied by the tests that damage it."""
    return Path(tiny_run(tmp_path_factory.mktemp("good") / "saved", max_steps=3)["save_folder"])


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny run whose loss became nan (lr=1e10): final.json says diverged, the weights hold nan."""
    result = tiny_run(tmp_path_factory.mktemp("diverged") / "saved", lr=1e10, warmup_steps=0, epochs=3)
    assert result["diverged"]
    return Path(result["save_folder"])


def copy_run(folder: Path, tmp_path: Path, name: str = "") -> Path:
    """A copy of a run folder laid out as {save dir}/tiny/sort/default/{timestamp}."""
    copy = tmp_path / "saved" / "tiny" / "sort" / "default" / (name or folder.name)
    shutil.copytree(folder, copy)
    return copy


# ---- 1. --parallel / --slurm report a diverged run as diverged and count it ------------------------------
def test_parallel_reports_a_diverged_run_as_diverged_and_exits_non_zero(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main.main([f"--config={tiny_config(tmp_path)}", "--no-wandb", "--save", f"--save-dir={tmp_path / 'saved'}",
                   "--set", "lr=1e10", "--set", "warmup_steps=0", "--set", "max_steps=8", "--parallel", "1"])
    out = capsys.readouterr().out
    assert info.value.code == 1, out
    assert "] diverged in " in out and "DIVERGED" in out
    summary = out[out.index("=== summary"):].splitlines()
    assert summary[2].split()[1] == "diverged"
    assert "1 of 1 run(s) failed, diverged or were not saved where asked: run(s) 1" in out


def test_slurm_job_results_keep_divergence_and_save_errors() -> None:
    from train import launch
    job = types.SimpleNamespace(paths=types.SimpleNamespace(stdout="job.log"),
                                result=lambda: {"val_loss": float("nan"), "diverged": True})
    assert launch.job_result(job, 1.0)["status"] == "diverged"
    job.result = lambda: {"val_loss": 1.0, "save_error": "disk full: saved in /tmp/x instead"}
    assert launch.job_result(job, 1.0)["status"] == "save failed"
    assert launch.count_bad([{"status": "diverged"}, {"status": "done"}, {"status": "save failed"}]) == 2


# ---- 5. every value checkable before compute is checked for the whole sweep, dry or not ------------------
@pytest.mark.parametrize("flags", [["--dry-run"], ["--no-wandb"]])
def test_a_bad_seed_in_run_2_is_refused_before_run_1_trains(
        flags: list, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main.main([f"--config={tiny_config(tmp_path)}", *flags, "--set", "seed=[0,-1]"])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and "Nothing was trained" in err, err
    assert "run 2/2" in err and "run 1/2" not in err and "seed=-1: must be a whole number in [0, 4294967295]" in err
    assert "final:" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="16-mixed trains on a machine with CUDA")
def test_16_mixed_without_cuda_is_refused_by_the_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main.main([f"--config={tiny_config(tmp_path)}", "--dry-run", "--set", "precision=16-mixed"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and 'precision="16-mixed" needs a CUDA GPU, and this machine has none' in err


# ---- 6. pretrained folders that ship code are refused, nothing of theirs runs ------------------------------
def tiny_gpt2_folder(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel
    from tests.pretrained_helpers import save_tokenizer
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=50257)
    GPT2LMHeadModel(config).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json"])
def test_get_pretrained_refuses_a_folder_whose_config_has_auto_map(file: str, tmp_path: Path) -> None:
    from pretrained import get_pretrained
    folder = tiny_gpt2_folder(tmp_path / "gpt2-custom")
    marker = tmp_path / "code-ran"
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import "
                                      "GPT2Config\nclass CustomConfig(GPT2Config):\n    pass\n")
    config = json.loads((folder / file).read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoTokenizer": ["custom.CustomConfig", None]}
    (folder / file).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"needs its own code to load \(its {file} has an \"auto_map\".*"
                                         r"trust_remote_code=False"):
        get_pretrained(folder)
    assert not marker.exists()


def test_transformers_is_always_told_not_to_trust_remote_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers
    from pretrained import get_pretrained
    folder = tiny_gpt2_folder(tmp_path / "gpt2")
    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained

        def spy(*args: Any, _original: Any = original, _name: str = cls.__name__, **kwargs: Any) -> Any:
            seen.append((_name, kwargs.get("trust_remote_code", "not given")))
            return _original(*args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", spy)
    get_pretrained(folder)
    assert {name for name, _ in seen} == {"AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"}
    assert all(value is False for _, value in seen), seen


# ---- 2. export verifies the run as loading does, and refuses a diverged run unless forced --------------------
def test_export_refuses_a_diverged_run_unless_forced(diverged_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    from pretrained import export_hf
    with pytest.raises(ValueError, match=r"the run diverged .*Export it anyway with force=True \(--force\)"):
        export_hf(diverged_run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as info:
        main.main(["--export-hf", str(diverged_run), str(tmp_path / "out")])
    assert info.value.code == 2 and "--force" in capsys.readouterr().err
    main.main(["--export-hf", str(diverged_run), str(tmp_path / "out"), "--force"])
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_export_refuses_nan_weights_even_when_final_json_does_not_say_diverged(
        diverged_run: Path, tmp_path: Path) -> None:
    from pretrained import export_hf
    from train.run_folder import load_run
    lm = load_run(diverged_run).lm
    with pytest.raises(ValueError, match=r"the weights hold NaN / inf values .*force=True"):
        export_hf(lm, tmp_path / "out")
    folder = copy_run(diverged_run, tmp_path)
    final = json.loads((folder / "final.json").read_text())
    final["diverged"] = False
    (folder / "final.json").write_text(json.dumps(final))
    with pytest.raises(ValueError, match=r"the weights hold NaN / inf values"):
        export_hf(folder, tmp_path / "out")


def test_export_refuses_weights_that_are_not_the_file_the_run_saved(good_run: Path, tmp_path: Path) -> None:
    from pretrained import export_hf
    folder = copy_run(good_run, tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"is not the file the run saved .*force=True \(--force\)"):
        export_hf(folder, tmp_path / "out")
    export_hf(folder, tmp_path / "out", force=True)


def test_an_exported_folder_has_one_file_mode(good_run: Path, tmp_path: Path) -> None:
    from pretrained import export_hf
    out = export_hf(good_run, tmp_path / "out")
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes


# ---- 4. --export-hf checks OUT before the model loads --------------------------------------------------------
def test_export_hf_checks_the_output_folder_before_loading_the_model(
        good_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import pretrained
    import train.run_folder

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the output folder was checked")
    monkeypatch.setattr(train.run_folder, "load_run", no_load)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for out, why in ((a_file, "is a file, not a folder"), (a_file / "sub", "is a file, not a folder"),
                     (other, r"already exists and is not empty \(notes.txt\), and is not an earlier export.*--force")):
        with pytest.raises(SystemExit) as info:
            main.main(["--export-hf", str(good_run), str(out)])
        err = capsys.readouterr().err
        assert info.value.code == 2 and "Traceback" not in err
        assert re.search(why, err), err
    if Path("/proc").is_dir():  # a virtual file system: permission bits say writable (as root), mkdir fails
        with pytest.raises(ValueError, match=r"cannot export to /proc/x: /proc is not writable"):
            pretrained.export_hf(good_run, "/proc/x")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a folder of another user (root writes anywhere)
    with pytest.raises(ValueError, match=r"cannot export to .*: .* is not writable"):
        pretrained.export_hf(good_run, tmp_path / "new")


def test_export_hf_overwrites_an_earlier_export(good_run: Path, tmp_path: Path) -> None:
    from pretrained import export_hf
    export_hf(good_run, tmp_path / "out")
    export_hf(good_run, tmp_path / "out")  # the same folder again: an earlier export is replaced


# ---- 3. list_runs does not show as good a run that the next load refuses -----------------------------------
def test_list_runs_marks_every_damage_that_loading_refuses(good_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    from model_explorer import get_model_by_timestamp, list_runs
    from train.run_folder import DamagedRunError, load_run
    damaged = {}
    for i, (what, damage) in enumerate([
            ("tokenizer {}", lambda f: (f / "tokenizer.json").write_text("{}")),
            ("tokenizer truncated",
             lambda f: (f / "tokenizer.json").write_text((f / "tokenizer.json").read_text()[:200])),
            ("params n_layers=2", lambda f: (f / "params.json").write_text(
                (f / "params.json").read_text().replace('"n_layers": 1', '"n_layers": 2'))),
            ("one byte flipped", lambda f: (f / "model.safetensors").write_bytes(
                (f / "model.safetensors").read_bytes()[:-5] + bytes([(f / "model.safetensors").read_bytes()[-5] ^ 1])
                + (f / "model.safetensors").read_bytes()[-4:])),
    ]):
        folder = copy_run(good_run, tmp_path, name=f"2001-01-0{i + 1}--00-00-00")
        damage(folder)
        damaged[folder.name] = what
    copy_run(good_run, tmp_path, name="2001-02-01--00-00-00")  # an intact copy
    rows = {row["timestamp"]: row for row in list_runs(tmp_path / "saved")}
    out = capsys.readouterr().out
    assert rows["2001-02-01--00-00-00"]["damaged"] is None
    for stamp, what in damaged.items():
        assert rows[stamp]["damaged"], f"{what}: listed as good"
        with pytest.raises((DamagedRunError, ValueError)):
            get_model_by_timestamp(stamp, save_dir=tmp_path / "saved")
    assert out.count("DAMAGED, cannot load") == 4
    assert "tokenizer.json is damaged" in rows["2001-01-01--00-00-00"]["damaged"]
    assert "does not fit params.json" in rows["2001-01-03--00-00-00"]["damaged"]
    assert "is not the file the run saved" in rows["2001-01-04--00-00-00"]["damaged"]
    load_run(tmp_path / "saved" / "tiny" / "sort" / "default" / "2001-01-04--00-00-00")  # loads, unverified ...
    with pytest.raises(DamagedRunError, match="is not the file the run saved"):  # ... by timestamp: verified
        get_model_by_timestamp("2001-01-04--00-00-00", save_dir=tmp_path / "saved")


def test_loading_a_run_without_its_tokenizer_names_the_missing_file(good_run: Path, tmp_path: Path) -> None:
    from model_explorer import get_model_by_timestamp, list_runs
    folder = copy_run(good_run, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=rf"the run {folder} cannot be loaded: it lacks tokenizer.json"):
        get_model_by_timestamp(folder.name, save_dir=tmp_path / "saved")
    [row] = list_runs(tmp_path / "saved", show=False)
    assert row["damaged"] == "missing tokenizer.json"


# ---- 8. smaller items: resuming a killed run, pseudo file systems, divergence before the first checkpoint ----
def test_resuming_a_killed_partial_run_finishes_into_its_own_folder(  # noqa: F811 (sigtermed: the fixture)
        sigtermed: Dict[str, Any], tmp_path: Path) -> None:
    """A run killed (SIGKILL) at step 3 leaves {folder}.partial holding its checkpoint only."""
    from train.run_folder import load_run
    folder = tmp_path / "saved" / "tiny" / "sort" / "default" / "2001-01-01--00-00-00"
    shutil.copytree(sigtermed["folder"] / "checkpoints", Path(f"{folder}.partial") / "checkpoints")
    for resume in (folder, Path(f"{folder}.partial")):  # the name "saving to ..." printed, and the .partial itself
        result = tiny_run(tmp_path / "saved", resume=resume)
        assert result["save_folder"] == str(folder) and result["timestamp"] == folder.name
        assert not Path(f"{folder}.partial").exists()
        assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name], "nothing else is left behind"
        assert load_run(folder).final["steps"] == 6, "the killed run's 3 steps, then the other 3 of its epoch"
        shutil.rmtree(folder)
        shutil.copytree(sigtermed["folder"] / "checkpoints", Path(f"{folder}.partial") / "checkpoints")


@pytest.mark.skipif(not Path("/sys").is_dir() or os.statvfs("/sys").f_blocks != 0, reason="no sysfs here")
def test_a_save_dir_on_sysfs_is_refused_as_a_virtual_file_system(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("LM_SAVE_DIR", "/sys/x")
    with pytest.raises(SystemExit) as info:
        main.main([f"--config={tiny_config(tmp_path)}", "--no-wandb", "--save"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "/sys is on a virtual file system (such as /sys or /proc)" in err
    assert "MiB free" not in err


def test_a_save_dir_on_a_read_only_file_system_is_named_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from train.save_dir import check_save_dir
    real = os.statvfs(tmp_path)
    read_only = os.statvfs_result((*real[:8], real.f_flag | os.ST_RDONLY, real.f_namemax))
    monkeypatch.setattr(os, "statvfs", lambda path: read_only)
    with pytest.raises(ValueError, match=rf"{tmp_path} is on a read-only file system"):
        check_save_dir(tmp_path)


def test_a_run_that_diverges_before_its_first_checkpoint_says_no_weights_were_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main.main([f"--config={tiny_config(tmp_path)}", "--no-wandb", "--save", f"--save-dir={tmp_path / 'saved'}",
                   "--set", "lr=1e10", "--set", "warmup_steps=0", "--set", "max_steps=8"])
    out = capsys.readouterr().out
    assert info.value.code == 1
    assert "diverged before its first checkpoint was written, so no weights from before the divergence" in out
    assert "keeps the weights" not in out


def test_the_divergence_message_names_the_checkpoint_step_when_there_is_one(tmp_path: Path) -> None:
    from train.callbacks import LastCheckpoint, NonFiniteLoss
    from train.run import divergence_message
    nonfinite = NonFiniteLoss(check_every=1)
    nonfinite.diverged_at_step, nonfinite.value = 9, float("nan")
    checkpoint = LastCheckpoint(tmp_path / "last.ckpt")
    checkpoint.path.write_bytes(b"ckpt")
    checkpoint.saved_at_step = 6
    message = divergence_message(nonfinite, TrainParams(), checkpoint)
    assert f"The checkpoint {checkpoint.path} keeps the weights of step 6, before the divergence." in message
