"""Run README.md's examples as written, so a README that drifts from the code fails CI.

Shell examples (`python3 main.py ...`) run with a few `--set` overrides that shrink training to
a few steps, in a temporary save dir. The Python examples run in order as one script, with two
substitutions a test needs: the example timestamp becomes the run the `--save` example just
saved, `get_gpt2()` and `get_pretrained("hub name")` (hub downloads) load small random checkpoints
saved to temp folders, and `../exported/` becomes a temp folder.
Recipes (the Customising section) are tested in test_recipes.py.
"""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from readme_blocks import README, python_examples, shell_commands

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_TIMESTAMP = "2024-04-22--16-17-00"
# a few steps on a slice of the data, whatever the config
TINY_RUN = ["--set", "TrainParams.max_steps=4", "--set", "max_train_samples=128", "--set", "max_eval_samples=32",
            "--set", "n_train_samples=256", "--set", "n_eval_samples=32"]


def run_readme_command(command: str, env: dict) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    assert args[:2] == ["python3", "main.py"], command
    if not {"--dry-run", "--list-params", "--compare"} & set(args):
        args += TINY_RUN
    return subprocess.run([sys.executable, "main.py", *args[2:]], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    out = dict(os.environ)
    out["LM_SAVE_DIR"] = str(tmp_path_factory.mktemp("saved-models"))
    out["LM_METRICS_DIR"] = str(tmp_path_factory.mktemp("metrics"))  # where --compare saves its plot
    out["PYTHONPATH"] = str(REPO)
    return out


@pytest.fixture(scope="module")
def saved_timestamp(env):
    """Run the README's --save examples in order; return the timestamp of the run the first one saved
    (the later ones, a sweep, are there for the comparison examples)."""
    stamps = []
    for command in [c for c in shell_commands() if "--save" in shlex.split(c)]:
        before = set(Path(env["LM_SAVE_DIR"]).glob("*/*/*/*/final.json"))
        result = run_readme_command(command, env)
        assert result.returncode == 0, result.stderr[-3000:]
        new = set(Path(env["LM_SAVE_DIR"]).glob("*/*/*/*/final.json")) - before
        assert new, f"{command} saved no run"
        stamps.append(sorted(new)[0].parent.name)
    assert stamps, "README has no --save example"
    return stamps[0]


def test_readme_has_examples():
    commands = shell_commands()
    assert "python3 main.py --config=first-run --no-wandb" in commands
    assert any("--save" in c for c in commands) and any("--dry-run" in c for c in commands)
    assert len(python_examples()) >= 4
    assert EXAMPLE_TIMESTAMP in README.read_text()


@pytest.mark.parametrize("command", [c for c in shell_commands() if "--save" not in shlex.split(c)])
def test_shell_example(command, env, request):
    if "--compare" in shlex.split(command):
        request.getfixturevalue("saved_timestamp")  # the runs it compares
    result = run_readme_command(command, env)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    if "--dry-run" in command:
        assert result.stdout.startswith("[1/"), result.stdout
    elif "--list-params" in command:
        assert "DataParams" in result.stdout and "TrainParams" in result.stdout
    elif "--parallel" in command:  # each run's output is in its log; the terminal has a line per run
        assert "=== summary" in result.stdout and " FAILED" not in result.stdout, result.stdout[-2000:]
        assert result.stdout.count("] done in ") == result.stdout.count("] started"), result.stdout[-2000:]
    elif "--compare" in command:
        assert "best val_loss" in result.stdout and "plot: " in result.stdout, result.stdout
    else:  # a training: it reports validation losses and prints samples
        assert "val main: loss" in result.stdout and "greedy" in result.stdout, result.stdout[-2000:]


@pytest.fixture(scope="module")
def small_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel
    import torch
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2-small-random")
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=128)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pretrained_checkpoints(tmp_path_factory, small_gpt2):
    """The hub names README's get_pretrained examples load -> small random checkpoints of their family
    (tests/pretrained_helpers.py), each with its tokenizer."""
    from encoder_helpers import make_encoders
    from pretrained_helpers import CHECKPOINTS, make_checkpoint, save_tokenizer
    folder = tmp_path_factory.mktemp("gpt2-with-tokenizer")
    for f in small_gpt2.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    save_tokenizer(folder)
    checkpoints = {"gpt2": folder}
    for hub_name, family in (("EleutherAI/pythia-70m", "pythia"), ("HuggingFaceTB/SmolLM-135M", "smollm")):
        checkpoints[hub_name] = make_checkpoint(tmp_path_factory.mktemp(family), *CHECKPOINTS[family][:2])
    # the hub's bert-base-uncased is a BertForPreTraining checkpoint (pooler, next-sentence head)
    checkpoints["bert-base-uncased"] = make_encoders(tmp_path_factory.mktemp("encoders"))["bert-pretraining"]
    return checkpoints


def test_python_examples(env, saved_timestamp, small_gpt2, pretrained_checkpoints, tmp_path):
    tokenizer_folder = Path(os.environ["LM_DATA_PATH"]) / "gpt2-tokenizer"
    script = "\n\n".join(block.code for block in python_examples())
    assert "get_gpt2()" in script
    script = script.replace(EXAMPLE_TIMESTAMP, saved_timestamp)
    script = script.replace("get_gpt2()", f"get_gpt2({str(small_gpt2)!r}, tokenizer_path={str(tokenizer_folder)!r})")
    for hub_name, folder in pretrained_checkpoints.items():  # hub downloads -> small random local checkpoints
        script = script.replace(f'get_pretrained("{hub_name}")', f"get_pretrained({str(folder)!r})")
    script = script.replace("../exported/", f"{tmp_path}/exported/")
    prelude = ("import model_explorer, pathlib\n"
               f"model_explorer.METRICS_DIR = pathlib.Path({str(tmp_path / 'metrics')!r})\n"
               f"model_explorer.ATTENTIONS_DIR = pathlib.Path({str(tmp_path / 'attentions')!r})\n")
    (tmp_path / "readme_examples.py").write_text(prelude + script)
    result = subprocess.run([sys.executable, str(tmp_path / "readme_examples.py")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert (tmp_path / "metrics" / "first-run.png").stat().st_size > 0
    assert any((tmp_path / "attentions" / "first-run").glob("*.png"))
    assert any((tmp_path / "attentions" / "pythia").glob("*.png"))
    assert any((tmp_path / "attentions" / "bert").glob("*.png")) and any((tmp_path / "attentions" / "ptb-bert").glob("*.png"))
