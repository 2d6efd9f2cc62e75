"""The wandb logger of a run, which never stops at a login prompt.

Online when an API key is set up (`wandb login`, or WANDB_API_KEY) and the server answers; otherwise
the run is logged offline (said once, with the command to upload it later) and training goes on.
WANDB_MODE=offline / disabled are respected. The entity (user or team) comes from --wandb-entity or
WANDB_ENTITY. Runs are written under $WANDB_DIR/wandb/ (default: ./wandb/).
"""
import netrc
import os
import socket
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple
from urllib.parse import urlparse

DEFAULT_BASE_URL = "https://api.wandb.ai"
_reason_told = False  # the reason for going offline is printed once per process


def wandb_logger(project: str, name: Optional[str], config: Dict[str, Any], entity: Optional[str] = None,
                 group: Optional[str] = None, tags: Sequence[str] = ()) -> Any:
    """A Lightning WandbLogger whose run has started (online if possible, else offline).
    group, tags: wandb's run group and tags (train/run.py: the config name and the swept values)."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    mode, reason = choose_mode()
    save_dir = Path(os.environ.get("WANDB_DIR") or ".")
    save_dir.mkdir(parents=True, exist_ok=True)

    def make(mode: str) -> Any:
        logger = WandbLogger(project=project, name=name, entity=entity or os.environ.get("WANDB_ENTITY") or None,
                             config=config, save_dir=str(save_dir), mode=mode, group=group, tags=list(tags) or None,
                             settings=wandb.Settings(init_timeout=60))
        logger.experiment  # start the run now, so that a failure shows here and not mid-training
        return logger

    try:
        logger = make(mode)
    except Exception as error:  # a wrong key, an unreachable or slow server: go on offline
        if mode != "online":
            raise
        mode, reason = "offline", f"starting an online run failed ({type(error).__name__}: {error})"
        logger = make(mode)
    if mode == "offline":
        tell_offline(Path(logger.experiment.dir).parent, reason)
    return logger


def choose_mode() -> Tuple[str, str]:
    """("online" | "offline" | "disabled", why)."""
    env_mode = os.environ.get("WANDB_MODE", "").lower()
    if env_mode in ("offline", "dryrun"):
        return "offline", "WANDB_MODE is offline"
    if env_mode == "disabled":
        return "disabled", "WANDB_MODE is disabled"
    host, port = _server()
    if not has_api_key(host):
        return "offline", "not logged in to wandb (run `wandb login` once, or set WANDB_API_KEY)"
    if not reachable(host, port):
        return "offline", f"the wandb server {host} cannot be reached"
    return "online", ""


def has_api_key(host: str) -> bool:
    """An API key in WANDB_API_KEY or in the netrc file that `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    candidates = [os.environ.get("NETRC"), Path.home() / ".netrc", Path.home() / "_netrc"]
    for path in filter(None, candidates):
        try:
            if Path(path).is_file() and netrc.netrc(str(path)).authenticators(host):
                return True
        except (netrc.NetrcParseError, OSError):
            continue
    return False


def reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tell_offline(run_dir: Path, reason: str) -> None:
    global _reason_told
    if not _reason_told:
        print(f"wandb: {reason}: logging offline.")
        _reason_told = True
    print(f"wandb: offline run in {run_dir} ; upload it later with: wandb sync {run_dir}")


def _server() -> Tuple[str, int]:
    url = urlparse(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
