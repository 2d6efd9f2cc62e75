"""Without a terminal (logs, nohup, CI) training prints a plain progress line every ~10 s instead of a bar."""
from pathlib import Path

import pytest

from train.callbacks import LineProgress, RichBar, TQDMBar, progress_bar
from train.run import run_training


def test_progress_bar_is_a_line_without_a_terminal_and_a_bar_with_one() -> None:
    assert isinstance(progress_bar(interactive=False), LineProgress)
    assert isinstance(progress_bar(interactive=True), (RichBar, TQDMBar))


def test_training_without_a_terminal_prints_step_loss_speed_and_eta(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_train import SORT_TRAIN, make_namer, sort_task

    monkeypatch.setattr(LineProgress, "default_every_s", 0.0)  # a line after every step
    run_training(make_namer(tmp_path, sort_task(), {**SORT_TRAIN, "epochs": 1}))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) >= 8, lines
    assert lines[0].startswith("step 1/10 (epoch 0)") and "ETA" in lines[0]
    assert all(float(line.split(" tokens/s")[0].split("| ")[-1].replace(",", "")) > 0 for line in lines)
    assert "| loss " in lines[-1]  # the loss shows once the first hyperparams_log_freq batches are done
