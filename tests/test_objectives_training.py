"""Objectives through the whole run: training from a config field, learning what needs right context,
saving and loading, the sweep and its comparison, and the refusals (recurrent models, export)."""
from pathlib import Path

import pytest

from data.data_params import DataParams
from main import build_arg_parser, main
from model.model_params import ModelParams
from model_explorer import verify_stable_load
from pretrained import export_hf
from run_comparison import record_of_folder, table_text
from train.run import run_training
from train.run_folder import load_run
from train.runs import Namer
from train.train_params import TrainParams

ANIMALS = [("cat", "meow"), ("dog", "woof"), ("cow", "moo"), ("duck", "quack")]
FRAMES = ["i saw a {} that said {} .", "you met a {} that said {} .", "we heard a {} that said {} ."]


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory) -> Path:
    """Lines that share their beginning and differ in a middle word only their ending determines."""
    folder = tmp_path_factory.mktemp("objective-data")
    (folder / "animals").mkdir()
    lines = [frame.format(animal, sound) for frame in FRAMES for animal, sound in ANIMALS]
    (folder / "animals" / "train.txt").write_text("\n".join(lines * 30) + "\n")
    (folder / "animals" / "valid.txt").write_text("\n".join(lines) + "\n")
    return folder


def train(data_folder: Path, save_dir: Path, objective: str, steps: int, **model) -> dict:
    args = build_arg_parser().parse_args(["--no-wandb", "--save", f"--save-dir={save_dir}",
                                          f"--data-path={data_folder}"])
    return run_training(Namer(DataParams(dataset_name="animals", max_seq_len=12),
                              ModelParams(n_layers=2, dim=64, n_heads=4, objective=objective, **model),
                              TrainParams(max_steps=steps, batch_size=32, lr=3e-3, warmup_steps=10, n_print_samples=1,
                                          val_check_interval=steps, precision="32"),
                              args, config_name="objectives"))


@pytest.fixture(scope="module")
def runs(data_folder, tmp_path_factory) -> dict:
    save_dir = tmp_path_factory.mktemp("saved")
    return {"masked": train(data_folder, save_dir, "masked", 200, mask_frac=0.3),
            "fim": train(data_folder, save_dir, "fim", 400),
            "prefix": train(data_folder, save_dir, "prefix", 200)}


def test_a_masked_model_fills_the_word_only_the_ending_determines(runs):
    lm = load_run(runs["masked"]["save_folder"]).lm
    for animal, sound in ANIMALS:
        assert lm.fill_mask(f"i saw a <mask> that said {sound} .") == f"i saw a {animal} that said {sound} ."
    options = lm.fill_mask("we heard a <mask> that said moo .", top_k=2)[0]
    assert options[0][0] == "cow" and options[0][1] > options[1][1]
    ppl = lm.perplexities(["i saw a cat that said meow ."])[0]  # pseudo-perplexity
    assert 1 <= ppl < 3


def test_a_fim_model_infills_the_middle(runs):
    lm = load_run(runs["fim"]["save_folder"]).lm
    for animal, sound in ANIMALS:
        assert lm.infill("i saw a", f"that said {sound} .") == animal
    assert lm.sample("you met a dog", temperature=0) == "you met a dog that said woof ."  # still causal


def test_a_prefix_model_continues_the_right_sentence(runs):
    lm = load_run(runs["prefix"]["save_folder"]).lm
    for animal, sound in ANIMALS:
        assert lm.sample(f"you met a {animal}", temperature=0) == f"you met a {animal} that said {sound} ."
    assert lm.beam_search("we heard a duck", beam_size=2) == "we heard a duck that said quack ."


def test_saved_objective_runs_load_and_compare(runs, data_folder, capsys):
    for objective, result in runs.items():
        run = load_run(result["save_folder"])
        assert run.lm.model_params.objective == objective
        assert run.lm(run.lm.tokenizer("i saw a cat"), get_attn=True)["attns"].shape[:2] == (1, 2)
        _, cache = run.lm.run_with_cache("i saw a cat", names=["blocks.0.attn.hook_pattern"])
        assert cache["blocks.0.attn.hook_pattern"].shape[-1] == 4  # four words, no bos
        # the validation loss recomputed as training measured it (masked: its fixed masks; prefix: its fixed split)
        verify_stable_load(result["save_folder"], data_path=data_folder)
    assert load_run(runs["masked"]["save_folder"]).lm.tokenizer.mask_id is not None
    table = table_text([record_of_folder(r["save_folder"]) for r in runs.values()])
    assert "objective" in table.splitlines()[0] and "masked" in table and "fim" in table


def test_export_refuses_prefix_runs_and_masked_runs_bert_cannot_express(runs, tmp_path):
    with pytest.raises(ValueError, match="objective='prefix'"):
        export_hf(runs["prefix"]["save_folder"], tmp_path / "prefix")
    # a pre-LN masked model: BERT (the masked export family) is post-LN with an embedding norm and a head transform
    with pytest.raises(ValueError, match=r"(?s)BERT: .*norm_first=True \(BERT is post-LN\).*embedding_norm=False"):
        export_hf(runs["masked"]["save_folder"], tmp_path / "masked")
    assert (export_hf(runs["fim"]["save_folder"], tmp_path / "fim") / "config.json").is_file()


def test_recurrent_models_refuse_bidirectional_objectives_before_any_data(tmp_path):
    args = build_arg_parser().parse_args(["--no-wandb"])
    for objective in ("masked", "prefix"):
        with pytest.raises(ValueError, match=f"objective='{objective}' attends both ways.*recurrent"):
            run_training(Namer(DataParams(dataset_name="no-such-task"),  # never looked for
                               ModelParams(layer_architecture="lstm", objective=objective),
                               TrainParams(max_steps=1), args))


def test_a_config_line_sweeps_the_four_objectives(data_folder, tmp_path, capsys):
    config = tmp_path / "objective-sweep.txt"
    config.write_text('DataParams\ndataset_name="animals"\nmax_seq_len=12\n\nModelParams\nn_layers=1\ndim=32\n'
                      'objective=["causal","prefix","masked","fim"]\n\nTrainParams\nmax_steps=3\nbatch_size=16\n'
                      'n_print_samples=1\nval_check_interval=3\nprecision="32"\n')
    save_dir = tmp_path / "saved"
    main([f"--config={config}", "--no-wandb", "--save", f"--save-dir={save_dir}", f"--data-path={data_folder}"])
    main(["--compare=objective-sweep", f"--save-dir={save_dir}"])
    out = capsys.readouterr().out
    table = out[out.rindex("timestamp"):]
    assert all(name in table for name in ("causal", "prefix", "masked", "fim"))
    assert "filled" in out and "infilled" in out  # each objective's printed samples
