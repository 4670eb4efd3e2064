"""Config -> data + model -> LightningModule -> Trainer -> checkpoints and images.

``train(config)`` is what ``python -m layoutdiffuse train -c CONFIG`` runs; ``load_checkpoint`` turns
any checkpoint written by it back into a ready-to-sample module without executing code from the
file (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from .config import ConfigError, validate
from .data.loader import ResumableDataLoader
from .data.registry import DATASETS
from .nn import UNet
from .training.callbacks import ImageLogger
from .training.registry import TRAININGS

log = logging.getLogger(__name__)
CKPT_KEY = "layoutdiffuse"


def experiment_dir(config: dict[str, Any]) -> Path:
    return Path(config.get("expt_dir", "experiments")) / config["expt_name"]


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (tensors and plain data only) with a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable checkpoint (corrupted, or not a torch checkpoint): {err}") from err
    if not isinstance(ckpt, dict) or CKPT_KEY not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a layoutdiffuse checkpoint (no '{CKPT_KEY}' entry); train one with `python -m layoutdiffuse train -c CONFIG`")
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


def build_module(config: dict[str, Any], model: UNet | None = None) -> pl.LightningModule:
    """The training LightningModule named by ``diffusion.training``."""
    model = model if model is not None else build_model(config)
    cls = TRAININGS.get(config["diffusion"].get("training", "DDPMTraining"))
    process, kwargs = cls.split_config(config["diffusion"])
    size = config["data"].get("image_size", 32)
    return cls(model, diffusion=process, image_shape=(model.config["in_channel"], size, size), seed=config.get("seed", 0), config=config, **kwargs)


class SaveConfig(pl.Callback):
    """Stores the config and the model architecture in every checkpoint (plain data only)."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = {"config": pl_module.config, "model": pl_module.model.config, "image_shape": list(pl_module.image_shape)}


def build_trainer(config: dict[str, Any], class_names: list[str] | None = None, **overrides: Any) -> pl.Trainer:
    out = experiment_dir(config)
    cb = config.get("callbacks", {})
    ckpt_args = {"save_last": True, "save_top_k": -1, **cb.get("checkpoint", {})}
    callbacks: list[pl.Callback] = [SaveConfig(), pl.callbacks.ModelCheckpoint(dirpath=out / "checkpoints", filename="step_{step:06d}", auto_insert_metric_name=False, **ckpt_args)]
    images = dict(cb.get("images", {}))
    if images:
        callbacks.append(ImageLogger(out / "images", class_names=class_names, **images))
    loggers: list[Any] = [pl.loggers.CSVLogger(out, name="logs", version="")]
    wandb = cb.get("wandb", {})
    if wandb.get("enabled"):
        loggers.append(pl.loggers.WandbLogger(project=wandb.get("project", "layoutdiffuse"), name=config["expt_name"], save_dir=str(out), offline=wandb.get("mode", "offline") == "offline", entity=wandb.get("entity")))
    args = {"max_steps": 1000, "log_every_n_steps": 10, "enable_model_summary": False, "logger": loggers, **config.get("trainer_args", {}), **overrides}
    return pl.Trainer(default_root_dir=str(out), callbacks=callbacks, **args)


def train(config: dict[str, Any], resume: str | Path | None = None, **trainer_overrides: Any) -> pl.LightningModule:
    """Train the experiment of ``config``; ``resume`` is a checkpoint path or ``"last"``."""
    validate(config)
    pl.seed_everything(config.get("seed", 0), workers=True, verbose=False)
    datasets = build_datasets(config)
    loaders = build_loaders(config, datasets)
    module = build_module(config)
    trainer = build_trainer(config, class_names=getattr(datasets["train"], "class_names", None), **trainer_overrides)
    ckpt_path = None
    if resume:
        ckpt_path = experiment_dir(config) / "checkpoints" / "last.ckpt" if str(resume) == "last" else Path(resume)
        if not ckpt_path.exists():
            raise FileNotFoundError(f"cannot resume: {ckpt_path} does not exist")
        read_checkpoint(ckpt_path)  # a clear error for a foreign or corrupted file
    trainer.fit(module, loaders["train"], loaders["val"] if trainer.limit_val_batches else None, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    module.trainer_ref = trainer
    return module


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> pl.LightningModule:
    """A trained module from a checkpoint (architecture and config are stored in it)."""
    ckpt = read_checkpoint(path, map_location)
    meta = ckpt[CKPT_KEY]
    config = meta["config"]
    model = UNet(**meta["model"])
    cls = TRAININGS.get(config["diffusion"].get("training", "DDPMTraining"))
    process, kwargs = cls.split_config(config["diffusion"])
    module = cls(model, diffusion=process, image_shape=tuple(meta["image_shape"]), seed=config.get("seed", 0), config=config, **kwargs)
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match its architecture: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    module.on_load_checkpoint(ckpt)
    return module.eval()
