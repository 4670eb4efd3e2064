"""Config -> data + model -> LightningModule -> Trainer -> checkpoints and images.

``train(config)`` is what ``python -m layoutdiffuse train -c CONFIG`` runs; ``load_checkpoint`` turns
any checkpoint written by it back into a ready-to-sample module without executing code from the
file (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from .config import check_checkpoint_metadata, validate
from .schema import ConfigError
from .data.loader import ResumableDataLoader
from .data.registry import DATASETS
from .files import AtomicCheckpointIO, check_readable, checkpoint_format, save_safetensors
from .nn import UNet
from .sd.spec import is_foundation_config
from .training.callbacks import CKPT_KEY, Interrupted, SaveOnSignal, build_callbacks, checkpoint_meta
from .training.progress import ProgressLog, StepProgressBar, interactive
from .training.registry import TRAININGS
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


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (tensors and plain data only) with a clear error."""
    path = check_readable(path, "checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # never echo torch's text: it advises loading the file unsafely
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # not a pickle of objects: damaged, or not a checkpoint at all
            reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
            raise UserError(f"{path} is not a readable checkpoint (corrupted, or not a torch checkpoint)"
                            + (f": {reason.group(1).strip()}" if reason else "")) from None
        what = f" (it references {found.group(1)})"
        raise UserError(f"{path} holds pickled Python objects{what}, not only tensors and plain data; it is refused because "
                        "loading it could run code. Use a checkpoint written by layoutdiffuse, or a .safetensors export") from None
    except Exception as err:
        raise UserError(f"{path} is not a readable checkpoint (corrupted, or not a torch checkpoint): {err or type(err).__name__}") from err
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
    """The denoising model: from ``denoising_model``, a foundation checkpoint adapted by ``adapt``, or
    the sampling (EMA) weights of a trained module's checkpoint or export (``init_ckpt``, to fine-tune)."""
    if "denoising_model" in config:
        return UNet(**config["denoising_model"])
    if "init_ckpt" in config:
        log.info("fine-tuning %s", config["init_ckpt"])
        return load_checkpoint(config["init_ckpt"]).sampling_model.train()
    from .adapt import adapt

    spec = config["adapt"]
    ckpt = read_checkpoint(spec["foundation_ckpt"])
    check_fits(Path(spec["foundation_ckpt"]), ckpt[CKPT_KEY]["model"], ckpt["state_dict"])
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
        from .sd.foundation import check_foundation_files

        check_foundation_files(config["adapt"]["foundation"], config["adapt"]["path"], config["adapt"].get("config"))
    pl.seed_everything(config.get("seed", 0), workers=True, verbose=False)
    datasets = build_datasets(config)
    loaders = build_loaders(config, datasets)
    if len(loaders["train"]) == 0:  # full batches only (drop_last): the run would train nothing and say "done"
        raise ConfigError(f"config key 'data.batch_size' ({loaders['train'].batch_size}) is larger than the training set "
                          f"({len(datasets['train'])} samples): not one full batch; lower data.batch_size or use more data")
    module = build_module(config)
    module.class_names = list(getattr(datasets["train"], "class_names", None) or [])
    with experiment_lock(experiment_dir(config)):
        refuse_overwrite(experiment_dir(config), resume, overwrite)  # again, now that no other run can write there
        trainer = build_trainer(config, class_names=module.class_names or None, **trainer_overrides)
        fit(trainer, module, loaders, config, resume)
    module.trainer_ref = trainer
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
            state = {f"ema.module.{k}": f.get_tensor(k) for k in f.keys()}
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # others are checked against the model
    except Exception as err:
        raise UserError(f"{path} is not a readable safetensors file: {err}") from err
    if meta is None:
        raise UserError(f"{path} is not a layoutdiffuse export (no '{CKPT_KEY}' metadata)")
    try:
        meta = json.loads(meta)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: its '{CKPT_KEY}' metadata is not valid JSON ({err})") from None
    return {CKPT_KEY: meta, "state_dict": state}


def describe(architecture: dict[str, Any]) -> str:
    if "unet_class" in architecture:
        unet = architecture.get("unet") if isinstance(architecture.get("unet"), dict) else {}
        return f"{architecture['unet_class']}(" + ", ".join(f"{k}={unet[k]}" for k in ("block_out_channels", "layers_per_block") if k in unet) + ", layout adaptor)"
    keys = ("base_channel", "channel_mult", "num_res_blocks", "attn_levels", "num_heads")
    return "UNet(" + ", ".join(f"{k}={architecture[k]}" for k in keys if k in architecture) + (", layout adaptor)" if architecture.get("layout") else ")")


def check_fits(path: Path, architecture: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
    """The checkpoint's sampling tensors must be exactly the UNet its metadata describes: same keys,
    same shapes. The UNet is built on the ``meta`` device (no memory), so an architecture announcing
    huge tensors is refused before anything is allocated."""
    if not isinstance(architecture, dict):
        raise UserError(f"checkpoint {path}: its model description must be an object, got {type(architecture).__name__}")
    try:
        with torch.device("meta"):
            probe = model_from_architecture(architecture)
    except UserError as err:
        raise UserError(f"checkpoint {path} describes an invalid model: {err}") from None
    except (TypeError, KeyError, ValueError) as err:
        raise UserError(f"checkpoint {path} describes a model this version cannot build: {str(err)[:200]}") from None
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in sampling_state_dict(state_dict).items() if not k.startswith("n_averaged")}
    problems = [f"{k}: {list(have[k])} in the file, {list(want[k])} in the model" for k in want if k in have and have[k] != want[k]]
    problems += [f"missing {k}" for k in want if k not in have] + [f"unexpected {k}" for k in have if k not in want]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} keys in all)" if len(problems) > 4 else "")
        raise UserError(f"checkpoint {path} does not fit the model it describes, {describe(architecture)}: {shown}")


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
    path = check_readable(path, "checkpoint")
    if checkpoint_format(path) == "safetensors":  # by content: an export named .ckpt (or nothing) reads too
        ckpt = read_weights(path, map_location)
    else:
        ckpt = read_checkpoint(path, map_location)
    meta = ckpt[CKPT_KEY]
    try:
        check_checkpoint_metadata(meta)  # types and every size bounded, before anything is built
    except UserError as err:
        raise UserError(f"checkpoint {path}: its '{CKPT_KEY}' metadata is damaged or foreign: {err}") from None
    config = meta["config"]
    if not is_foundation_config(config):  # the denoiser's tensors checked on the meta device before anything is allocated
        check_fits(path, meta["model"], ckpt["state_dict"])
    try:
        module = build_module(config, architecture=meta["model"], image_shape=tuple(meta["image_shape"]))
    except UserError as err:
        raise UserError(f"checkpoint {path}: its metadata describes a model that cannot be built: {err}") from None
    module.class_names = meta.get("class_names") or []
    state = ckpt["state_dict"]
    if not any(k.startswith("model.") for k in state):  # a weights export: EMA weights only
        state = {**state, **{"model." + k[len("ema.module."):]: v for k, v in state.items()}}
        if module.ema is not None:
            state["ema.n_averaged"] = torch.tensor(1)
        else:  # a module without EMA (ema_decay 0): the weights are its model's
            state = {k: v for k, v in state.items() if not k.startswith("ema.module.")}
    from .state_dicts import dtype_mismatch

    if wrong := dtype_mismatch(module.state_dict(), state):  # a bool or int8 tensor would be cast silently
        raise UserError(f"checkpoint {path} does not fit the model it describes: {wrong}")
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # size mismatches the UNet check above cannot see (foundation modules)
        raise UserError(f"checkpoint {path} does not fit the model it describes: {str(err).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not match its architecture: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    module.on_load_checkpoint(ckpt)
    return module.eval()
