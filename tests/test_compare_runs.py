"""Comparing a sweep's runs: model_explorer.compare_runs on a 4-run sweep saved by main.py (rows,
exactly the swept columns, losses equal to final.json, a plot with one labelled line per run),
seed aggregation on a 3-seed sweep, the table without pandas, `main.py --compare`, the table a
sweep ends with, and the wandb group and tags of a sweep's runs."""
import json
import statistics
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any, Dict, List

import pytest

import model_explorer
from train import figures
import run_comparison
from main import main as main_cli
from model_explorer import compare_runs, list_runs

TINY = ["max_train_samples=48", "max_eval_samples=16", "DataParams.max_seq_len=16", "dim=16", "n_heads=2",
        "batch_size=16", "warmup_steps=1", "n_print_samples=0", "epochs=1", "val_check_interval=1",
        "limit_val_batches=1"]


def train(save_dir: Path, config: str, *settings: str) -> List[Dict[str, Any]]:
    sets = [arg for setting in [*TINY, *settings] for arg in ("--set", setting)]
    return main_cli([f"--config={config}", "--no-wandb", "--save", f"--save-dir={save_dir}", *sets])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """configs/sweep-example.txt (n_layers=[1, 2] x lr=[1e-3, 3e-3] on PTB), shrunk to a few steps,
    plus 3 seeds x 2 learning rates of test-synth (sort), under one save root."""
    save_dir = tmp_path_factory.mktemp("saved-models")
    out = StringIO()
    with redirect_stdout(out):
        results = train(save_dir, "sweep-example")
    seeds = train(save_dir, "test-synth", "seed=[0,1,2]", "lr=[1e-3,3e-3]", "n_train_samples=48",
                  "n_eval_samples=16", "long_len=0", "max_len=4")
    return {"save_dir": save_dir, "results": results, "printed": out.getvalue(), "seeds": seeds}


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(model_explorer, "METRICS_DIR", tmp_path / "metrics")  # compare_runs in Jupyter
    monkeypatch.setattr(figures, "METRICS_DIR", tmp_path / "metrics")  # main.py --compare
    return tmp_path / "metrics"


def finals(save_dir: Path, config: str) -> Dict[str, Dict[str, Any]]:
    return {f.parent.name: json.loads(f.read_text()) for f in save_dir.glob(f"{config}/*/*/*/final.json")}


def test_compare_runs_of_a_sweep(sweep, metrics_dir):
    table = compare_runs("sweep-example", save_dir=sweep["save_dir"], filename="sweep")
    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    assert len(rows) == 4
    swept = [c for c in rows[0] if c not in ("timestamp", "val_loss", "val_ppl", "test_loss", "test_ppl",
                                             "tokens_per_s", "wall_s")]
    assert swept == ["n_layers", "lr"]
    assert [(r["n_layers"], r["lr"]) for r in rows] == [(1, 1e-3), (1, 3e-3), (2, 1e-3), (2, 3e-3)]
    saved = finals(sweep["save_dir"], "sweep-example")
    for row in rows:
        final = saved[row["timestamp"]]
        assert row["val_loss"] == final["val_loss"] and row["test_loss"] == final["test_loss"]
        assert row["val_ppl"] == pytest.approx(2.718281828 ** final["val_loss"])
        assert row["wall_s"] == final["elapsed_s"] and row["tokens_per_s"] == final["tokens_per_s"] > 0
    png = metrics_dir / "sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = run_comparison.plot_comparison([run_comparison.record_of_folder(Path(r["folder"])) for r in
                                          list_runs(sweep["save_dir"], show=False) if r["config"] == "sweep-example"],
                                         show=False)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["n_layers=1 lr=0.001", "n_layers=1 lr=0.003", "n_layers=2 lr=0.001", "n_layers=2 lr=0.003"]


def test_selectors_pick_the_same_runs(sweep, metrics_dir):
    save_dir = sweep["save_dir"]
    rows = list_runs(save_dir, show=False)
    sweep_rows = [r for r in rows if r["config"] == "sweep-example"]
    stamps = [r["timestamp"] for r in sweep_rows]
    for selector in (("sweep-example", "ptb"), "sweep-example/ptb", stamps, sweep_rows,
                     [r["folder"] for r in sweep_rows]):
        assert [f.name for f in run_comparison.select_run_folders(selector, save_dir)] == stamps
    assert len(run_comparison.select_run_folders("test", save_dir)) == 6  # "test" takes test-synth, as --config does
    with pytest.raises(FileNotFoundError, match="Did you mean sweep-example"):
        compare_runs("sweep-exampel", save_dir=save_dir)
    with pytest.raises(FileNotFoundError, match="its tasks: ptb"):
        compare_runs(("sweep-example", "sort"), save_dir=save_dir)


def test_seed_aggregation(sweep, metrics_dir):
    table = compare_runs("test-synth", save_dir=sweep["save_dir"], aggregate_seeds=True, filename="seeds")
    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    assert [r["lr"] for r in rows] == [1e-3, 3e-3] and all(r["n_seeds"] == 3 for r in rows)
    assert "seed" not in rows[0] and rows[0]["seeds"] == "0,1,2"
    by_lr: Dict[float, List[Dict[str, Any]]] = {}
    for folder in sweep["save_dir"].glob("test-synth/*/*/*"):
        params = json.loads((folder / "params.json").read_text())
        by_lr.setdefault(params["train_params"]["lr"], []).append(json.loads((folder / "final.json").read_text()))
    for row in rows:
        losses = [f["val_loss"] for f in by_lr[row["lr"]]]
        assert len(losses) == 3
        assert row["val_loss"] == pytest.approx(statistics.mean(losses), rel=1e-12)
        assert row["val_loss_std"] == pytest.approx(statistics.stdev(losses), rel=1e-9)
    records = [run_comparison.record_of_folder(f) for f in run_comparison.select_run_folders("test-synth", sweep["save_dir"])]
    fig = run_comparison.plot_comparison(records, aggregate_seeds=True, show=False)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["lr=0.001 (n=3)", "lr=0.003 (n=3)"]
    assert len(ax.collections) == 2  # one shaded band per setting
    xs, mean, std = run_comparison.seed_band([[(0, 1, 0, 1.0), (0, 2, 1, 2.0)], [(0, 1, 0, 3.0), (0, 2, 1, 4.0)],
                                              [(0, 2, 0, 9.0)]], column=1)
    assert xs == [2] and mean == [5.0] and std == [pytest.approx(statistics.stdev([2.0, 4.0, 9.0]))]
    assert (metrics_dir / "seeds.png").stat().st_size > 1000


def test_table_without_pandas_prints_aligned(sweep, metrics_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    table = compare_runs("sweep-example", save_dir=sweep["save_dir"], show=False)
    assert isinstance(table, list) and len(table) == 4 and isinstance(table[0], dict)
    lines = repr(table).splitlines()
    assert lines[0].split() == ["timestamp", "n_layers", "lr", "val_loss", "val_ppl", "test_loss", "test_ppl",
                                "tokens_per_s", "wall_s"]
    assert len({line.index(" 0.00") for line in lines[1:]}) == 1  # the lr column is aligned
    assert f"{table[0]['val_loss']:.4f}" in lines[1]
    aggregated = compare_runs("test-synth", save_dir=sweep["save_dir"], aggregate_seeds=True, show=False)
    assert " ± " in str(aggregated) and "val_loss_std" not in str(aggregated).splitlines()[0]


def test_sweep_ends_with_the_table_of_its_runs(sweep):
    printed = sweep["printed"]
    table = printed[printed.index("=== comparison of the 4 run(s)"):]
    lines = table.splitlines()
    assert lines[1].split()[:3] == ["timestamp", "n_layers", "lr"] and len(lines) == 7
    best = min(sweep["results"], key=lambda r: r["val_loss"])
    assert lines[-1].startswith(f"best val_loss: {best['val_loss']:.4f} (n_layers=")


def test_compare_command(sweep, metrics_dir, capsys):
    rows = main_cli(["--compare", "sweep-example", "--task", "ptb", f"--save-dir={sweep['save_dir']}"])
    out = capsys.readouterr().out
    assert len(rows) == 4 and "best val_loss" in out and "n_layers" in out
    assert (metrics_dir / "compare-sweep-example-ptb.png").stat().st_size > 1000
    with pytest.raises(SystemExit) as exit_info:
        main_cli(["--compare", "no-such-config", f"--save-dir={sweep['save_dir']}"])
    assert exit_info.value.code == 2
    assert "no saved runs of config 'no-such-config'" in capsys.readouterr().err


def test_wandb_group_and_tags_of_a_sweep(monkeypatch, tmp_path):
    import lightning.pytorch.loggers as loggers
    from main import build_arg_parser
    from train.runs import Namer
    from data.data_params import DataParams
    from model.model_params import ModelParams
    from train.run import sweep_group_and_tags
    from train.train_params import TrainParams
    from train.wandb_setup import wandb_logger

    args = build_arg_parser().parse_args(["--config=sweep-example"])
    namer = Namer(DataParams(), ModelParams(n_layers=2), TrainParams(lr=3e-3), args,
                  varying={"n_layers": 2, "lr": 3e-3}, config_name="sweep-example")
    assert sweep_group_and_tags(namer) == {"group": "sweep-example", "tags": ["n_layers=2", "lr=0.003"]}
    seen = {}

    class FakeWandbLogger:
        def __init__(self, **kwargs: Any) -> None:
            seen.update(kwargs)
            self.experiment = type("Run", (), {"dir": str(tmp_path / "run" / "files")})()

    monkeypatch.setattr(loggers, "WandbLogger", FakeWandbLogger)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    wandb_logger("proj", "n_layers=2,lr=0.003", {}, **sweep_group_and_tags(namer))
    assert seen["group"] == "sweep-example" and seen["tags"] == ["n_layers=2", "lr=0.003"]


def test_table_is_a_dataframe_when_pandas_is_installed(sweep, metrics_dir):
    pandas = pytest.importorskip("pandas")
    table = compare_runs("sweep-example", save_dir=sweep["save_dir"], show=False)
    assert isinstance(table, pandas.DataFrame) and len(table) == 4
    assert list(table.columns[:3]) == ["timestamp", "n_layers", "lr"]
    assert table.loc[table["val_loss"].idxmin(), "val_loss"] == min(r["val_loss"] for r in sweep["results"])
