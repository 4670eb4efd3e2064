"""JSON experiment configs: load, validate, and build objects by registered name.

A config has the sections of the original release::

    {"expt_name": str, "expt_dir": str, "seed": int,
     "denoising_model": {UNet arguments},            # or "adapt": {"foundation_ckpt", "layout"}
                                                     # or "adapt": {"foundation", "path", "layout", ...} (layoutdiffuse.sd)
                                                     # or "init_ckpt": path (fine-tune a trained model)
     "diffusion": {"training": name, schedule/process, optimizer, sampling, ...},
     "data": {"dataset": name, "batch_size", "num_workers", dataset arguments},
     "trainer_args": {pytorch_lightning.Trainer arguments},
     "callbacks": {"checkpoint": {...}, "images": {...}, "wandb": {...}}}

Every key is checked before anything is built: an unknown key, a wrong type or an unknown name
fails with the key path and what is allowed.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from .errors import UserError
from .schema import ConfigError, check_keys, check_name, check_type, signature_defaults, type_name

__all__ = ["ConfigError", "load_config", "set_override", "validate", "signature_defaults"]

SECTIONS = ("expt_name", "expt_dir", "seed", "denoising_model", "diffusion", "data", "trainer_args", "callbacks", "adapt", "init_ckpt", "description")
REQUIRED = ("expt_name", "diffusion", "data")
#: the sections that say where the model comes from (a config has exactly one)
MODEL_SECTIONS = ("denoising_model", "adapt", "init_ckpt")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a JSON config and validate it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config path {path} is a folder (or not a regular file); give a .json config such as configs/mnist.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except RecursionError:
        raise ConfigError(f"{path} nests JSON too deeply to be a config") from None
    validate(config)
    return config


def set_override(config: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply ``"a.b.c=value"`` (value parsed as JSON, else kept as a string) to a copy of ``config``."""
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like section.key=value")
    key, raw = assignment.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    config = copy.deepcopy(config)
    node = config
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{assignment}': '{p}' is not a section")
    node[last] = value
    return config


def check_range(section: dict[str, Any], key: str, path: str, low: float, high: float | None = None, integer: bool = True,
                high_open: bool = False) -> None:
    """``section[key]`` (when present) is an integer (or, without ``integer``, a finite number) in ``[low, high]``
    (``[low, high)`` with ``high_open``)."""
    if key not in section:
        return
    value = section[key]
    number = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    ok = number and not isinstance(value, bool) and value >= low and (high is None or (value < high if high_open else value <= high))
    if not ok:
        kind = "an integer" if integer else "a number"
        where = f">= {low}" if high is None else f"in [{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"config key '{path}' must be {kind} {where}, got {value!r}")


#: allowed keys (and example values for the type check) of the optimizer and lr_scheduler sections
OPTIMIZER_KEYS = {"lr": 0.0, "weight_decay": 0.0, "betas": [], "train": "", "adaptor_lr": None}
LR_SCHEDULER_KEYS = {"name": "", "warmup_steps": 0, "total_steps": None}


def check_diffusion_values(diffusion: dict[str, Any]) -> None:
    """Ranges of the numbers in the ``diffusion`` section, and the keys of its nested sections."""
    from .diffusion.gaussian import PREDICTIONS
    from .diffusion.schedule import SCHEDULES

    check_range(diffusion, "num_timesteps", "diffusion.num_timesteps", 1)
    for key, allowed in (("prediction", PREDICTIONS), ("schedule", SCHEDULES.names())):
        if key in diffusion and diffusion[key] not in allowed:
            raise ConfigError(f"config key 'diffusion.{key}': unknown {key} {diffusion[key]!r}; choose one of: {', '.join(allowed)}")
    check_range(diffusion, "ema_decay", "diffusion.ema_decay", 0, 1, integer=False, high_open=True)
    check_range(diffusion, "cond_drop_prob", "diffusion.cond_drop_prob", 0, 1, integer=False)
    if isinstance(diffusion.get("optimizer"), dict):
        optimizer = diffusion["optimizer"]
        check_keys(optimizer, OPTIMIZER_KEYS, "diffusion.optimizer")
        check_range(optimizer, "lr", "diffusion.optimizer.lr", 0, integer=False)
        check_range(optimizer, "weight_decay", "diffusion.optimizer.weight_decay", 0, integer=False)
        if optimizer.get("adaptor_lr") is not None:
            check_range(optimizer, "adaptor_lr", "diffusion.optimizer.adaptor_lr", 0, integer=False)
    if isinstance(diffusion.get("lr_scheduler"), dict):
        scheduler = diffusion["lr_scheduler"]
        check_keys(scheduler, LR_SCHEDULER_KEYS, "diffusion.lr_scheduler")
        check_range(scheduler, "warmup_steps", "diffusion.lr_scheduler.warmup_steps", 0)
        if scheduler.get("total_steps") is not None:
            check_range(scheduler, "total_steps", "diffusion.lr_scheduler.total_steps", 1)
    if isinstance(diffusion.get("sampling"), dict) and "guidance" in diffusion["sampling"]:
        from .diffusion.guidance import check_guidance

        try:
            check_guidance(diffusion["sampling"]["guidance"])
        except UserError as err:
            raise ConfigError(f"config key 'diffusion.sampling.guidance': {err}") from None


def check_adapt(adapt: Any) -> None:
    """The ``adapt`` section: a foundation checkpoint of this project (``foundation_ckpt``) or a
    diffusers foundation (``foundation``, ``path``, ...), and its ``layout`` adaptor options
    (:class:`~layoutdiffuse.nn.options.LayoutAdaptorOptions` / ``DiffusersLayoutOptions``). Imports
    no torch and no model: the schemas are plain data."""
    from .nn.options import DiffusersLayoutOptions, LayoutAdaptorOptions
    from .sd.spec import FOUNDATION_KEYS, FOUNDATION_REQUIRED, FOUNDATIONS

    diffusers = isinstance(adapt, dict) and "foundation" in adapt
    required = FOUNDATION_REQUIRED if diffusers else ("foundation_ckpt", "layout")
    check_keys(adapt, FOUNDATION_KEYS if diffusers else {"foundation_ckpt": "", "layout": {}}, "adapt")
    for key in required:
        if key not in adapt:
            raise ConfigError(f"config is missing 'adapt.{key}'")
    if diffusers and adapt["foundation"] not in FOUNDATIONS:
        raise ConfigError(f"config key 'adapt.foundation': unknown foundation '{adapt['foundation']}'; choose one of: {', '.join(FOUNDATIONS)}")
    (DiffusersLayoutOptions if diffusers else LayoutAdaptorOptions).parse(adapt["layout"], "adapt.layout")


def validate(config: dict[str, Any]) -> None:
    """Check every section of ``config``; raise :class:`ConfigError` naming the first bad key."""
    import pytorch_lightning as pl

    from .data.registry import DATASETS
    from .nn import ATTN_BLOCKS, RES_BLOCKS, UNet
    from .nn.options import LayoutAdaptorOptions
    from .nn.unet import check_arguments
    from .training.callbacks import CALLBACK_KEYS
    from .training.registry import TRAININGS

    if not isinstance(config, dict):
        raise ConfigError(f"a config must be a JSON object, got {type_name(config)}")
    for key in config:
        if key not in SECTIONS:
            raise ConfigError(f"unknown config section '{key}'; allowed sections: {', '.join(SECTIONS)}")
    for key in REQUIRED:
        if key not in config:
            raise ConfigError(f"config is missing the section '{key}'")
    if sum(key in config for key in MODEL_SECTIONS) != 1:
        raise ConfigError("config needs exactly one of 'denoising_model' (a model of its own), 'adapt' (adapt a foundation "
                          "checkpoint) or 'init_ckpt' (fine-tune a trained model's checkpoint)")
    check_type(config["expt_name"], "", "expt_name")
    check_type(config.get("expt_dir", ""), "", "expt_dir")
    check_type(config.get("seed", 0), 0, "seed")
    check_range(config, "seed", "seed", 0, 2**63 - 1)

    if "denoising_model" in config:
        model = config["denoising_model"]
        check_keys(model, signature_defaults(UNet), "denoising_model")
        if model.get("layout") is not None:
            LayoutAdaptorOptions.parse(model["layout"], "denoising_model.layout")
        check_name(RES_BLOCKS, model.get("res_block_type", "scale_shift"), "denoising_model.res_block_type")
        check_name(ATTN_BLOCKS, model.get("attn_block_type", "self"), "denoising_model.attn_block_type")
        try:
            check_arguments(model)
        except UserError as err:
            raise ConfigError(f"config section 'denoising_model': {err}") from None
    elif "init_ckpt" in config:
        check_type(config["init_ckpt"], "", "init_ckpt")
    else:
        check_adapt(config["adapt"])

    diffusion = config["diffusion"]
    training = check_name(TRAININGS, diffusion.get("training", "DDPMTraining"), "diffusion.training")
    check_keys(diffusion, training.config_keys(), "diffusion")
    check_diffusion_values(diffusion)

    data = config["data"]
    factory = check_name(DATASETS, data.get("dataset"), "data.dataset")
    check_keys(data, {"dataset": "", "batch_size": 1, "val_batch_size": 1, "num_workers": 0, **signature_defaults(factory, skip=("split",))}, "data")
    for key, low in (("image_size", 1), ("batch_size", 1), ("val_batch_size", 1), ("num_workers", 0)):
        check_range(data, key, f"data.{key}", low)
    if "image_size" in data and "denoising_model" in config:
        levels = len(config["denoising_model"].get("channel_mult", signature_defaults(UNet)["channel_mult"]))
        if data["image_size"] % 2 ** (levels - 1):
            raise ConfigError(f"config key 'data.image_size' ({data['image_size']}) must be divisible by {2 ** (levels - 1)}: "
                              f"the UNet halves it {levels - 1} times (denoising_model.channel_mult has {levels} levels)")

    trainer_args = config.get("trainer_args", {})
    check_keys(trainer_args, signature_defaults(pl.Trainer), "trainer_args", types=False)  # the Trainer checks the rest of its types
    for key in ("max_steps", "max_epochs"):  # -1 (and null for max_epochs) mean "no limit" to Lightning
        value = trainer_args.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
                raise ConfigError(f"config key 'trainer_args.{key}' must be an integer >= 1, or -1 for no limit; got {trainer_args[key]!r}")
    callbacks = config.get("callbacks", {})
    check_keys(callbacks, {k: {} for k in CALLBACK_KEYS}, "callbacks")
    for name, section in callbacks.items():
        check_keys(section, CALLBACK_KEYS[name], f"callbacks.{name}")
