"""Training on several devices: 2-process CPU DDP (gloo) through main.py, and a faked 2-task SLURM job.

Exactly equal between 2 processes x batch 32 (20 steps, then --resume to 30) and 1 process x batch 64
(30 steps; same seed): the samples of every optimizer step (one permutation, each global batch split
between the ranks), the initial weights, the steps and global sample counts (s, n) of every
train_stats entry and the learning rate at every step (a constant schedule after warmup, so that
stopping at 20 steps and resuming changes nothing).
Equal within float tolerance: the losses, because DDP averages the two ranks' gradients (each the mean
over 32 samples of 32 tokens) where one process takes the mean over 64: the same number, summed in
another order.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.dataloader import LMDataModule
from main import build_arg_parser
from train.runs import Namer
from model_explorer import verify_stable_load
from train.run import run_training
from train.run_folder import load_run
from train.trainer import corpus_loss

REPO = Path(__file__).resolve().parents[1]
# float32: the loss-curve test compares DDP with one process exactly (bfloat16 would round each rank's
# gradients apart); the faked SLURM job below trains DDP in the default precision
DDP_SETTINGS = ['precision="32"', "val_check_interval=10", "hyperparams_log_freq=5", "n_print_samples=1", "print_sample_len=5",
                "lr_schedule=constant", "devices=2", "strategy=ddp", "batch_size=32"]


def sets(settings):
    return [arg for setting in settings for arg in ("--set", setting)]


def subprocess_env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    env.pop("LOCAL_RANK", None)
    return env


def run_main(*flags):
    command = [sys.executable, "main.py", "--config=test-nlp", "--no-wandb", "--save", *flags]
    out = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """2-process DDP through main.py: 20 steps saved, then resumed (still DDP) up to step 30."""
    first, resumed = tmp_path_factory.mktemp("ddp-first"), tmp_path_factory.mktemp("ddp-resumed")
    stdouts = [run_main(f"--save-dir={first}", *sets(DDP_SETTINGS + ["max_steps=20"]))]
    folder = next(p for p in first.glob("test-nlp/ptb/*/*") if p.is_dir())
    stdouts.append(run_main(f"--save-dir={resumed}", f"--resume={folder}", *sets(DDP_SETTINGS + ["max_steps=30"])))
    return resumed, stdouts, first


def test_ddp_on_two_cpu_processes_trains_saves_once_and_counts_globally(ddp_run):
    save_dir, stdouts, first = ddp_run
    for stdout in stdouts:
        assert stdout.count("=== run 1/1") == 1 and stdout.count("saved to ") == 1  # rank 1 prints nothing
        assert "2 CPU processes" in stdout and "global batch 64" in stdout
    for root in (first, save_dir):
        folders = [p for p in root.glob("test-nlp/ptb/*/*") if p.is_dir()]
        assert len(folders) == 1 and not folders[0].name.endswith(".partial"), folders  # saved once, by rank 0
    assert load_run(next(first.glob("test-nlp/ptb/*/*"))).final["steps"] == 20
    run = load_run(folders[0])
    stats = run.train_stats
    assert [e[0] for e in stats["stat/train_loss"]] == list(range(30))
    assert [e[1] for e in stats["stat/train_loss"]] == [64 * (i + 1) for i in range(30)]  # global samples
    assert run.final["steps"] == 30 and run.final["samples"] == 30 * 64
    verify_stable_load(folders[0])
    # the last validation ran on both ranks, each on half of the set, sums added over the ranks; the
    # final evaluation ran in rank 0 alone; both equal the evaluation of the saved weights in this process
    dm = LMDataModule(run.params["data_params"], batch_size=50)
    alone = corpus_loss(run.lm, dm.val_dataloader()[0])
    distributed = stats["stat/val_loss:main"][-1]
    assert distributed[0] == 30 and distributed[3] == pytest.approx(alone, rel=1e-6)
    assert run.final["val_loss"] == pytest.approx(alone, rel=1e-6)


def test_ddp_gives_the_loss_curve_of_one_process_with_twice_the_batch(ddp_run, tmp_path):
    save_dir = ddp_run[0]
    ddp = load_run(next(p for p in save_dir.glob("test-nlp/ptb/*/*") if p.is_dir()))
    args = build_arg_parser().parse_args(["--config=test-nlp", "--no-wandb"])
    tp = ddp.params["train_params"]
    tp.devices, tp.strategy, tp.batch_size = 1, "auto", 64
    single = run_training(Namer(ddp.params["data_params"], ddp.params["model_params"], tp, args))
    for name in ("stat/train_loss", "stat/val_loss:main", "stat/lr", "stat/test_loss"):
        a, b = ddp.train_stats[name], single["train_stats"][name]
        if name == "stat/val_loss:main":
            # the validation at step 20, where the first DDP run stopped, ran after its checkpoint was
            # written, so the resumed run's train_stats lack it (as on one device)
            assert [e[0] for e in a] == [10, 30] and [e[0] for e in b] == [10, 20, 30]
            b = [e for e in b if e[0] != 20]
        assert [e[:2] for e in a] == [e[:2] for e in b], name  # the same steps and global sample counts
        tolerance = 0 if name == "stat/lr" else 2e-4
        assert [e[3] for e in a] == pytest.approx([e[3] for e in b], abs=tolerance), name


RANK_REPORT = '''
import json, os, signal, sys, torch
from lightning.pytorch.callbacks import Callback
from main import build_arg_parser
from train.runs import Namer
from data.data_params import DataParams
from model.model_params import ModelParams
from train.train_params import TrainParams
from train.run import run_training

class Report(Callback):
    def on_train_end(self, trainer, pl_module):
        weights = torch.cat([p.detach().flatten() for p in pl_module.model.parameters()])
        report = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "environment": type(trainer.strategy.cluster_environment).__name__,
                  "weights_sum": float(weights.double().sum()), "weights_abs": float(weights.double().abs().sum()),
                  "val_loss": pl_module.progress_metrics.get("val_loss"), "samples": pl_module.n_samples_trained,
                  "step": trainer.global_step}
        open(sys.argv[2] + f"/rank{trainer.global_rank}.json", "w").write(json.dumps(report))

class CtrlCOnRankZero(Callback):  # Ctrl-C reaching one process only (e.g. `kill -INT` of rank 0)
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 0 and trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

args = build_arg_parser().parse_args(["--no-wandb", "--save", "--save-dir", sys.argv[1]])
data = DataParams(dataset_name="sort", n_train_samples=256, n_eval_samples=40, max_len=4, long_len=0, max_seq_len=12)
train = TrainParams(max_steps=8, batch_size=16, warmup_steps=2, devices=2, strategy="ddp", n_print_samples=0,
                    val_check_interval=2)
run_training(Namer(data, ModelParams(n_layers=1, dim=32, n_heads=2), train, args, config_name="slurm-test"),
             callbacks=[Report(), CtrlCOnRankZero()])
'''


def free_port() -> int:
    """A TCP port no process listens on now (the OS picks it), for rank 0's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_faked_two_task_slurm_job_trains_as_one_ddp_run(tmp_path):
    """Two processes started the way `srun --ntasks=2` starts them (SLURM_* variables as Lightning's
    SLURMEnvironment reads them): they find each other, train together and end with the same weights.
    A Ctrl-C that reaches rank 0 alone at step 3 stops both at the same step; the run is saved once."""
    script = tmp_path / "rank_report.py"
    script.write_text(RANK_REPORT)
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
             "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lm-train", "SLURM_NODELIST": "127.0.0.1",
             "MASTER_PORT": str(free_port())}
    logs = [tmp_path / f"rank{rank}.log" for rank in (0, 1)]
    processes = [subprocess.Popen([sys.executable, "-u", str(script), str(tmp_path / "saved"), str(tmp_path)],
                                  cwd=REPO, env=subprocess_env(**slurm, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank)),
                                  stdout=log.open("w"), stderr=subprocess.STDOUT) for rank, log in zip((0, 1), logs)]
    try:
        for p in processes:
            p.wait(timeout=300)
    except subprocess.TimeoutExpired:  # a rank that failed leaves the other waiting: stop both, show the logs
        for p in processes:
            p.kill()
            p.wait()
    outputs = [log.read_text() for log in logs]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(f"rank {r}: {o[-2000:]}" for r, o in enumerate(outputs))
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["environment"] == "SLURMEnvironment" for r in reports)
    for key in ("weights_sum", "weights_abs", "val_loss", "samples", "step"):
        assert reports[0][key] == reports[1][key], key  # DDP keeps the ranks' weights identical
    assert reports[0]["step"] == 3 and reports[0]["samples"] == 3 * 32  # the step of the Ctrl-C
    assert "saved to" in outputs[0] and "saved to" not in outputs[1]
    folders = [p for p in (tmp_path / "saved").glob("slurm-test/sort/*/*") if p.is_dir()]
    assert len(folders) == 1 and json.loads((folders[0] / "final.json").read_text())["interrupted"] is True


def test_device_settings_are_checked_with_clear_errors():
    from train.devices import device_setup
    from train.train_params import TrainParams
    setup = device_setup(TrainParams(devices=2), cuda=False)
    assert (setup.accelerator, setup.devices, setup.world_size) == ("cpu", 2, 2)
    assert type(setup.strategy).__name__ == "DDPStrategy"  # "auto" on several devices
    assert device_setup(TrainParams(), cuda=False).strategy == "auto" and device_setup(TrainParams(), cuda=False).world_size == 1
    with pytest.raises(ValueError, match=r"fsdp.*needs them; on the CPU use strategy=\"ddp\""):
        device_setup(TrainParams(devices=2, strategy="fsdp"), cuda=False)
    with pytest.raises(ValueError, match="choose one of auto, ddp, fsdp"):
        device_setup(TrainParams(strategy="deepspeed"), cuda=False)
    with pytest.raises(ValueError, match="lists of device numbers name GPUs"):
        device_setup(TrainParams(devices=[0, 1]), cuda=False)
    with pytest.raises(ValueError, match="num_nodes=0: must be a whole number >= 1"):
        device_setup(TrainParams(num_nodes=0), cuda=False)
    with pytest.raises(ValueError, match=r"devices=\[0, 0\]: must be a count >= 1, a list of distinct GPU numbers"):
        device_setup(TrainParams(devices=[0, 0]), cuda=True)
