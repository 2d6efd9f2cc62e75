"""--parallel N and --slurm (submitit's local executor here): the same results as running the runs one
after another, one log file per run, a failing run reported while the others complete."""
import json
from pathlib import Path

import pytest

import main
from train.launch import slurm_minutes

SWEEP = """
DataParams
dataset_name="sort"
n_train_samples=256
n_eval_samples=48
min_len=2
max_len=[2, 3, 9, 4]  # 9 does not fit max_seq_len: that run fails while building its data
long_len=0
max_seq_len=12

ModelParams
n_layers=1
dim=32
n_heads=2

TrainParams
epochs=1
batch_size=32
lr=1e-2
warmup_steps=3
n_print_samples=1
print_sample_len=4
"""
GOOD = {"max_len=2", "max_len=3", "max_len=4"}


def saved_losses(save_dir: Path) -> dict:
    """{run name: (val loss, test loss)} of the runs saved under save_dir."""
    return {folder.parent.name: (json.loads((folder / "final.json").read_text())["val_loss"],
                                 json.loads((folder / "final.json").read_text())["test_loss"])
            for folder in save_dir.glob("sweep/sort/*/*") if folder.is_dir()}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("sequential")
    (tmp / "sweep.txt").write_text(SWEEP)
    main.main([f"--config={tmp / 'sweep.txt'}", "--no-wandb", "--save", f"--save-dir={tmp / 'saved'}",
               "--set", "max_len=[2, 3, 4]"])
    losses = saved_losses(tmp / "saved")
    assert set(losses) == GOOD
    return losses


def test_parallel_runs_give_the_sequential_results_and_report_the_failure(sequential, tmp_path, capsys):
    (tmp_path / "sweep.txt").write_text(SWEEP)
    with pytest.raises(SystemExit) as exit_:
        main.main([f"--config={tmp_path / 'sweep.txt'}", "--no-wandb", "--save", f"--save-dir={tmp_path / 'saved'}",
                   "--parallel", "2"])
    assert exit_.value.code == 1  # the number of failed runs
    assert saved_losses(tmp_path / "saved") == sequential  # bit for bit: same seeds, one thread each
    out = capsys.readouterr().out
    assert "4 runs, 2 at a time, 1 CPU thread(s) each" in out
    assert out.count("] started") == 4 and out.count("] done in ") == 3
    assert "FAILED" in out and "max_seq_len=12 fits 13" in out  # the failing run's error, in one line
    summary = out[out.index("=== summary"):].splitlines()
    rows = {line.split()[0]: line for line in summary[2:6]}
    assert rows["3"].split()[1] == "failed" and "max_len=9" in rows["3"]
    for i in ("1", "2", "4"):
        assert rows[i].split()[1] == "done" and str(tmp_path / "saved") in rows[i]
    logs = sorted((tmp_path / "saved").glob("sweep/sort/*/*.log"))
    assert len(logs) == 4 and "ValueError" in next(p for p in logs if "max_len=9" in str(p)).read_text()
    assert "final: val main loss" in next(p for p in logs if "max_len=2" in str(p)).read_text()


def test_slurm_jobs_through_submitits_local_executor(sequential, tmp_path, capsys):
    (tmp_path / "sweep.txt").write_text(SWEEP)
    results = main.main([f"--config={tmp_path / 'sweep.txt'}", "--no-wandb", "--save",
                         f"--save-dir={tmp_path / 'saved'}", "--set", "max_len=[2, 4]", "--slurm",
                         "--slurm-time=00:10:00"])
    out = capsys.readouterr().out
    assert "submitit runs the jobs on this machine" in out and out.count("submitted job") == 2
    assert [r["status"] for r in results] == ["done", "done"]
    losses = saved_losses(tmp_path / "saved")
    assert losses == {name: sequential[name] for name in ("max_len=2", "max_len=4")}
    assert all(Path(r["log"]).is_file() for r in results)


def test_slurm_time_and_bad_launch_flags(capsys):
    assert [slurm_minutes(t) for t in ("90", "01:30:00", "1-00:00:00", "00:00:30")] == [90, 90, 1440, 1]
    with pytest.raises(SystemExit) as exit_:
        main.main(["--config=test-nlp", "--slurm", "--slurm-time=an hour"])
    assert exit_.value.code == 2 and "HH:MM:SS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main.main(["--config=test-nlp", "--parallel", "0"])
    assert "whole number >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main.main(["--config=test-nlp", "--parallel", "2", "--slurm"])
    assert "choose one" in capsys.readouterr().err
