"""Architectures on the same budget: trains configs/copy-length.txt (or --config) once per setting and
reports each validation set's loss, token accuracy and exact-match rate, val:long measuring length
generalisation.

    .venv/bin/python bench/bench_architectures.py [--config copy-length] [--setting NAME=KEY=VALUE;KEY=VALUE ...]

A setting is a name and `--set` overrides separated by ";" (the same syntax as main.py's --set);
without --setting the rows of SETTINGS below run. Every setting trains with the config's data,
model size and steps; only the overrides differ. Token accuracy: the share of answer tokens that
are the model's most likely next token given the correct prefix; exact match: the share of samples
whose every answer token is, which is exactly the share that greedy decoding answers correctly.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from config_parser import load_runs  # noqa: E402
from data.dataloader import LMDataModule  # noqa: E402
from main import build_arg_parser  # noqa: E402
from train.runs import Namer  # noqa: E402
from model.eval_mode import evaluating  # noqa: E402
from train.run import run_training  # noqa: E402

CUSTOM = 'layer_architecture="custom-transformer"'
# name -> --set overrides; add a row for another architecture
SETTINGS: Dict[str, List[str]] = {
    "transformer (learned)": [CUSTOM, 'positional_encoding="learned"'],
    "rope": [CUSTOM, 'positional_encoding="rope"'],
    "alibi": [CUSTOM, 'positional_encoding="alibi"'],
    "lstm": ['layer_architecture="lstm"'],  # n_layers and dim as the transformers; no positions, no heads
}


class KeepModel(Callback):
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.lm = pl_module.model


def accuracies(lm: Any, loader: Any) -> Tuple[float, float]:
    """(share of samples whose counted targets are all the argmax of the logits (teacher forcing),
    share of counted target tokens that are the argmax)."""
    right_samples = samples = right_tokens = tokens = 0
    with evaluating(lm):
        for batch in loader:
            batch = {k: v.to(lm.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            _, y, z = lm.get_batch_xyz(batch)
            counted = y != -100
            hit = z.argmax(-1) == y
            right_samples += (hit | ~counted).all(dim=1).sum().item()
            samples += y.shape[0]
            right_tokens += (hit & counted).sum().item()
            tokens += counted.sum().item()
    return right_samples / samples, right_tokens / tokens


def bench_setting(config: str, overrides: List[str], args: argparse.Namespace) -> Dict[str, Any]:
    [run] = load_runs(config, overrides)
    cli = build_arg_parser().parse_args([f"--config={config}", "--no-wandb", f"--save-dir={args.save_dir}"])
    namer = Namer(run.params["DataParams"], run.params["ModelParams"], run.params["TrainParams"], cli,
                  config_name=run.config_name)
    keep = KeepModel()
    start = time.perf_counter()
    result = run_training(namer, callbacks=[keep])
    seconds = time.perf_counter() - start
    lm = keep.lm
    dm = LMDataModule(run.params["DataParams"], batch_size=64, tokenizer=lm.tokenizer)
    scores = {name: accuracies(lm, loader) for name, loader in zip(dm.val_names, dm.val_dataloader())}
    return {"params": lm.n_parameters(), "seconds": seconds, "val_losses": result["val_losses"], "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="copy-length")
    parser.add_argument("--setting", action="append", default=[],
                        help='NAME=KEY=VALUE;KEY=VALUE, e.g. rope=layer_architecture="custom-transformer";'
                             'positional_encoding="rope"')
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--save-dir", default=str(REPO.parent / "saved-models-bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = SETTINGS
    if args.setting:
        settings = {}
        for text in args.setting:
            name, _, overrides = text.partition("=")
            settings[name] = [o for o in overrides.split(";") if o]
    rows = []
    for name, overrides in settings.items():
        print(f"=== {name}: {' '.join(overrides)}", flush=True)
        rows.append((name, bench_setting(args.config, overrides, args)))
    val_names = list(rows[0][1]["scores"])
    header = ["setting", "parameters", "train+eval s"]
    for n in val_names:
        header += [f"val:{n} loss", f"val:{n} token accuracy", f"val:{n} exact match"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, r in rows:
        cells = [name, f"{r['params']:,}", f"{r['seconds']:.0f}"]
        for n in val_names:
            exact, token = r["scores"][n]
            cells += [f"{r['val_losses'][n]:.4f}", f"{token:.1%}", f"{exact:.1%}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
