"""The README's customising recipes, applied exactly as written and shown to work.

For each recipe: copy the repository to a temp folder, apply the recipe's edit blocks with
readme_blocks.apply_recipe (find the quoted lines, replace them or insert after them), then run a
short check script in that copy, in a fresh Python (the same interpreter), that uses the model or
trains briefly with the recipe's flag on and off and checks that the edit does what the README says
(outputs change in the stated way, frozen blocks stay put, corrupted inputs but clean targets, ...).
Outputs that must equal the unedited code's are compared here, against the original repository.

The check scripts run concurrently (two at a time) so that the torch / lightning imports of one
overlap with the work of another; each test waits for its own script.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import readme_blocks  # noqa: E402  (the README parser next to this file)

REPO = Path(__file__).resolve().parents[1]
# gitignored things and caches: not part of the code a recipe edits
IGNORED = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", ".pytest_cache", "wandb", "lightning_logs",
                                 "saved-models", "metrics", "attentions", ".cache", "*.ckpt", "*.safetensors")
SCRIPT_TIMEOUT_S = 300
TOKENIZER_FILE = "recipe_tokenizer.json"  # written into each copy: the same vocabulary here and in the scripts
INPUTS_FILE = "recipe_inputs.pt"  # token ids the scripts feed the model (so the reference here sees the same)
OUTPUTS_FILE = "recipe_outputs.pt"  # what the scripts hand back for comparisons with the unedited code
TINY_MODEL = dict(n_layers=2, dim=32, n_heads=2, max_seq_len=16)
WORDS = "the cat sat on a mat and then a dog ran to it so the cat ran up the big old tree near our house"


# ---- the check scripts -------------------------------------------------------------------------
# Each runs with cwd = the edited copy, which is first on its sys.path.

PRELUDE = f'''
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
import model.lm
assert Path(model.lm.__file__).resolve().is_relative_to(HERE), f"imported {{model.lm.__file__}}, not the edited copy"
from data.tokenizer import Tokenizer
from model.lm import LM
from model.model_params import ModelParams

TINY_MODEL = {TINY_MODEL!r}
INPUTS = torch.load(HERE / "{INPUTS_FILE}")
OUTPUTS = {{}}


def tiny_lm(**flags):
    """The same weights for every flag setting: the seed alone decides them."""
    torch.manual_seed(0)
    return LM(ModelParams(**{{**TINY_MODEL, **flags}}), Tokenizer.load(HERE / "{TOKENIZER_FILE}")).eval()


def differ(a, b, at_least=1e-4):
    return (a - b).abs().max().item() > at_least


def short_training(lm, x, steps=3, lr=0.1):
    """A few plain gradient steps of next-token prediction on x; the losses. (No torch.optim: making
    an optimizer imports torch._dynamo, seconds of start-up.)"""
    lm.train()
    losses = []
    for _ in range(steps):
        z = lm(x[:, :-1])
        loss = nn.functional.cross_entropy(z.flatten(0, 1), x[:, 1:].flatten())
        lm.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in lm.parameters():
                p -= lr * p.grad
        losses.append(loss.item())
    lm.eval()
    assert all(torch.isfinite(torch.tensor(losses))), losses
    return losses


def save_outputs():
    torch.save(OUTPUTS, HERE / "{OUTPUTS_FILE}")
    print("recipe check passed")
'''

# Training through the project's own run code (LMTrainer + lightning.Trainer) on a tiny sort task.
TRAINING_PRELUDE = '''
from lightning.pytorch.callbacks import Callback

from data.data_params import DataParams
from main import build_arg_parser
from train.runs import Namer
from train.run import run_training
from train.train_params import TrainParams

SORT = dict(dataset_name="sort", n_train_samples=64, n_eval_samples=16, min_len=2, max_len=4, long_len=0,
            max_seq_len=16)  # 4 training batches of 16


def train(callbacks=(), **train_params):
    """run_training on the sort task, no wandb, no saving; returns its result dict."""
    args = build_arg_parser().parse_args(["--config=test-recipe", "--no-wandb", f"--save-dir={HERE / 'saved'}"])
    tp = TrainParams(**{**dict(max_steps=4, batch_size=16, lr=1e-2, warmup_steps=1, n_print_samples=1,
                               print_sample_len=4), **train_params})
    namer = Namer(DataParams(**SORT), ModelParams(n_layers=2, dim=32, n_heads=2), tp, args, config_name="test-recipe")
    return run_training(namer, callbacks=list(callbacks))


def train_losses(result):
    return [v for _, _, _, v in result["train_stats"]["stat/train_loss"]]


def block_names(lm, i):
    return [n for n, _ in lm.named_parameters() if n.startswith(f"decoder.layers.{i}.")]
'''

CHECKS: Dict[int, str] = {}

CHECKS[1] = PRELUDE + '''
from main import main
from model.transformer.torch_f_multi_head_attention_forward import hidden_keys
from model.transformer.transformer import is_block
from train.run_folder import load_run

off, on = tiny_lm(), tiny_lm(relu_after_first=True)
assert not off.model_params.relu_after_first, "the flag defaults to off"
assert [type(l).__name__ for l in on.decoder.layers] == ["TransformerBlock", "ReLU", "TransformerBlock"], \
    on.decoder.layers
assert len(off.decoder.layers) == 2 and on.decoder.n_blocks == 2
# the ReLU has no weights: the same seed draws the same weights, block 1 is now at index 2
renamed = {k.replace("decoder.layers.1.", "decoder.layers.2."): v for k, v in off.state_dict().items()}
assert renamed.keys() == on.state_dict().keys()
assert all(torch.equal(v, on.state_dict()[k]) for k, v in renamed.items())

x = INPUTS["x"]
with torch.no_grad():
    z_off, z_on = off(x), on(x)
    assert differ(z_off, z_on), "the ReLU changes the logits"
    # what the flag should compute: block 0, ReLU, block 1, final norm, output projection
    h, causal = off.embed(x), hidden_keys(x.shape[1], x.shape[1], None, x.device)  # the mask LM.forward builds
    h, _ = off.decoder.layers[0](h, mask=causal)
    h, _ = off.decoder.layers[1](torch.relu(h), mask=causal)
    assert torch.allclose(off.out_proj(off.decoder.final_norm(h)), z_on, atol=1e-5)
    out = on(x, get_embeddings=True, get_attn=True)
    assert out["embeddings"].shape == (x.shape[0], 3, x.shape[1], 32) and out["attns"].shape[1] == 2
    assert (out["embeddings"][:, 1] >= 0).all(), "entry 1 is the second block's input: after the ReLU"
    cached = on.sample(pref=x[0, :4].tolist(), max_seq_len=10, temperature=0, as_str=False)
    ids = [on.tokenizer.bos_id] + x[0, :4].tolist()
    while len(ids) - 1 < 10:  # greedy without a cache: the same ids
        nxt = on(torch.tensor([ids]))[0, -1].argmax().item()
        if nxt == on.tokenizer.eos_id:
            break
        ids.append(nxt)
    assert cached == ids[1:], (cached, ids[1:])

# the README's sweep, through main.py: both runs train, differ, save and load back with their flag
results = main(["--config=test-synth", "--no-wandb", "--save", f"--save-dir={HERE / 'saved'}",
                "--set", "relu_after_first=[False,True]", "--set", "max_steps=3", "--set", "batch_size=16",
                "--set", "n_train_samples=48", "--set", "n_eval_samples=16", "--set", "long_len=0",
                "--set", "dim=32", "--set", "n_print_samples=1"])
assert len(results) == 2
losses = [[v for _, _, _, v in r["train_stats"]["stat/train_loss"]] for r in results]
assert len(losses[0]) == len(losses[1]) == 3, losses
assert losses[0][0] != losses[1][0], f"the same first loss with and without the ReLU: {losses}"
assert "relu_after_first=False" in results[0]["save_folder"] and "relu_after_first=True" in results[1]["save_folder"]
saved_off, saved_on = (load_run(r["save_folder"]).lm for r in results)
assert all(is_block(l) for l in saved_off.decoder.layers) and len(saved_off.decoder.layers) == 2
assert isinstance(saved_on.decoder.layers[1], nn.ReLU) and saved_on.model_params.relu_after_first
save_outputs()
'''

CHECKS[2] = PRELUDE + '''
x = INPUTS["x"]
off = tiny_lm(layer_architecture="custom-transformer")
on = tiny_lm(layer_architecture="custom-transformer", square_ff=True)
assert all(torch.equal(a, b) for a, b in zip(off.state_dict().values(), on.state_dict().values()))
with torch.no_grad():
    z_off, z_on = off(x), on(x)
    assert differ(z_off, z_on), "squaring the feed-forward output changes the logits"
    layer = on.decoder.layers[0]
    h = torch.randn(2, 5, 32)
    plain = layer.linear2(layer.activation(layer.linear1(h)))
    assert torch.equal(layer._ff_block(h), plain ** 2) and torch.equal(off.decoder.layers[0]._ff_block(h), plain)
OUTPUTS["off"] = z_off
losses_off, losses_on = short_training(off, x), short_training(on, x)
assert losses_off[0] != losses_on[0] and losses_off[1:] != losses_on[1:], (losses_off, losses_on)
save_outputs()
'''

CHECKS[3] = PRELUDE + '''
x = INPUTS["x"]
plain, sharp = (tiny_lm(layer_architecture="custom-transformer", attn_scale=s) for s in (1.0, 3.0))
with torch.no_grad():
    OUTPUTS["scale_1"] = plain(x)
    assert differ(OUTPUTS["scale_1"], sharp(x)), "scaling the scores changes the logits"
    # larger query/key weights (as training gives) for visible attention patterns; the same in both models
    for lm in (plain, sharp):
        for layer in lm.decoder.layers:
            layer.self_attn.in_proj_weight[:64].mul_(10)
    a1, a3 = plain(x, get_attn=True)["attns"], sharp(x, get_attn=True)["attns"]
    # the first block sees the same input in both: softmax(3 s) is softmax(s) cubed and renormalised
    cubed = a1[:, 0] ** 3
    assert torch.allclose(a3[:, 0], cubed / cubed.sum(-1, keepdim=True), atol=1e-6, rtol=1e-4)
    assert torch.equal(a3 == 0, a1 == 0), "masked (future) keys stay masked"

    def entropy(a):
        return -(a * a.clamp_min(1e-30).log()).sum(-1)[..., 1:].mean().item()  # rows with more than one key

    assert entropy(a3) < entropy(a1) - 0.01, (entropy(a3), entropy(a1))
    # sampling reads the prefix into a key/value cache and then one token at a time: the same logits
    cache = sharp.new_kv_cache()
    steps = [sharp(x[:1, :5], kv_cache=cache)] + [sharp(x[:1, t:t + 1], kv_cache=cache) for t in range(5, x.shape[1])]
    full = sharp(x[:1])
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5), "cached attention scales the scores too"
    assert differ(full, plain(x[:1]))
    cached = sharp.sample(pref=x[0, :4].tolist(), max_seq_len=10, temperature=0, as_str=False)
    ids = [sharp.tokenizer.bos_id] + x[0, :4].tolist()
    while len(ids) - 1 < 10:  # greedy without a cache
        nxt = sharp(torch.tensor([ids]))[0, -1].argmax().item()
        if nxt == sharp.tokenizer.eos_id:
            break
        ids.append(nxt)
    assert cached == ids[1:], (cached, ids[1:])
losses_1, losses_3 = short_training(plain, x), short_training(sharp, x)
assert losses_1 != losses_3, (losses_1, losses_3)
save_outputs()
'''

CHECKS[4] = PRELUDE + '''
no_10, with_10 = INPUTS["no_10"], INPUTS["with_10"]
assert 10 not in no_10 and 10 in with_10
plain, sharp = (tiny_lm(layer_architecture="custom-transformer", attn_scale=s) for s in (1.0, 3.0))
with torch.no_grad():
    for lm in (plain, sharp):  # larger query/key weights, for a clear difference where the scale acts
        for layer in lm.decoder.layers:
            layer.self_attn.in_proj_weight[:64].mul_(10)
    assert torch.equal(sharp(no_10), plain(no_10)), "without token 10 the scale must not act"
    assert differ(sharp(with_10), plain(with_10)), "with token 10 the scores are scaled"
    a1, a3 = plain(with_10, get_attn=True)["attns"][:, 0], sharp(with_10, get_attn=True)["attns"][:, 0]
    assert torch.allclose(a3, a1 ** 3 / (a1 ** 3).sum(-1, keepdim=True), atol=1e-6, rtol=1e-4)
    # per batch: a row without 10 is scaled when another row of its batch has a 10
    mixed = torch.cat([no_10[:1], with_10[1:2]])
    assert differ(sharp(mixed)[0], sharp(no_10[:1])[0])
    # every input form reaches the check as a [batch, seq] tensor: a plain list of ids too
    assert torch.equal(sharp(no_10[0].tolist()), plain(no_10[0].tolist()))
    assert differ(sharp(with_10[0].tolist()), plain(with_10[0].tolist()))
    OUTPUTS["no_10"] = sharp(no_10)
    OUTPUTS["with_10_scale_1"] = plain(with_10)
losses_1, losses_3 = short_training(plain, with_10), short_training(sharp, with_10)
assert losses_1 != losses_3, (losses_1, losses_3)
save_outputs()
'''

CHECKS[5] = PRELUDE + TRAINING_PRELUDE + '''
class WatchBlocks(Callback):
    """Per optimizer step: which blocks the recipe froze, which got gradients, which parameters changed."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        layers = pl_module.model.decoder.layers
        self.frozen = [not any(p.requires_grad for p in layer.parameters()) for layer in layers]
        self.no_grad = [all(p.grad is None for p in layer.parameters()) for layer in layers]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        lm = pl_module.model
        changed = {n: not torch.equal(self.before[n], p.detach()) for n, p in lm.named_parameters()}
        blocks_changed = [[changed[n] for n in block_names(lm, i)] for i in range(len(lm.decoder.layers))]
        self.steps.append((self.frozen, self.no_grad, blocks_changed, changed["embedding.weight"]))


def check_steps(watch, n_steps):
    assert len(watch.steps) == n_steps
    for frozen, no_grad, blocks_changed, embedding_changed in watch.steps:
        assert frozen == no_grad, "a frozen block gets no gradient, the others do"
        assert embedding_changed, "the embeddings always train"
        for is_frozen, changed in zip(frozen, blocks_changed):
            assert (not any(changed)) if is_frozen else all(changed), (frozen, blocks_changed)
    return [frozen for frozen, _, _, _ in watch.steps]


all_frozen, none_frozen, half = WatchBlocks(), WatchBlocks(), WatchBlocks()
train([all_frozen], freeze_frac=1.0)
assert check_steps(all_frozen, 4) == [[True, True]] * 4
train([none_frozen], freeze_frac=0.0)
assert check_steps(none_frozen, 4) == [[False, False]] * 4
# a frozen block stays put even in a step after one in which it trained (AdamW's momentum and weight decay)
result = train([half], freeze_frac=0.5, max_steps=8)
pattern = check_steps(half, 8)
assert any(f for step in pattern for f in step) and not all(f for step in pattern for f in step), pattern
assert any(step[i] and not before[i] for before, step in zip(pattern, pattern[1:]) for i in range(2)), pattern
assert len(train_losses(result)) == 8
save_outputs()
'''

CHECKS[6] = PRELUDE + TRAINING_PRELUDE + '''
from data.dataloader import LMDataModule

# get_batch_xyz / get_losses with and without corruption, on one batch of the sort task
dm = LMDataModule(DataParams(**SORT), batch_size=16)
batch = next(iter(dm.train_dataloader()))
torch.manual_seed(0)
lm = LM(ModelParams(n_layers=2, dim=32, n_heads=2, max_seq_len=16), dm.tokenizer)
tp = TrainParams()
clean_x = batch["x_indices"][:, :-1]
with torch.no_grad():
    x0, y0, z0 = lm.get_batch_xyz(batch)
    x00, y00, z00 = lm.get_batch_xyz(batch, loss_requests={"corrupt_frac": 0.0})
    x1, y1, z1 = lm.get_batch_xyz(batch, loss_requests={"corrupt_frac": 1.0})
    xh, yh, zh = lm.get_batch_xyz(batch, loss_requests={"corrupt_frac": 0.5})
    assert torch.equal(x0, clean_x) and torch.equal(x00, clean_x) and torch.equal(z00, z0)
    assert torch.equal(y1, y0) and torch.equal(yh, y0) and torch.equal(y00, y0), "the targets stay clean"
    assert (x1 != clean_x).float().mean() > 0.7, "corrupt_frac=1.0 replaces (nearly) every input token"
    assert 0.25 < (xh != clean_x).float().mean() < 0.75, "corrupt_frac=0.5 replaces about half"
    assert x1.min() >= 0 and x1.max() < lm.n_tokens
    assert differ(z1, z0)
    loss_clean, n = lm.get_losses(batch, tp, loss_requests={"corrupt_frac": 0.0})
    loss_corrupt, n1 = lm.get_losses(batch, tp, loss_requests={"corrupt_frac": 1.0})
    assert n == n1 == 16 and abs(loss_clean.item() - loss_corrupt.item()) > 1e-4
    assert loss_clean.item() == lm.get_losses(batch, tp)[0].item()


class WatchInputs(Callback):
    """Counts the model's forward passes whose input is the batch's clean x, per stage."""

    def __init__(self):
        self.batch = None
        self.counts = {}

    def on_fit_start(self, trainer, pl_module):
        pl_module.model.register_forward_pre_hook(self.check_input)

    def check_input(self, module, args):
        if self.batch is not None:
            key = (self.stage, torch.equal(args[0], self.batch["x_indices"][:, :-1]))
            self.counts[key] = self.counts.get(key, 0) + 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch, self.stage = batch, "train"

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batch, self.stage = batch, "val"

    def on_train_batch_end(self, *args):
        self.batch = None

    def on_validation_batch_end(self, *args):
        self.batch = None


seen_clean, seen_corrupt = WatchInputs(), WatchInputs()
clean = train([seen_clean], corrupt_frac=0.0, max_steps=None, epochs=1)
corrupt = train([seen_corrupt], corrupt_frac=0.5, max_steps=None, epochs=1)
assert seen_clean.counts == {("train", True): 4, ("val", True): 1}, seen_clean.counts
assert seen_corrupt.counts == {("train", False): 4, ("val", True): 1}, "corrupted training, clean validation"
assert len(train_losses(clean)) == len(train_losses(corrupt)) == 4
assert train_losses(clean)[0] != train_losses(corrupt)[0], (train_losses(clean), train_losses(corrupt))
assert all(v > 0 for v in corrupt["val_losses"].values())
save_outputs()
'''

CHECKS[7] = PRELUDE + TRAINING_PRELUDE + '''
class MaxParam(Callback):
    """max |parameter| after each optimizer step, as (global step, value)."""

    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lm = pl_module.model
        self.values.append((trainer.global_step, max(p.detach().abs().max().item() for p in self.lm.parameters())))


every_batch, every_second = MaxParam(), MaxParam()
result = train([every_batch], hyperparams_log_freq=1)
logged = [(s, v) for s, _, _, v in result["train_stats"]["stat/max_param"]]
assert [s for s, _ in logged] == [s for s, _ in every_batch.values] == [1, 2, 3, 4], (logged, every_batch.values)
for (_, got), (_, expected) in zip(logged, every_batch.values):
    assert expected > 0 and abs(got - expected) <= 1e-6 * expected, (logged, every_batch.values)
final_max = max(p.detach().abs().max().item() for p in every_batch.lm.parameters())
assert abs(logged[-1][1] - final_max) <= 1e-6 * final_max
result = train([every_second], hyperparams_log_freq=2)
logged = [(s, v) for s, _, _, v in result["train_stats"]["stat/max_param"]]
assert [s for s, _ in logged] == [2, 4], logged
assert all(abs(got - every_second.values[s - 1][1]) <= 1e-6 * got for s, got in logged)
save_outputs()
'''

CHECKS[8] = '''
from pathlib import Path

HERE = Path(__file__).resolve().parent
import main
assert Path(main.__file__).resolve().parent == HERE, f"imported {main.__file__}, not the edited copy"
from config_parser import load_runs
from data.data_params import DataParams
from main import build_arg_parser
from train.runs import Namer
from model.model_params import ModelParams
from train.train_params import TrainParams

args = build_arg_parser().parse_args(["--config=test-synth", "--no-wandb", f"--save-dir={HERE / 'saved'}"])
runs = load_runs("test-synth", ["relu_after_first=[False,True]"])
namers = [Namer(r.params["DataParams"], r.params["ModelParams"], r.params["TrainParams"], args, varying=r.varying,
                config_name=r.config_name) for r in runs]
assert [n.varying for n in namers] == [{"relu_after_first": False}, {"relu_after_first": True}]
assert [n.run_name() for n in namers] == ["relu-False", "relu-True"]
for n in namers:
    folder = Path(n.save_folder_name())
    assert folder == HERE / "saved" / "test-synth" / "sort" / n.run_name() / n.timestamp, folder
plain = Namer(DataParams(), ModelParams(relu_after_first=True), TrainParams(), args)
assert plain.run_name() == "relu-True" and "/relu-True/" in plain.save_folder_name()
print("recipe check passed")
'''

USES_LIGHTNING = {1, 5, 6, 7}  # their scripts train through run_training: seconds more to start

# recipe -> the recipes applied to its copy, in order (recipe 8 builds on recipe 1)
APPLIED: Dict[int, List[int]] = {n: [n] for n in CHECKS}
APPLIED[8] = [1, 8]


# ---- running them --------------------------------------------------------------------------------


def reference_lm(**flags: object) -> "torch.nn.Module":
    """The unedited repository's model, with the scripts' seed, sizes and tokenizer."""
    from model.lm import LM
    from model.model_params import ModelParams
    torch.manual_seed(0)
    return LM(ModelParams(**{**TINY_MODEL, **flags}), tokenizer()).eval()


def tokenizer():
    from data.tokenizer import Tokenizer
    return Tokenizer.train("word", [WORDS], vocab_size=100)


def inputs() -> Dict[str, torch.Tensor]:
    vocab = tokenizer().vocab_size
    assert vocab > 11
    x = torch.randint(1, vocab, (3, 12), generator=torch.Generator().manual_seed(1))
    no_10 = x.masked_fill(x == 10, 11)
    with_10 = no_10.clone()
    with_10[:, 6] = 10
    return {"x": x, "no_10": no_10, "with_10": with_10}


def prepare_copy(number: int, folder: Path) -> Path:
    """The repository copied to `folder`, the recipe applied as the README states it, the script written."""
    copy = folder / "repo"
    shutil.copytree(REPO, copy, ignore=IGNORED)
    found = readme_blocks.recipes()
    for n in APPLIED[number]:
        assert n in found, f"README.md has no '### Recipe {n}: ...' section with edit blocks"
        readme_blocks.apply_recipe(found[n], copy)
    tokenizer().save(copy / TOKENIZER_FILE)
    torch.save(inputs(), copy / INPUTS_FILE)
    (copy / "recipe_check.py").write_text(textwrap.dedent(CHECKS[number]))
    return copy


def run_script(copy: Path) -> subprocess.CompletedProcess:
    # one thread: tiny models gain nothing from more, and two scripts share the CPU cores
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "recipe_check.py"], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S)


class RecipeRuns:
    """Prepares the copies of the selected recipe tests and runs their check scripts, two at a time."""

    def __init__(self, numbers: List[int], root: Path):
        self.root = root
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.copies: Dict[int, Path] = {}
        self.futures: Dict[int, Future] = {}
        self.errors: Dict[int, Exception] = {}
        for n in sorted(numbers, key=lambda n: n not in USES_LIGHTNING):  # the longest first
            self.start(n)

    def start(self, number: int) -> None:
        try:
            self.copies[number] = prepare_copy(number, self.root / f"recipe-{number}")
        except Exception as error:  # a recipe that does not apply: reported by its own test
            self.errors[number] = error
            return
        self.futures[number] = self.pool.submit(run_script, self.copies[number])

    def result(self, number: int) -> Path:
        """The edited copy, once its check script passed."""
        if number not in self.futures and number not in self.errors:
            self.start(number)
        if number in self.errors:
            raise self.errors[number]
        done = self.futures[number].result()
        output = (done.stdout + done.stderr)[-8000:]
        assert done.returncode == 0, f"recipe {number}'s check script failed (exit {done.returncode}):\n{output}"
        assert "recipe check passed" in done.stdout, output
        return self.copies[number]


@pytest.fixture(scope="module")
def recipe_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RecipeRuns:
    """Starts every selected recipe test's script at once (the tests then wait for theirs)."""
    names = [item.name for item in request.session.items if item.module is request.module]
    selected = sorted({int(m.group(1)) for m in map(re.compile(r"test_recipe_(\d+)_").match, names) if m})
    runs = RecipeRuns(selected, tmp_path_factory.mktemp("recipes"))
    yield runs
    runs.pool.shutdown(wait=True, cancel_futures=True)


def outputs(copy: Path) -> Dict[str, torch.Tensor]:
    return torch.load(copy / OUTPUTS_FILE)


# ---- tests -----------------------------------------------------------------------------------------


def test_readme_has_recipes_1_to_8_whose_quoted_lines_occur_once_in_the_code() -> None:
    found = readme_blocks.recipes()
    assert sorted(found) == list(range(1, 9)), f"README.md recipes: {sorted(found)}, expected 1 to 8"
    for recipe in found.values():
        assert recipe.edits, f"recipe {recipe.number} has no edit blocks"
        for edit in recipe.edits:
            path = REPO / edit.path
            assert path.is_file(), f"recipe {recipe.number} edits {edit.path}, which does not exist"
            hits = readme_blocks.find_hits(path.read_text(), edit.find)
            assert len(hits) == 1, (f"recipe {recipe.number}: the lines to find occur {len(hits)} times in "
                                    f"{edit.path} (README and code drifted apart):\n{edit.find}")


def test_recipe_1_relu_after_the_first_block(recipe_runs: RecipeRuns) -> None:
    recipe_runs.result(1)


def test_recipe_2_square_ff_changes_outputs_and_off_matches_unedited_code(recipe_runs: RecipeRuns) -> None:
    copy = recipe_runs.result(2)
    with torch.no_grad():
        expected = reference_lm(layer_architecture="custom-transformer")(inputs()["x"])
    assert torch.allclose(outputs(copy)["off"], expected, atol=1e-6)


def test_recipe_3_attn_scale_one_matches_unedited_code_and_three_sharpens(recipe_runs: RecipeRuns) -> None:
    copy = recipe_runs.result(3)
    with torch.no_grad():
        expected = reference_lm(layer_architecture="custom-transformer")(inputs()["x"])
    assert torch.allclose(outputs(copy)["scale_1"], expected, atol=1e-6)


def test_recipe_4_attn_scale_only_for_batches_with_token_10(recipe_runs: RecipeRuns) -> None:
    copy = recipe_runs.result(4)
    lm = reference_lm(layer_architecture="custom-transformer")
    with torch.no_grad():
        for layer in lm.decoder.layers:
            layer.self_attn.in_proj_weight[:64].mul_(10)
        got = outputs(copy)
        assert torch.allclose(got["no_10"], lm(inputs()["no_10"]), atol=1e-6)
        assert torch.allclose(got["with_10_scale_1"], lm(inputs()["with_10"]), atol=1e-6)


def test_recipe_5_frozen_blocks_do_not_change(recipe_runs: RecipeRuns) -> None:
    recipe_runs.result(5)


def test_recipe_6_corrupted_inputs_clean_targets_and_validation(recipe_runs: RecipeRuns) -> None:
    recipe_runs.result(6)


def test_recipe_7_max_param_tracked_every_hyperparams_log_freq(recipe_runs: RecipeRuns) -> None:
    recipe_runs.result(7)
    assert "max_param" not in (REPO / "train" / "trainer.py").read_text(), "the unedited trainer does not track it"


def test_recipe_8_run_names_from_the_flag(recipe_runs: RecipeRuns) -> None:
    recipe_runs.result(8)
