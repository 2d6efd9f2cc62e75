"""Encoders through get_pretrained (BERT, RoBERTa, DistilBERT): parity with transformers' masked LMs on
tiny random checkpoints (logits on padded batches, attention, embeddings, fill_mask and the fill-mask
pipeline, pseudo-perplexity), hooks and attention plots on them, refusals, and the export of masked
runs as BertForMaskedLM."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, pipeline

from data.tokenizer import OBJECTIVE_TOKENS, Tokenizer
from encoder_helpers import DIM, N_HEADS, N_LAYERS, TEXTS, make_encoders, ptb_lines, randomize
from hf_families.family import UnsupportedConfig
from model.lm import LM
from model.model_params import ModelParams
from model_explorer import evaluate, show_lm_attns
from pretrained import export_hf, get_pretrained
from train.run_folder import load_run

ENCODERS = ("bert", "roberta", "distilbert")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_encoders(tmp_path_factory.mktemp("encoders"))


def reference(folder):
    return AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()


def masked_text(tokenizer, text: str, *words: int) -> str:
    """text with its words at the given indices replaced by the tokenizer's mask token."""
    split = text.split()
    for i in words:
        split[i] = tokenizer.mask_token
    return " ".join(split)


@pytest.mark.parametrize("name", ENCODERS + ("bert-pretraining",))
def test_logits_on_padded_batches_equal_transformers(folders, name):
    lm, hf, tokenizer = get_pretrained(folders[name]), reference(folders[name]), AutoTokenizer.from_pretrained(folders[name])
    mp = lm.model_params
    assert (mp.objective, mp.layer_architecture, mp.norm_first, mp.final_norm) == ("masked", "custom-transformer", False, False)
    assert mp.embedding_norm and mp.head_transform and mp.output_bias and mp.activation == "gelu"
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    real = batch["attention_mask"].bool()
    assert not real.all(), "the batch is padded"
    with torch.no_grad():
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ours = lm(batch["input_ids"], attention_mask=batch["attention_mask"])
        torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=0)
        ids = tokenizer(TEXTS[0])["input_ids"]  # one text, as the checkpoint frames it: read as given
        torch.testing.assert_close(lm(ids), hf(torch.tensor([ids])).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ENCODERS)
def test_attention_embeddings_and_hooks_equal_transformers(folders, name, tmp_path, monkeypatch):
    lm, hf, tokenizer = get_pretrained(folders[name]), reference(folders[name]), AutoTokenizer.from_pretrained(folders[name])
    ids = tokenizer(TEXTS[2], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = hf(ids, output_attentions=True, output_hidden_states=True)
        ours = lm(ids, get_attn=True, get_embeddings=True)
    torch.testing.assert_close(ours["attns"], torch.stack(ref.attentions, dim=1), atol=1e-5, rtol=0)
    # post-LN, no final norm: every entry, the last included, is transformers' hidden state
    assert ours["embeddings"].shape[1] == len(ref.hidden_states) == N_LAYERS + 1
    for i, hidden in enumerate(ref.hidden_states):
        torch.testing.assert_close(ours["embeddings"][:, i], hidden, atol=1e-4, rtol=0)
    logits, cache = lm.run_with_cache(ids, names=["blocks.1.attn.hook_pattern", "blocks.0.hook_resid_post"])
    torch.testing.assert_close(cache["blocks.1.attn.hook_pattern"], ref.attentions[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], ref.hidden_states[1], atol=1e-4, rtol=0)
    # a hook on the pattern acts on this model as on ours: zeroing block 0's attention changes the logits
    edited = lm.run_with_hooks(ids, {"blocks.0.attn.hook_pattern": lambda t, name: t * 0})
    assert not torch.allclose(edited, logits)
    monkeypatch.setattr("model_explorer.ATTENTIONS_DIR", tmp_path)
    _, attns = show_lm_attns(lm, ids, layers=[1], heads=[0, 3], folder_name=name, show=False)
    assert attns.shape == (1, N_LAYERS, N_HEADS, ids.shape[1], ids.shape[1])
    assert (tmp_path / name / "layer1-head3.png").is_file()


@pytest.mark.parametrize("name", ENCODERS)
def test_fill_mask_equals_the_argmax_and_the_fill_mask_pipeline(folders, name):
    lm, hf, tokenizer = get_pretrained(folders[name]), reference(folders[name]), AutoTokenizer.from_pretrained(folders[name])
    assert lm.tokenizer.mask_token == tokenizer.mask_token and lm.tokenizer.mask_id == tokenizer.mask_token_id
    assert (lm.tokenizer.bos_id, lm.tokenizer.eos_id) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
    one, two = masked_text(tokenizer, TEXTS[0], 2), masked_text(tokenizer, TEXTS[2], 1, 4)
    for text in (one, two):
        framed = tokenizer(text, return_tensors="pt")["input_ids"]  # what transformers feeds: [CLS] text [SEP]
        with torch.no_grad():
            best = hf(framed).logits[0].argmax(dim=-1)
        at = framed[0] == tokenizer.mask_token_id
        filled = lm.fill_mask(text, as_str=False)
        assert filled == torch.where(at, best, framed[0])[1:-1].tolist()
        assert lm.fill_mask(text) == lm.tokenizer.decode(filled)
    fill = pipeline("fill-mask", model=hf, tokenizer=tokenizer)
    for text, n_masks in ((one, 1), (two, 2)):
        ours = lm.fill_mask(text, top_k=4, as_str=False)
        theirs = fill(text, top_k=4)
        theirs = [theirs] if n_masks == 1 else theirs
        assert len(ours) == len(theirs) == n_masks
        for our_options, their_options in zip(ours, theirs):
            assert [t for t, _ in our_options] == [o["token"] for o in their_options]
            torch.testing.assert_close(torch.tensor([p for _, p in our_options]),
                                       torch.tensor([o["score"] for o in their_options]), atol=1e-4, rtol=0)
    assert lm.fill_mask([one, two]) == [lm.fill_mask(one), lm.fill_mask(two)]  # a padded batch: the same


def pseudo_perplexity(hf, tokenizer, texts) -> float:
    """Salazar et al.: each token of [CLS] text [SEP] but the framing, masked alone and scored; exp of the mean."""
    losses = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        for position in range(1, len(ids) - 1):
            masked = ids.clone()
            masked[position] = tokenizer.mask_token_id
            with torch.no_grad():
                logits = hf(masked[None]).logits[0, position]
            losses.append(F.cross_entropy(logits, ids[position]).item())
    return float(torch.tensor(losses).mean().exp())


@pytest.mark.parametrize("name", ENCODERS)
def test_pseudo_perplexity_equals_a_loop_over_transformers(folders, name):
    lm, hf, tokenizer = get_pretrained(folders[name]), reference(folders[name]), AutoTokenizer.from_pretrained(folders[name])
    mean, _, _, n_tokens, per_token = lm.perplexities(TEXTS, per_token=True)
    assert n_tokens == sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS)  # no framing scored
    assert mean == pytest.approx(pseudo_perplexity(hf, tokenizer, TEXTS), rel=1e-4)


def test_encoder_options_our_layer_does_not_compute_are_refused(tmp_path, folders):
    folder = tmp_path / "relative"
    BertConfig(vocab_size=1000, hidden_size=DIM, num_hidden_layers=1, num_attention_heads=N_HEADS,
               position_embedding_type="relative_key", hidden_act="silu").save_pretrained(folder)
    with pytest.raises(UnsupportedConfig, match=r"position_embedding_type='relative_key'.*hidden_act='silu'"):
        get_pretrained(folder)
    lm = get_pretrained(folders["bert"])
    with pytest.raises(ValueError, match="fill_mask"):
        lm.sample("the company")
    with pytest.raises(ValueError, match="masked LM.*pseudo-perplexity"):
        evaluate(lm, "ptb_next_word", limit=2)
    with pytest.raises(ValueError, match="fill_mask got an empty list"):
        lm.fill_mask([])
    x = torch.tensor([[2, 5, 3]])
    with pytest.raises(ValueError, match=r"logits_at positions must be in \[0, 2\]"):
        lm(x, logits_at=torch.tensor([7]))
    with pytest.raises(ValueError, match="logits_at needs integer positions, one per row"):
        lm(x, logits_at=torch.tensor([0, 1]))
    torch.testing.assert_close(lm(x, logits_at=torch.tensor([[0, 2]])), lm(x)[:, [0, 2]])


def bert_shaped_masked_lm(seed: int = 0) -> LM:
    """A masked LM BERT expresses, with a tokenizer trained here (word-level, <mask> added) and random weights."""
    tokenizer = Tokenizer.train("word", ptb_lines(2000), vocab_size=500, extra_tokens=OBJECTIVE_TOKENS["masked"])
    mp = ModelParams(n_layers=2, n_heads=4, dim=32, max_seq_len=40, objective="masked", norm_first=False,
                     final_norm=False, embedding_norm=True, head_transform=True, output_bias=True)
    return randomize(LM(mp, tokenizer), seed=seed)


def test_a_masked_lm_exports_as_bert_and_comes_back_equal(tmp_path):
    lm = bert_shaped_masked_lm()
    out = export_hf(lm, tmp_path / "bert-out")
    hf, tokenizer = AutoModelForMaskedLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == "BertForMaskedLM"
    text = "the company said it <mask> to report"
    ids = lm.tokenizer(text)
    assert tokenizer(text)["input_ids"] == [lm.tokenizer.bos_id] + ids  # framed as fill_mask reads: bos + text
    x = torch.tensor([[lm.tokenizer.bos_id] + ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, lm(x), atol=1e-5, rtol=0)
        back = get_pretrained(out)
        torch.testing.assert_close(back(x), lm(x), atol=1e-5, rtol=0)
    assert back.fill_mask(text) == lm.fill_mask(text)
    ours, theirs = lm.fill_mask(text, top_k=3, as_str=False)[0], pipeline("fill-mask", model=hf, tokenizer=tokenizer)(text, top_k=3)
    assert [t for t, _ in ours] == [o["token"] for o in theirs]
    torch.testing.assert_close(torch.tensor([p for _, p in ours]), torch.tensor([o["score"] for o in theirs]),
                               atol=1e-4, rtol=0)


def test_masked_runs_bert_cannot_express_are_refused_naming_the_fields(tmp_path):
    lm = bert_shaped_masked_lm()
    for change, named in ((dict(norm_first=True), "norm_first=True (BERT is post-LN)"),
                          (dict(positional_encoding="rope"), "positional_encoding='rope'"),
                          (dict(head_transform=False, output_bias=False), "head_transform=False")):
        other = LM(dataclasses.replace(lm.model_params, **change), lm.tokenizer)
        with pytest.raises(ValueError, match=r"(?s)BERT: .*" + named.replace("(", r"\(").replace(")", r"\)")):
            export_hf(other, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_the_ptb_bert_config_trains_and_exports_through_the_command_line(tmp_path, capsys):
    from main import main
    results = main(["--config=ptb-bert", "--no-wandb", "--save", f"--save-dir={tmp_path / 'saved'}",
                    "--set", "max_steps=3", "--set", "max_train_samples=96", "--set", "max_eval_samples=32"])
    run = results[0]["save_folder"]
    main(["--export-hf", str(run), str(tmp_path / "exported")])
    assert "(BertForMaskedLM): load it with transformers.AutoModelForMaskedLM" in capsys.readouterr().out
    lm = load_run(run).lm
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "exported").eval()
    assert type(hf).__name__ == "BertForMaskedLM" and lm.model_params.objective == "masked"
    x = torch.tensor([[lm.tokenizer.bos_id] + lm.tokenizer("the company said it <mask> to report")])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, lm(x), atol=1e-5, rtol=0)
    assert get_pretrained(tmp_path / "exported").fill_mask("the <mask> said") == lm.fill_mask("the <mask> said")
    # lm-eval cannot score a masked model: the command line says so, no traceback (exit 2)
    with pytest.raises(SystemExit) as stop:
        main(["--eval", str(run), "--tasks", "ptb_next_word", "--limit", "2"])
    assert stop.value.code == 2 and "masked LM" in capsys.readouterr().err


def test_bert_options_compute_the_same_on_pytorchs_layer():
    lm = bert_shaped_masked_lm().eval()
    torch_layer = lm.with_layer_architecture("torch-transformer").eval()
    x = torch.tensor([[lm.tokenizer.bos_id] + lm.tokenizer("the company said it <mask> to report a loss")])
    with torch.no_grad():
        torch.testing.assert_close(torch_layer(x), lm(x), atol=1e-5, rtol=0)
    assert torch_layer.fill_mask("the <mask> said") == lm.fill_mask("the <mask> said")


def test_a_bert_shaped_masked_run_resumes_to_the_same_weights_and_verifies(tmp_path):
    import model_explorer
    from data.data_params import DataParams
    from main import build_arg_parser
    from train.run import run_training
    from train.runs import Namer
    from train.train_params import TrainParams

    def namer(max_steps: int, flags=()) -> Namer:
        args = build_arg_parser().parse_args(["--no-wandb", "--save", f"--save-dir={tmp_path / 'saved'}", *flags])
        bert = {k: v for k, v in dataclasses.asdict(bert_shaped_masked_lm().model_params).items()
                if k in ("objective", "norm_first", "final_norm", "embedding_norm", "head_transform", "output_bias")}
        return Namer(DataParams(dataset_name="sort", n_train_samples=64, n_eval_samples=16, min_len=2, max_len=4,
                                long_len=6, max_seq_len=16),
                     ModelParams(n_layers=1, dim=16, n_heads=4, **bert),
                     TrainParams(epochs=3, batch_size=16, lr=1e-2, warmup_steps=2, lr_schedule="constant",
                                 max_steps=max_steps, n_print_samples=1, precision="32"),
                     args, config_name="test-bert")

    reference = run_training(namer(6))
    short = run_training(namer(3))
    resumed = run_training(namer(6, [f"--resume={short['save_folder']}"]))
    expected = load_run(reference["save_folder"]).lm.state_dict()
    got = load_run(resumed["save_folder"]).lm.state_dict()
    assert "head_transform.dense.weight" in expected and "out_proj.bias" in expected
    assert all(torch.equal(got[name], tensor) for name, tensor in expected.items())
    assert resumed["train_stats"]["stat/val_loss:main"] == reference["train_stats"]["stat/val_loss:main"]
    model_explorer.verify_stable_load(reference["save_folder"])
