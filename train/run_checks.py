"""Check every run of a sweep before any of them trains: data, model and train params and how they fit
together, so that a bad combination in run 7 is reported before run 1 spends compute.

Runs at the start of `main.py` (and with --dry-run). Loads no data and builds no model: what only
shows while loading data (a synthetic sample longer than max_seq_len, a missing corpus file) is
reported by the run itself, and the sweep goes on with the other runs.
"""
import dataclasses
from typing import Any, Dict, List, Optional

from data.data_params import DataParams
from data.syntheticdata import TASKS as SYNTHETIC_TASKS
from data.syntheticdata import check_synthetic_params
from data.tasks import check_data_params, check_task_name
from train.train_params import TrainParams, check_device_params, check_train_params


def run_problems(params: Dict[str, Any], data_path: Optional[str] = None, on_this_machine: bool = True) -> List[str]:
    """Every problem of one run's params ({"DataParams", "ModelParams", "TrainParams"} -> dataclass).
    on_this_machine: the run trains here (not in a SLURM job elsewhere), so what needs the machine's
    devices (precision="16-mixed" needs CUDA) is checked too."""
    from model.model_checks import check_model_params  # imports torch (not lightning): the model checks live with the model

    dp: DataParams = params["DataParams"]
    mp = params["ModelParams"]
    tp: TrainParams = params["TrainParams"]
    problems: List[str] = []

    def collect(check: Any, *args: Any) -> None:
        try:
            check(*args)
        except ValueError as error:
            problems.append(str(error))

    collect(check_data_params, dp)
    collect(check_task_name, dp.dataset_name, data_path)
    if dp.dataset_name in SYNTHETIC_TASKS:
        collect(check_synthetic_params, dp)
    collect(check_train_params, tp)
    collect(check_device_params, tp)
    if on_this_machine:
        collect(check_precision_here, tp)
    collect(check_model_params, mp if mp.max_seq_len is not None else dataclasses.replace(mp, max_seq_len=dp.max_seq_len))
    if isinstance(mp.max_seq_len, int) and isinstance(dp.max_seq_len, int) and mp.max_seq_len < dp.max_seq_len:
        problems.append(f"ModelParams.max_seq_len={mp.max_seq_len} is shorter than DataParams.max_seq_len="
                        f"{dp.max_seq_len}: the model could not read a whole sample. Raise ModelParams.max_seq_len, "
                        "or leave it None (it then takes DataParams.max_seq_len).")
    return problems


def check_precision_here(tp: TrainParams) -> None:
    """precision="16-mixed" (float16 with a gradient scaler) trains on CUDA only: refuse it up front on a
    machine without CUDA, as train/run.py would after loading the data."""
    import torch
    if tp.precision == "16-mixed" and not torch.cuda.is_available():
        raise ValueError('TrainParams.precision="16-mixed" needs a CUDA GPU, and this machine has none: use '
                         '"auto", "32" or "bf16-mixed" on a CPU')
