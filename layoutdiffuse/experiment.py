"""Config -> data + model -> LightningModule -> Trainer -> checkpoints and images.

``train(config)`` is what ``python -m layoutdiffuse train -c CONFIG`` runs. Modules are built by
:mod:`layoutdiffuse.factory` (``build_module``, ``load_checkpoint``) and checkpoint files are read and
written by :mod:`layoutdiffuse.checkpoints`; their names are importable from here too.
"""
from __future__ import annotations

import csv
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from .checkpoints import check_fits, export_weights, read_checkpoint, read_weights, sampling_state_dict  # noqa: F401 (public here too)
from .config import validate
from .schema import ConfigError
from .data.loader import ResumableDataLoader
from .data.registry import DATASETS
from .factory import build_model, build_module, load_checkpoint  # noqa: F401 (public here too)
from .files import AtomicCheckpointIO, check_readable
from .sd.foundation import foundation_kind
from .sd.spec import is_foundation_config
from .training.callbacks import Interrupted, SaveOnSignal, build_callbacks
from .training.progress import ProgressLog, StepProgressBar, interactive
from .errors import UserError, MissingFileError

log = logging.getLogger(__name__)


def experiment_dir(config: dict[str, Any]) -> Path:
    """``<expt_dir>/<expt_name>``. ``expt_dir`` is required: a run never writes into whatever folder
    it happened to be started from."""
    if "expt_dir" not in config:
        raise ConfigError(f"config '{config.get('expt_name')}' has no 'expt_dir': say where its checkpoints and logs go, "
                          'e.g. "expt_dir": "experiments" (or --set expt_dir=DIR)')
    return Path(config["expt_dir"]) / config["expt_name"]


@contextmanager
def experiment_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock`` for a run: a second run of the same experiment folder refuses to start
    while the first is alive (the lock dies with its process, even on SIGKILL)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(f"experiment folder {out} is in use by a running training ({holder}); "
                            "wait for it, or give this run another expt_name or expt_dir") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_datasets(config: dict[str, Any]) -> dict[str, Any]:
    data = dict(config["data"])
    factory = DATASETS.get(data.pop("dataset"))
    for key in ("batch_size", "val_batch_size", "num_workers"):
        data.pop(key, None)
    return {split: factory(split=split, **data) for split in ("train", "val")}


def build_loaders(config: dict[str, Any], datasets: dict[str, Any]) -> dict[str, DataLoader]:
    data = config["data"]
    bs, workers = data.get("batch_size", 64), data.get("num_workers", 0)
    collate = getattr(datasets["train"], "collate", None)
    kwargs = dict(num_workers=workers, collate_fn=collate, persistent_workers=workers > 0)
    return {
        "train": ResumableDataLoader(datasets["train"], batch_size=bs, shuffle=True, seed=config.get("seed", 0), drop_last=True, **kwargs),
        "val": DataLoader(datasets["val"], batch_size=data.get("val_batch_size", bs), shuffle=False, **kwargs),
    }


def build_trainer(config: dict[str, Any], class_names: list[str] | None = None, **overrides: Any) -> pl.Trainer:
    out = experiment_dir(config)
    cb = config.get("callbacks", {})
    callbacks = build_callbacks(cb, out, class_names)
    loggers: list[Any] = [pl.loggers.CSVLogger(out, name="logs", version="")]
    wandb = cb.get("wandb", {})
    if wandb.get("enabled"):
        loggers.append(pl.loggers.WandbLogger(project=wandb.get("project", "layoutdiffuse"), name=config["expt_name"], save_dir=str(out), offline=wandb.get("mode", "offline") == "offline", entity=wandb.get("entity")))
    args = {"max_steps": 1000, "log_every_n_steps": 10, "enable_model_summary": False, "logger": loggers, **config.get("trainer_args", {}), **overrides}
    # a live reader gets the step bar; redirected output gets periodic log lines instead of bar redraws
    show_bar = args.get("enable_progress_bar", True) and interactive()
    args["enable_progress_bar"] = show_bar
    callbacks += [StepProgressBar()] if show_bar else []
    callbacks.append(ProgressLog(periodic=not show_bar))
    args["plugins"] = [AtomicCheckpointIO(), *(args.get("plugins") or [])]  # every checkpoint written atomically, on any file system
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        return pl.Trainer(default_root_dir=str(out), callbacks=callbacks, **args)
    except (MisconfigurationException, ValueError, TypeError) as err:  # Lightning refuses some values with a plain ValueError
        raise ConfigError(f"config 'trainer_args' is refused by Lightning's Trainer: {str(err)[:300]}") from None


def keep_csv_history(trainer: pl.Trainer, before_step: int) -> None:
    """Carry the rows of ``metrics.csv`` logged before ``before_step`` into a resumed run.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts; a resumed run would
    otherwise lose the loss history of everything before the checkpoint. Rows from ``before_step``
    on are dropped because the resumed run logs those steps again.
    """
    if trainer.global_rank != 0:  # only rank 0 writes the CSV
        return
    for logger in trainer.loggers:
        if not isinstance(logger, pl.loggers.CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            rows = [{k: int(v) if v.lstrip("-").isdigit() else float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]
        rows = [row for row in rows if row.get("step", before_step) < before_step]
        logger.experiment.metrics[:0] = rows  # the writer (created here) has just removed the old file


def refuse_overwrite(out: Path, resume: Any, overwrite: bool) -> None:
    """A run that does not resume never silently replaces the checkpoints of an earlier run of the
    same folder; with ``overwrite`` they are removed first (a log line names them)."""
    old = sorted((out / "checkpoints").glob("*.ckpt")) if (out / "checkpoints").is_dir() else []
    if resume or not old:
        return
    if not overwrite:
        raise UserError(f"experiment folder {out} already holds checkpoints of a run ({', '.join(p.name for p in old[:3])}"
                        f"{', ...' if len(old) > 3 else ''}); continue it with --resume last, give this run another "
                        "expt_name (--set expt_name=NAME), or start it over with --overwrite")
    log.warning("--overwrite: removing %d checkpoint(s) of the earlier run in %s", len(old), out / "checkpoints")
    for path in old:
        path.unlink()


def train(config: dict[str, Any], resume: str | Path | None = None, overwrite: bool = False, **trainer_overrides: Any) -> pl.LightningModule:
    """Train the experiment of ``config``; ``resume`` is a checkpoint path or ``"last"``. A folder
    holding checkpoints is only started over with ``overwrite``."""
    validate(config)
    if not overwrite:  # fail before the data loads
        refuse_overwrite(experiment_dir(config), resume, False)
    if is_foundation_config(config):  # fail before the data loads when the foundation's weights are missing
        spec = config["adapt"]
        foundation_kind(spec["foundation"]).check_files(spec["path"], spec.get("config"))
    pl.seed_everything(config.get("seed", 0), workers=True, verbose=False)
    datasets = build_datasets(config)
    loaders = build_loaders(config, datasets)
    if len(loaders["train"]) == 0:  # full batches only (drop_last): the run would train nothing and say "done"
        raise ConfigError(f"config key 'data.batch_size' ({loaders['train'].batch_size}) is larger than the training set "
                          f"({len(datasets['train'])} samples): not one full batch; lower data.batch_size or use more data")
    module = build_module(config, class_names=list(getattr(datasets["train"], "class_names", None) or []))
    with experiment_lock(experiment_dir(config)):
        refuse_overwrite(experiment_dir(config), resume, overwrite)  # again, now that no other run can write there
        trainer = build_trainer(config, class_names=module.class_names or None, **trainer_overrides)
        fit(trainer, module, loaders, config, resume)
    return module


def fit(trainer: pl.Trainer, module: pl.LightningModule, loaders: dict[str, DataLoader], config: dict[str, Any], resume: str | Path | None) -> None:
    """``trainer.fit``, resuming from ``resume`` (a path or ``"last"``) after checking it loads safely."""
    ckpt_path = None
    if resume:
        ckpt_path = experiment_dir(config) / "checkpoints" / "last.ckpt" if str(resume) == "last" else Path(resume)
        if not ckpt_path.exists():
            raise MissingFileError(f"cannot resume: {ckpt_path} does not exist")
        check_readable(ckpt_path, "--resume checkpoint")
        ckpt = read_checkpoint(ckpt_path)  # a clear error for a foreign or corrupted file
        from .state_dicts import state_dict_mismatch

        if mismatch := state_dict_mismatch(module, ckpt["state_dict"]):  # another architecture: Lightning would fail mid-restore
            raise UserError(f"cannot resume from {ckpt_path}: its weights do not fit this config's model ({mismatch[:400]}); "
                            "resume with the config it was trained with, or start a new expt_name")
        keep_csv_history(trainer, ckpt["global_step"])
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(module, loaders["train"], loaders["val"] if trainer.limit_val_batches else None, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    except SIGTERMException:  # stopped by SIGTERM/SIGINT: exit 143/130, not 0 (the checkpoint is written by SaveOnSignal)
        stop = next((c for c in trainer.callbacks if isinstance(c, SaveOnSignal)), None)
        raise (Interrupted(stop.signum, stop.saved) if stop else Interrupted()) from None
    except MisconfigurationException as err:  # what Lightning refuses only once fit starts
        raise ConfigError(f"config 'trainer_args' is refused by Lightning: {str(err)[:300]}") from None

