"""explore.ipynb runs top to bottom (nbclient, a kernel on this Python, no network) on a tiny
2-run sweep trained first, so a notebook that drifts from the code fails CI. Its figures show inline
(PNG outputs) with no warning about plt.show(), and the committed file has its outputs stripped."""
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from main import main as main_cli

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "explore.ipynb"
TINY_SWEEP = ["n_layers=[1,2]", "max_train_samples=64", "max_eval_samples=16", "DataParams.max_seq_len=16",
              "dim=16", "n_heads=2", "batch_size=16", "warmup_steps=1", "n_print_samples=0", "epochs=1"]


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    save_dir = tmp_path / "saved-models"
    main_cli(["--config=test-nlp", "--task=ptb", "--no-wandb", "--save", f"--save-dir={save_dir}",
              *[arg for setting in TINY_SWEEP for arg in ("--set", setting)]])
    # the kernel is this Python (the venv's), whatever other "python3" kernels are installed
    kernels = tmp_path / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (this environment)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    env = {**os.environ, "LM_SAVE_DIR": str(save_dir), "LM_METRICS_DIR": str(tmp_path / "metrics"),
           "PYTHONPATH": str(REPO)}
    env.pop("MPLBACKEND", None)  # the kernel picks its inline backend, as in Jupyter

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute(env=env)

    outputs = [(cell.source, output) for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(o.get("text", "") for _, o in outputs if o.output_type == "stream")
    assert text.strip().splitlines()[-1] == sys.executable
    assert "newest run:" in text and "ok: recomputed val:main loss" in text and "best val_loss" not in text
    stderr = "".join(o.get("text", "") for _, o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "plt.show" not in stderr and "non-interactive" not in stderr, stderr
    images = [source for source, o in outputs if "image/png" in o.get("data", {})]
    assert sum("show_lm_attns" in source for source in images) >= 2  # our model's heads, then GPT-2's
    assert any("plot_metrics" in source for source in images) and any("compare_runs" in source for source in images)
    table = next(o for source, o in outputs if source.startswith("table = compare_runs") and o.output_type == "execute_result")
    assert "n_layers" in table["data"]["text/plain"]
    assert not (tmp_path / "metrics").exists()  # inline only: nothing saved without filename=
