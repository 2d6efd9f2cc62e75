"""model_explorer figures: attention plots carry a colour bar and a title naming the model, layer and
head; in Jupyter a figure is displayed at once (and closed), headless it is only saved, with no
warning about plt.show()."""
import warnings

import matplotlib
import pytest

import model_explorer
from train import figures
from model_explorer import attention_figure, model_label, plot_metrics, show_lm_attns
from model_helpers import char_tokenizer, make_lm

STATS = {"stat/val_loss:main": [(1, 16, 0, 2.0), (2, 32, 1, 1.5)]}


@pytest.fixture
def lm():
    return make_lm(char_tokenizer(), layer_architecture="custom-transformer").eval()


def test_attention_plots_have_a_colour_bar_and_titles(lm, tmp_path, monkeypatch):
    monkeypatch.setattr(model_explorer, "ATTENTIONS_DIR", tmp_path)
    assert model_label(lm) == "custom-transformer 2x16"
    lm.name = "test-nlp/ptb 2024-04-22--16-17-00"
    out = lm("the fox", get_attn=True)["attns"][0].detach()
    grid = attention_figure(out, list("the fox"), layers=[0, 1], heads=[1], model_name=model_label(lm))
    colour_bars = [ax for ax in grid.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == 1 and len(grid.axes) == 3
    assert grid.get_suptitle() == "test-nlp/ptb 2024-04-22--16-17-00: attention"
    assert [ax.get_title() for ax in grid.axes[:2]] == ["layer 0 head 1", "layer 1 head 1"]
    one = attention_figure(out, list("the fox"), layers=[1], heads=[0], model_name="GPT-2")
    assert one.axes[0].get_title() == "GPT-2\nlayer 1 head 0" and one.axes[1].get_label() == "<colorbar>"
    show_lm_attns(lm, "the fox", layers=[1], folder_name="fox")
    assert sorted(p.name for p in (tmp_path / "fox").iterdir()) == ["grid.png", "layer1-head0.png", "layer1-head1.png"]


def test_headless_figures_are_saved_without_warnings(tmp_path, monkeypatch):
    monkeypatch.setattr(model_explorer, "METRICS_DIR", tmp_path)
    assert matplotlib.get_backend().lower() == "agg"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (plt.show() on a non-interactive backend) fails
        fig = plot_metrics(STATS, "val_loss:main", filename="headless", show=True)
    assert (tmp_path / "headless.png").read_bytes()[:4] == b"\x89PNG"
    import matplotlib.pyplot as plt
    assert fig.number not in plt.get_fignums()  # closed: figures never pile up


def test_in_jupyter_figures_are_displayed_at_once_and_still_saved(tmp_path, monkeypatch):
    import IPython.display
    shown = []
    monkeypatch.setattr(model_explorer, "METRICS_DIR", tmp_path)
    monkeypatch.setattr(figures, "in_jupyter", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda fig: shown.append(fig))
    fig = plot_metrics(STATS, "val_loss:main", filename="inline")
    assert shown == [fig] and (tmp_path / "inline.png").is_file()
    plot_metrics(STATS, "val_loss:main", show=False)
    assert shown == [fig]  # show=False: saved (if asked) and closed, never displayed


def test_in_jupyter_is_false_outside_a_kernel():
    assert figures.in_jupyter() is False
