"""Config -> data + model -> LightningModule -> Trainer -> checkpoints and images.

``train(config)`` is what ``python -m layoutdiffuse train -c CONFIG`` runs; ``load_checkpoint`` turns
any checkpoint written by it back into a ready-to-sample module without executing code from the
file (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from .config import validate
from .data.loader import ResumableDataLoader
from .data.registry import DATASETS
from .files import save_safetensors
from .nn import UNet
from .sd.spec import is_foundation_config
from .training.callbacks import CKPT_KEY, build_callbacks, checkpoint_meta
from .training.progress import ProgressLog, StepProgressBar, interactive
from .training.registry import TRAININGS
from .errors import UserError, MissingFileError

log = logging.getLogger(__name__)


def experiment_dir(config: dict[str, Any]) -> Path:
    return Path(config.get("expt_dir", "experiments")) / config["expt_name"]


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (tensors and plain data only) with a clear error."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise UserError(f"{path} is not a readable checkpoint (corrupted, or not a torch checkpoint): {err}") from err
    if not isinstance(ckpt, dict) or CKPT_KEY not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a layoutdiffuse checkpoint (no '{CKPT_KEY}' entry); train one with `python -m layoutdiffuse train -c CONFIG`")
    return ckpt


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


def build_model(config: dict[str, Any]) -> UNet:
    """The denoising model: from ``denoising_model``, or a foundation checkpoint adapted by ``adapt``."""
    if "denoising_model" in config:
        return UNet(**config["denoising_model"])
    from .adapt import adapt

    spec = config["adapt"]
    ckpt = read_checkpoint(spec["foundation_ckpt"])
    foundation = UNet(**ckpt[CKPT_KEY]["model"])
    foundation.load_state_dict(sampling_state_dict(ckpt["state_dict"]))
    log.info("adapting foundation %s", spec["foundation_ckpt"])
    return adapt(foundation, spec["layout"])


def sampling_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights used for sampling (EMA when present) from a module state dict, as a UNet state dict."""
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in state_dict) else "model."
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def build_module(config: dict[str, Any], model: UNet | None = None, architecture: dict[str, Any] | None = None,
                 image_shape: tuple[int, ...] | None = None) -> pl.LightningModule:
    """The training LightningModule of ``config`` -- the one factory behind ``train``, ``load_checkpoint``
    and the notebooks.

    ``model``: a denoising model to use instead of building one. ``architecture`` and ``image_shape``:
    the ``model`` and ``image_shape`` entries stored in a checkpoint, to rebuild a trained module
    (randomly initialised; load its state dict next). A diffusers foundation config
    (``adapt.foundation``) loads the frozen foundation parts and inserts the adaptor
    (:func:`~layoutdiffuse.sd.foundation.build_foundation_module`).
    """
    if model is None and is_foundation_config(config):  # diffusers foundation + frozen autoencoder / text encoder
        from .sd.foundation import build_foundation_module

        return build_foundation_module(config, architecture=architecture)
    if model is None:
        model = model_from_architecture(architecture) if architecture is not None else build_model(config)
    cls = TRAININGS.get(config["diffusion"].get("training", "DDPMTraining"))
    process, kwargs = cls.split_config(config["diffusion"])
    if image_shape is None:
        size = config["data"].get("image_size", 32)
        image_shape = (model.config["in_channel"], size, size)
    return cls(model, diffusion=process, image_shape=tuple(image_shape), seed=config.get("seed", 0), config=config, **kwargs)


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
    return pl.Trainer(default_root_dir=str(out), callbacks=callbacks, **args)


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


def train(config: dict[str, Any], resume: str | Path | None = None, **trainer_overrides: Any) -> pl.LightningModule:
    """Train the experiment of ``config``; ``resume`` is a checkpoint path or ``"last"``."""
    validate(config)
    if is_foundation_config(config):  # fail before the data loads when the foundation's weights are missing
        from .sd.foundation import check_foundation_files

        check_foundation_files(config["adapt"]["foundation"], config["adapt"]["path"], config["adapt"].get("config"))
    pl.seed_everything(config.get("seed", 0), workers=True, verbose=False)
    datasets = build_datasets(config)
    loaders = build_loaders(config, datasets)
    module = build_module(config)
    module.class_names = list(getattr(datasets["train"], "class_names", None) or [])
    trainer = build_trainer(config, class_names=module.class_names or None, **trainer_overrides)
    ckpt_path = None
    if resume:
        ckpt_path = experiment_dir(config) / "checkpoints" / "last.ckpt" if str(resume) == "last" else Path(resume)
        if not ckpt_path.exists():
            raise MissingFileError(f"cannot resume: {ckpt_path} does not exist")
        start_step = read_checkpoint(ckpt_path)["global_step"]  # a clear error for a foreign or corrupted file
        keep_csv_history(trainer, start_step)
    trainer.fit(module, loaders["train"], loaders["val"] if trainer.limit_val_batches else None, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    module.trainer_ref = trainer
    return module


def export_weights(module: pl.LightningModule, path: str | Path, half: bool = True) -> Path:
    """Write the sampling weights (EMA when kept) and the metadata as one small ``.safetensors`` file."""
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in module.sampling_model.state_dict().items() if not k.startswith("n_averaged")}
    return save_safetensors(state, path, metadata={CKPT_KEY: json.dumps(checkpoint_meta(module))})


def read_weights(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """A ``.safetensors`` export as a checkpoint dict (``state_dict`` under ``ema.module.``)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = (f.metadata() or {}).get(CKPT_KEY)
            state = {f"ema.module.{k}": f.get_tensor(k).float() for k in f.keys()}
    except Exception as err:
        raise UserError(f"{path} is not a readable safetensors file: {err}") from err
    if meta is None:
        raise UserError(f"{path} is not a layoutdiffuse export (no '{CKPT_KEY}' metadata)")
    return {CKPT_KEY: json.loads(meta), "state_dict": state}


def model_from_architecture(arch: dict[str, Any]) -> torch.nn.Module:
    """The denoiser of a checkpoint's ``model`` entry: a :class:`UNet`, or a diffusers layout UNet
    (``unet_class`` set: e.g. a converted release checkpoint without its foundation)."""
    if "unet_class" in arch:
        from .sd.layout_unet import LayoutDiffusersUNet

        return LayoutDiffusersUNet.from_config(arch)
    return UNet(**arch)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> pl.LightningModule:
    """A trained module from a Lightning checkpoint or a ``.safetensors`` export (architecture and
    config are stored in it). Never unpickles code: ``weights_only=True`` / safetensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.exists():
            raise MissingFileError(f"weights file {path} does not exist")
        ckpt = read_weights(path, map_location)
    else:
        ckpt = read_checkpoint(path, map_location)
    meta = ckpt[CKPT_KEY]
    config = meta["config"]
    module = build_module(config, architecture=meta["model"], image_shape=tuple(meta["image_shape"]))
    module.class_names = meta.get("class_names") or []
    state = ckpt["state_dict"]
    if not any(k.startswith("model.") for k in state):  # a weights export: EMA weights only
        state = {**state, **{"model." + k[len("ema.module."):]: v for k, v in state.items()}}
        if module.ema is not None:
            state["ema.n_averaged"] = torch.tensor(1)
        else:  # a module without EMA (ema_decay 0): the weights are its model's
            state = {k: v for k, v in state.items() if not k.startswith("ema.module.")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not match its architecture: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    module.on_load_checkpoint(ckpt)
    return module.eval()
