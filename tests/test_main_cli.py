"""main.py: the command line (through a subprocess, as a researcher runs it), run_all and Namer."""
import dataclasses
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import main
from data.data_params import DataParams
from model.model_params import ModelParams
from train.train_params import TrainParams

REPO = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("torch", "lightning", "transformers", "datasets", "wandb")


def run_main(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", *flags], cwd=REPO, capture_output=True, text=True, timeout=60)


def make_args(*flags: str):
    return main.build_arg_parser().parse_args(list(flags))


# ---- the command line ---------------------------------------------------------------------------


def test_dry_run_prints_one_line_per_run_in_sweep_order():
    result = run_main("--config=sweep-example", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0] == "[1/4] configs/sweep-example.txt  task=ptb  n_layers=1  lr=0.001"
    assert lines[3] == "[4/4] configs/sweep-example.txt  task=ptb  n_layers=2  lr=0.003"


def test_dry_run_of_a_prefix_with_task_set_and_ablate():
    files = sorted(p.stem for p in (REPO / "configs").glob("test-*.txt"))
    result = run_main("--config=test", "--task=sort", "--set", "TrainParams.lr=[1e-3, 3e-3]",
                      "--set", "epochs=1", "--ablate", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(files) * 2 * 2  # every test-* file x 2 learning rates x (run + 1 ablation)
    assert {"test-nlp", "test-synth"} <= {re.search(r"configs/(\S+)\.txt", line).group(1) for line in lines}
    assert all("task=sort" in line and "(--set epochs=1)" in line for line in lines)
    assert 'lr=0.001  ablation="none"' in lines[0]
    assert 'lr=0.001  ablation="swap-layer-architecture"' in lines[1]


def test_list_params_prints_every_field_by_section():
    result = run_main("--list-params")
    assert result.returncode == 0, result.stderr
    for cls in (DataParams, ModelParams, TrainParams):
        assert f"{cls.__name__}  (" in result.stdout
        for f in dataclasses.fields(cls):
            assert re.search(rf"^  {f.name} ", result.stdout, re.M), f.name


@pytest.mark.parametrize("config_text, flags, expected", [
    ("ModelParams\nn_layers='two'\n", [], ["bad.txt, line 2", "section ModelParams", "key 'n_layers'"]),
    ("dim=3\n", [], ["bad.txt, line 1", "outside any section"]),
    ("ModelParams\ndim=3\n", ["--set", "max_seq_len=32"], ["ambiguous", "ModelParams.max_seq_len"]),
])
def test_bad_input_exits_2_with_a_message_and_no_traceback(tmp_path, config_text, flags, expected):
    config = tmp_path / "bad.txt"
    config.write_text(config_text)
    result = run_main(f"--config={config}", "--dry-run", *flags)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
    for part in expected:
        assert part in result.stderr, (part, result.stderr)


def test_missing_config_exits_2_listing_existing_configs():
    result = run_main("--config=no-such-config", "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Existing configs:" in result.stderr and "test-nlp" in result.stderr


def test_no_config_is_a_usage_error():
    result = run_main("--dry-run")
    assert result.returncode == 2 and "--config is required" in result.stderr


@pytest.mark.parametrize("flags, imported", [
    (["--list-params"], []),
    # --dry-run checks every run's model params, which live with the model code (torch), but trains nothing
    (["--config=test", "--dry-run", "--ablate"], ["torch"]),
])
def test_parsing_and_dry_run_import_nothing_heavy(flags, imported):
    code = (f"import runpy, sys; sys.argv = ['main.py', *{flags!r}];"
            "runpy.run_path('main.py', run_name='__main__');"
            f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(imported)


def test_flags_and_defaults(monkeypatch):
    monkeypatch.setenv("WANDB_ENTITY", "my-team")
    args = make_args("--config=test-nlp")
    assert (args.gpu_id, args.save, args.no_wandb, args.ablate, args.set) == (None, False, False, False, [])
    assert args.wandb_entity == "my-team"
    assert Path(args.save_dir) == REPO.parent / "saved-models"
    args = make_args("--config=x", "--gpu-id=1", "--save", "--no-wandb", "--wandb-proj-name=p", "--resume=r",
                     "--data-path=d", "--save-dir=s", "--set", "a=1", "--set", "b=2", "--wandb-entity=e")
    assert (args.gpu_id, args.save, args.no_wandb, args.wandb_proj_name, args.resume, args.data_path,
            args.save_dir, args.set, args.wandb_entity) == ([1], True, True, "p", "r", "d", "s", ["a=1", "b=2"], "e")
    assert make_args("--config=x", "--gpu-id=0,1").gpu_id == [0, 1]
    with pytest.raises(SystemExit):
        make_args("--config=x", "--gpu-id=0,a")


# ---- run_all hands one Namer per run to run_training ----------------------------------------------


def test_run_all_builds_a_namer_per_run(monkeypatch, tmp_path):
    namers = []
    fake_run = types.ModuleType("train.run")
    fake_run.run_training = lambda namer: namers.append(namer) or {"val_loss": 1.0, "test_loss": 2.0}
    monkeypatch.setitem(sys.modules, "train.run", fake_run)
    results = main.main(["--config=sweep-example", "--no-wandb", "--ablate", f"--save-dir={tmp_path}",
                         "--set", "epochs=1"])
    assert len(results) == len(namers) == 8
    first, swapped = namers[0], namers[1]
    assert first.varying == {"n_layers": 1, "lr": 0.001, "ablation": "none"}
    assert first.run_name() == "n_layers=1,lr=0.001,ablation=none"
    assert swapped.model_params.layer_architecture != first.model_params.layer_architecture
    assert first.model_params.layer_architecture == "custom-transformer"  # the ablation edits a copy
    assert first.train_params.epochs == 1 and first.args.no_wandb
    assert first.wandb_proj_name() == "base-sweep-example-ptb"
    assert len({n.timestamp for n in namers}) == 8


def test_bad_resume_path_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main.main(["--config=test-nlp", "--dry-run", "--resume=/no/such/run"])
    assert info.value.code == 2 and "--resume=/no/such/run: no such file" in capsys.readouterr().err


# ---- Namer ----------------------------------------------------------------------------------------


def namer_for(tmp_path, varying=None, flags=(), **data):
    args = make_args("--config=test-nlp", f"--save-dir={tmp_path}", *flags)
    return main.Namer(DataParams(**data), ModelParams(), TrainParams(), args, varying=varying)


def test_namer_names(tmp_path):
    namer = namer_for(tmp_path)
    assert namer.run_name() is None
    assert namer.wandb_proj_name() == f"{main.MAIN_PROJ}-test-nlp-ptb"
    assert namer_for(tmp_path, flags=["--wandb-proj-name=mine"]).wandb_proj_name() == "mine"
    assert namer_for(tmp_path, {"n_layers": 4, "lr": 3e-4}).run_name() == "n_layers=4,lr=0.0003"
    odd = namer_for(tmp_path, {"dataset_name": "a/b c", "widths": [64, 32], "flag": True}).run_name()
    assert odd == "dataset_name=a_b_c,widths=64-32,flag=True"
    long = namer_for(tmp_path, {f"field_{i}": i for i in range(40)}).run_name()
    assert len(long) <= 120 and re.fullmatch(r"[\w.=,+\-]+", long)


def test_save_folder_format_and_stability(tmp_path):
    namer = namer_for(tmp_path, dataset_name="sort")
    folder = namer.save_folder_name()
    assert re.fullmatch(re.escape(str(tmp_path)) + r"/test-nlp/sort/default/\d{4}-\d\d-\d\d--\d\d-\d\d-\d\d(-\d+)?",
                        folder)
    assert folder.endswith(namer.timestamp) and namer.save_folder_name() == folder
    assert namer_for(tmp_path, {"lr": 0.01}).save_folder_name().split("/")[-2] == "lr=0.01"


def test_timestamps_are_unique_in_a_process_and_in_the_save_dir(tmp_path):
    namers = [namer_for(tmp_path) for _ in range(3)]  # same second: suffixes -1, -2
    assert len({n.timestamp for n in namers}) == 3
    taken = tmp_path / "other-config" / "ptb" / "default" / "2024-04-22--16-17-00"
    taken.mkdir(parents=True)
    namer = namer_for(tmp_path)
    namer.timestamp = "2024-04-22--16-17-00"  # as if another process started a run in the same second
    assert namer.save_folder_name().endswith("/test-nlp/ptb/default/2024-04-22--16-17-00-1")
    assert namer.timestamp == "2024-04-22--16-17-00-1"
    (taken.parent / "2024-04-22--16-17-00-1").mkdir()
    again = namer_for(tmp_path)
    again.timestamp = "2024-04-22--16-17-00"
    assert again.save_folder_name().endswith("/2024-04-22--16-17-00-2")


def test_an_edited_run_name_names_the_folder_safely(tmp_path, monkeypatch):
    # the README's recipe replaces run_name's return line, e.g. with f"relu-{...}"
    monkeypatch.setattr(main.Namer, "run_name", lambda self: f"relu-{self.model_params.dim} / big")
    namer = namer_for(tmp_path)
    assert namer.save_folder_name().split("/")[-2] == "relu-128___big"


def test_resume_takes_one_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main.main(["--config=sweep-example", "--dry-run", f"--resume={tmp_path}"])
    assert info.value.code == 2 and "--resume continues one run" in capsys.readouterr().err


def test_a_bad_task_is_a_clear_error_before_training_without_traceback():
    result = run_main("--config=test-synth", "--task=sortt", "--no-wandb")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown dataset_name 'sortt'. Did you mean 'sort'?" in result.stderr
    assert "Nothing was trained" in result.stderr
