"""run_training(namer): one training run, from params to a saved folder.

Builds the data (LMDataModule), the model (LM), the LightningModule (LMTrainer) and a
lightning.Trainer; fits (resuming from --resume), measures the final validation and test loss in
eval mode, and with --save writes the run folder (train/run_folder.py). Ctrl-C or SIGTERM stops after
the current batch and still saves, marked interrupted. A loss that stays nan / inf stops the run,
saved marked diverged. If the save folder cannot be written at the end, the run is saved elsewhere
(and the message says where), never lost.

On several devices (TrainParams.devices, --gpu-id=0,1; train/devices.py) every process runs this
function; only rank 0 prints, logs to wandb, claims the save folder, evaluates the final model and saves.
"""
import dataclasses
import logging
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy

from data.data_path import cache_dir
from data.dataloader import LMDataModule
from data.tokenizer import OBJECTIVE_TOKENS
from model.lm import LM
from model.model_checks import check_model_params
from train.callbacks import CtrlCStop, FullWeights, LastCheckpoint, NonFiniteLoss, progress_bar
from train.devices import DeviceSetup, check_fsdp_model, device_setup, is_rank_zero, sharded
from train.precision import describe_precision, precision_plugin, resolve_precision
from train.resumable_loader import ResumableTrainLoader
from train.resume import checked_checkpoint, run_identity, unfinished_run_folder
from train.run_folder import save_run
from train.runs import format_value
from train.save_dir import check_save_dir, partial_folder, release
from train.train_params import TrainParams
from train.trainer import LMTrainer, check_train_params, corpus_loss, perplexity

IGNORED_WARNINGS = (
    r".*does not have many workers.*",  # batches are slices of tensors in memory: workers would not help
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning 2.6 on torch 2.13, harmless
)
_told_no_cuda = False


def run_training(namer: Any, callbacks: Sequence[Callback] = ()) -> Dict[str, Any]:
    """Train the run `namer` describes (see main.Namer). `callbacks`: extra Lightning callbacks.

    Returns {"val_loss", "val_losses", "test_loss", "interrupted", "signal" ("SIGINT", "SIGTERM" or None),
    "diverged", "save_folder" (str or None), "save_error" (None, or why the save folder could not be
    written: the run is then in "save_folder", elsewhere), "timestamp", "train_stats", "final"}."""
    dp, tp, args = namer.data_params, namer.train_params, namer.args
    check_train_params(tp)
    setup = device_setup(tp, gpu_ids(getattr(args, "gpu_id", None)))
    device = setup.device
    say = print if is_rank_zero() else (lambda *a, **k: None)  # the other ranks train quietly
    if tp.precision == "16-mixed" and device.type != "cuda":
        raise ValueError('TrainParams.precision="16-mixed" needs a CUDA GPU: use "auto", "32" or "bf16-mixed" on a CPU')
    resolved = resolve_precision(tp.precision, device)
    precision = describe_precision(tp.precision, resolved)
    tp = dataclasses.replace(tp, precision=resolved)  # params.json records what the run used
    eval_callback = None
    if tp.eval_tasks:  # lm-eval tasks (train/eval_callback.py); their names are checked here, before any work
        from train.eval_callback import LMEvalCallback
        eval_callback = LMEvalCallback(tp.eval_tasks, tp.eval_limit, seed=tp.seed)

    mp = namer.model_params
    if mp.max_seq_len is None:
        mp = dataclasses.replace(mp, max_seq_len=dp.max_seq_len)
    check_model_params(mp)  # before any data is read: e.g. an objective the architecture cannot train
    L.seed_everything(tp.seed, workers=True, verbose=False)
    dm = LMDataModule(dp, batch_size=tp.batch_size, data_path=getattr(args, "data_path", None), seed=tp.seed,
                      extra_tokens=OBJECTIVE_TOKENS[mp.objective])
    L.seed_everything(tp.seed, workers=True, verbose=False)  # the weights depend on the seed alone
    lm = LM(mp, dm.tokenizer, sample_mode=dm.sample_mode)
    check_fsdp_model(setup.strategy, lm)
    say(f"data:  {dm}\nmodel: {lm}\ndevice: {setup.describe()}, precision {precision}")
    if setup.world_size > 1:
        say(f"batch: {tp.batch_size} per device x {setup.world_size} processes = global batch "
            f"{tp.batch_size * setup.world_size}")
    resume = None
    if getattr(args, "resume", None):
        resume = checked_checkpoint(args.resume, dp, mp, dm.tokenizer)

    lm_trainer = LMTrainer(lm, tp, val_names=dm.val_names, run_identity=run_identity(dp, dm.tokenizer))
    train_loader = ResumableTrainLoader(dm.train_dataloader(), seed=tp.seed, world_size=setup.world_size)
    val_loaders = dm.val_dataloader()
    if setup.world_size > 1:  # each rank evaluates its own share of every set
        val_loaders = [sharded(loader, tp.limit_val_batches) for loader in val_loaders]
    ctrl_c = CtrlCStop()
    nonfinite = NonFiniteLoss(check_every=tp.hyperparams_log_freq, stop=tp.stop_on_nonfinite)
    full_weights = FullWeights()
    # ctrl_c after nonfinite (it makes their stops agree across ranks), and before the checkpoint
    all_callbacks: List[Callback] = [*callbacks, train_loader, nonfinite, ctrl_c, full_weights]
    if eval_callback is not None:  # before the checkpoint, which then holds its stats
        all_callbacks.append(eval_callback)
    save_folder = None
    if getattr(args, "save", False):
        finishing = unfinished_run_folder(args.resume) if getattr(args, "resume", None) else None
        if finishing is not None:  # a killed run's .partial: finish into its folder, replacing its checkpoint
            namer.finish_in(finishing)
        if is_rank_zero():
            # weights, and a checkpoint with the weights and AdamW's two moments: 4 copies of the parameters
            check_save_dir(Path(namer.save_folder_name()).parent, need_bytes=16 * lm.n_parameters() + 2 ** 24)
            save_folder = Path(getattr(namer, "claim_save_folder", namer.save_folder_name)())
        else:  # rank 0 alone claims the folder and writes into it
            save_folder = Path(namer.save_folder_name())
        checkpoint = LastCheckpoint(partial_folder(save_folder) / "checkpoints" / "last.ckpt",
                                    skip=lambda: nonfinite.diverged)
        all_callbacks.append(checkpoint)
        say(f"saving to {save_folder} (checkpoint while training: {checkpoint.path})")
    try:
        logger = None
        if not getattr(args, "no_wandb", False) and is_rank_zero():
            from train.wandb_setup import wandb_logger
            logger = wandb_logger(namer.wandb_proj_name(), namer.run_name(), params_config(dp, mp, tp, namer),
                                  entity=getattr(args, "wandb_entity", None), **sweep_group_and_tags(namer))
        trainer = make_trainer(tp, setup, n_train_batches=len(train_loader), logger=logger,
                               callbacks=all_callbacks)
        if tp.compile:
            lm.compile()
    except BaseException:
        if save_folder is not None and is_rank_zero():
            release(save_folder)  # nothing trained: give the claimed name back
        raise

    if resume is not None:
        say(f"resuming from {resume}")
    try:
        hard_interrupt = fit(trainer, lm_trainer, train_loader, val_loaders, resume, ctrl_c)
    except Exception:
        if save_folder is not None and checkpoint.path.is_file():
            say(f"training failed at step {trainer.global_step}; the last checkpoint is {checkpoint.path}: "
                f"continue from it with --resume {save_folder}", flush=True)
        raise
    interrupted = hard_interrupt or ctrl_c.requested
    if not trainer.is_global_zero:  # rank 0 evaluates, saves and reports
        return {"val_loss": None, "val_losses": {}, "test_loss": None, "interrupted": interrupted,
                "signal": ctrl_c.signal_name, "diverged": nonfinite.diverged, "save_folder": None,
                "save_error": None, "train_stats": {}, "final": {}, "rank": trainer.global_rank}
    if full_weights.weights is not None:  # FSDP: the blocks were sharded; rank 0 gathered them all
        lm = LM(mp, dm.tokenizer, sample_mode=dm.sample_mode)
        lm.load_state_dict(full_weights.weights)
        lm_trainer.model = lm

    lm.to(device)  # Lightning hands the model back on the CPU
    final = final_losses(lm, dm, device, skip=hard_interrupt)
    if final["test_loss"] is not None:
        record_final_losses(lm_trainer, final, trainer.global_step)
    diverged = nonfinite.diverged or (final["val_loss"] is not None and not math.isfinite(final["val_loss"]))
    final.update(interrupted=interrupted, signal=ctrl_c.signal_name, diverged=diverged,
                 diverged_at_step=nonfinite.diverged_at_step, steps=trainer.global_step,
                 samples=lm_trainer.n_samples_trained,
                 epochs_completed=lm_trainer.n_batches_trained // max(1, len(train_loader)),  # whole epochs only
                 elapsed_s=lm_trainer.elapsed_s(), tokens_per_s=lm_trainer.throughput.mean_tokens_per_s())
    if eval_callback is not None:
        final.update(eval_callback.last)
    train_stats = lm_trainer.train_stats  # flushes the last values to wandb too
    print_final(final)
    if diverged:
        print(divergence_message(nonfinite, tp, checkpoint if save_folder is not None else None), flush=True)

    save_error = None
    if save_folder is not None:
        run_info = {"config": getattr(namer, "config_name", None), "task": dp.dataset_name,
                    "run_name": namer.run_name(), "timestamp": namer.timestamp,
                    "varying": getattr(namer, "varying", {}), "resumed_from": str(resume) if resume else None,
                    "wandb": wandb_info(logger)}
        save_folder, save_error = save_or_rescue(save_folder, lm, dp, mp, tp, train_stats, final, run_info)
    if logger is not None:
        finish_wandb(logger, final)
    return {"val_loss": final["val_loss"], "val_losses": final["val_losses"], "test_loss": final["test_loss"],
            "interrupted": interrupted, "signal": ctrl_c.signal_name, "diverged": diverged,
            "save_folder": str(save_folder) if save_folder else None, "save_error": save_error,
            "timestamp": namer.timestamp, "train_stats": train_stats, "final": final}


def divergence_message(nonfinite: NonFiniteLoss, tp: TrainParams, checkpoint: Optional[LastCheckpoint] = None) -> str:
    """What diverged and what to try; with the run's checkpoint (when saving), which weights it kept."""
    if nonfinite.diverged:
        what = (f"the training loss became {nonfinite.value} at step {nonfinite.diverged_at_step} and stayed "
                f"non-finite for {nonfinite.patience} batches in a row")
        what += ": training stopped there" if tp.stop_on_nonfinite else " (stop_on_nonfinite=False: training went on)"
    else:
        what = "the final validation loss is not finite"
    kept = ""
    if checkpoint is not None and checkpoint.path.is_file():
        step = f"of step {checkpoint.saved_at_step}" if checkpoint.saved_at_step is not None else "resumed from"
        kept = f" The checkpoint {checkpoint.path} keeps the weights {step}, before the divergence."
    elif checkpoint is not None:
        kept = (" It diverged before its first checkpoint was written, so no weights from before the divergence "
                "were kept: the saved weights are the diverged ones.")
    return (f"diverged: {what}. Try a lower lr (now {tp.lr:g}), gradient clipping (grad_clip, now {tp.grad_clip}) "
            f"or a longer warmup (warmup_steps, now {tp.warmup_steps}).{kept}")


def save_or_rescue(folder: Path, *run: Any) -> "tuple[Path, Optional[str]]":
    """save_run(folder, *run); if that fails (disk full, folder made read-only, ...), save the run under
    the cache dir or the temp dir instead. Returns (where it was saved, None or the error message)."""
    try:
        saved = save_run(folder, *run)
        print(f"saved to {saved}")
        return saved, None
    except OSError as error:
        reason = f"could not save the run to {folder}: {error.strerror or error}"
    relative = Path(*folder.parts[-4:])  # {config}/{task}/{run name}/{timestamp}
    for root in (lambda: cache_dir() / "rescued-runs", lambda: Path(tempfile.gettempdir()) / "lm-rescued-runs"):
        try:
            rescued = save_run(root() / relative, *run)
        except OSError:
            continue
        message = (f"{reason}. The trained model is saved in {rescued} instead: load it with "
                   f"model_explorer.get_model_by_path({str(rescued)!r}), or move the folder to {folder}.")
        print(f"error: {message}", flush=True)
        return rescued, message
    message = (f"{reason}, nor anywhere else. The last checkpoint is in {partial_folder(folder)}/checkpoints "
               "(continue from it with --resume once the disk has room).")
    print(f"error: {message}", flush=True)
    return folder, message


def fit(trainer: L.Trainer, lm_trainer: LMTrainer, train_loader: ResumableTrainLoader, val_loaders: List[Any],
        resume: Optional[Path], ctrl_c: CtrlCStop) -> bool:
    """trainer.fit, with Ctrl-C / SIGTERM handled; True when a second signal stopped it in the middle of a step."""
    try:
        with ctrl_c.handling_ctrl_c(), warnings.catch_warnings():
            for message in IGNORED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            trainer.fit(lm_trainer, train_dataloaders=train_loader, val_dataloaders=val_loaders, ckpt_path=resume,
                        weights_only=True)
    except SystemExit:  # Lightning exits this way after a KeyboardInterrupt (a second Ctrl-C)
        if not trainer.interrupted:
            raise
        return True
    return False


def make_trainer(tp: TrainParams, setup: Union[DeviceSetup, torch.device], n_train_batches: int, logger: Any = None,
                 callbacks: Sequence[Callback] = (), enable_progress_bar: bool = True) -> L.Trainer:
    """The lightning.Trainer for TrainParams: epochs or max_steps, clipping, accumulation, precision,
    validation schedule, devices and strategy (`setup`, or one device). Deterministic on the CPU (on
    CUDA that would cost speed). Lightning's distributed sampler is off: train/devices.py splits the data."""
    if isinstance(setup, torch.device):
        setup = DeviceSetup("gpu" if setup.type == "cuda" else "cpu",
                            [setup.index or 0] if setup.type == "cuda" else 1, "auto", 1, setup)
    device = setup.device
    for name in ("lightning.pytorch", "lightning.fabric"):  # no device banners; warnings still show
        logging.getLogger(name).setLevel(logging.WARNING)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    precision = resolve_precision(tp.precision, device)
    plugin = precision_plugin(precision, device) if not isinstance(setup.strategy, FSDPStrategy) else None
    val_every = tp.val_check_interval if tp.val_check_interval and tp.val_check_interval < n_train_batches else None
    if enable_progress_bar:
        callbacks = [*callbacks, progress_bar()]
    trainer = L.Trainer(
        accelerator=setup.accelerator,
        devices=setup.devices,
        strategy=setup.strategy,
        num_nodes=setup.num_nodes,
        use_distributed_sampler=False,
        # with max_steps, enough epochs to reach it (so the progress bar can show "epoch i/n")
        max_epochs=tp.epochs if tp.max_steps is None else -(-tp.max_steps * tp.accumulate_grad_batches // max(1, n_train_batches)),
        max_steps=tp.max_steps if tp.max_steps is not None else -1,
        gradient_clip_val=tp.grad_clip,
        accumulate_grad_batches=tp.accumulate_grad_batches,
        precision=None if plugin else precision,
        plugins=[plugin] if plugin else None,
        val_check_interval=val_every,
        # several processes: the sharded loaders already hold the first limit_val_batches batches' samples
        limit_val_batches=tp.limit_val_batches if tp.limit_val_batches is not None and setup.world_size == 1 else 1.0,
        num_sanity_val_steps=0,
        deterministic=device.type == "cpu",
        logger=logger if logger is not None else False,
        callbacks=list(callbacks),
        enable_checkpointing=False,  # train.callbacks.LastCheckpoint keeps last.ckpt when saving
        enable_model_summary=False,  # run_training prints the LM's one-line summary
        enable_progress_bar=enable_progress_bar,
        log_every_n_steps=max(1, min(tp.hyperparams_log_freq, n_train_batches)),
    )
    # deterministic=True also fills every new tensor's memory with NaN (a check for reads of uninitialised
    # memory, which no op here makes): 4% of a small model's CPU step; the algorithms stay deterministic
    torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def gpu_ids(gpu_id: Union[None, int, Sequence[int]]) -> Optional[List[int]]:
    """--gpu-id as a list (None: not given). Without CUDA, says once that the CPU is used instead."""
    global _told_no_cuda
    if gpu_id is None:
        return None
    ids = [gpu_id] if isinstance(gpu_id, int) else list(gpu_id)
    if not torch.cuda.is_available() and not _told_no_cuda and is_rank_zero():
        print(f"--gpu-id={','.join(map(str, ids))}: CUDA is not available here, training on the CPU")
        _told_no_cuda = True
    return ids


def final_losses(lm: LM, dm: LMDataModule, device: torch.device, skip: bool = False) -> Dict[str, Any]:
    """Mean loss per token on every validation set and the test set, model in eval mode, in full float32
    (no TF32 matmuls on CUDA), so that recomputing them from the saved model gives the same numbers."""
    if skip:
        return {"val_loss": None, "val_losses": {}, "test_loss": None}
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        val_losses = {name: corpus_loss(lm, loader, device)
                      for name, loader in zip(dm.val_names, dm.val_dataloader())}
        twin = getattr(dm, "same_split", {}).get("test", "test")  # "val:main" when the task has no test split
        if twin.startswith("val:") and twin[len("val:"):] in val_losses:
            test_loss = val_losses[twin[len("val:"):]]  # the same samples: measured once
        else:
            test_loss = corpus_loss(lm, dm.test_dataloader(), device)
    finally:
        torch.set_float32_matmul_precision(matmul_precision)
    return {"val_loss": val_losses[dm.val_names[0]], "val_losses": val_losses, "test_loss": test_loss}


def record_final_losses(lm_trainer: LMTrainer, final: Dict[str, Any], step: int) -> None:
    """Put the final losses in train_stats: the test loss, and the val losses unless the last
    validation already ran at this step (a run stopped by max_steps mid-epoch has none otherwise)."""
    stats = lm_trainer.train_stats
    for name, loss in final["val_losses"].items():
        entries = stats.get(f"stat/val_loss:{name}", [])
        if not entries or entries[-1][0] != step:
            lm_trainer.log_stat(f"stat/val_loss:{name}", loss)
    lm_trainer.log_stat("stat/test_loss", final["test_loss"])


def print_final(final: Dict[str, Any]) -> None:
    if final["val_loss"] is None:
        print(f"final: stopped at once by a second {final.get('signal') or 'Ctrl-C'}, no final evaluation")
        return
    vals = " | ".join(f"val {name} loss {loss:.4f} ppl {perplexity(loss):.2f}" for name, loss in final["val_losses"].items())
    state = " (interrupted)" if final.get("interrupted") else ""
    print(f"final{state}: {vals} | test loss {final['test_loss']:.4f} ppl {perplexity(final['test_loss']):.2f}")


def params_config(dp: Any, mp: Any, tp: Any, namer: Any) -> Dict[str, Any]:
    """wandb config: every param, grouped by section, plus the run's swept values."""
    return {"data": dataclasses.asdict(dp), "model": dataclasses.asdict(mp), "train": dataclasses.asdict(tp),
            "varying": dict(getattr(namer, "varying", {}) or {}), "timestamp": namer.timestamp}


def sweep_group_and_tags(namer: Any) -> Dict[str, Any]:
    """The runs of one config share a wandb group (the config name) and carry their swept values as
    tags ("n_layers=2", "lr=0.003"), so the wandb UI groups and filters a sweep without setup."""
    tags = [f"{key}={format_value(value)}"[:64] for key, value in (getattr(namer, "varying", None) or {}).items()]
    return {"group": getattr(namer, "config_name", None), "tags": tags}


def wandb_info(logger: Any) -> Optional[Dict[str, Any]]:
    if logger is None:
        return None
    run = logger.experiment
    return {"project": getattr(run, "project", None), "id": getattr(run, "id", None),
            "dir": str(Path(run.dir).parent) if getattr(run, "dir", None) else None}


def finish_wandb(logger: Any, final: Dict[str, Any]) -> None:
    run = logger.experiment
    try:
        for key in ("val_loss", "test_loss", "interrupted"):
            run.summary[f"final/{key}"] = final[key]
    except Exception:  # a disabled run has no summary
        pass
    run.finish()
