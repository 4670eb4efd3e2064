"""JSON experiment configs: load, validate, and build objects by registered name.

A config has the sections of the original release::

    {"expt_name": str, "expt_dir": str, "seed": int,
     "denoising_model": {UNet arguments},            # or "adapt": {"foundation_ckpt", "layout"}
                                                     # or "adapt": {"foundation", "path", "layout", ...} (layoutdiffuse.sd)
                                                     # or "init_ckpt": path (fine-tune a trained model)
     "warm_start": {"ckpt", "parts"},                # optional: tensors copied by name (layoutdiffuse.warm_start)
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
from .schema import (MAX_BATCH, MAX_BATCH_SIZE, MAX_CONFIG_BYTES, MAX_IMAGE_SIZE, MAX_TIMESTEPS, ConfigError, check_folder_name, check_keys,
                     check_name, check_type, short, signature_defaults, type_name)

__all__ = ["ConfigError", "load_config", "set_override", "validate", "signature_defaults"]

SECTIONS = ("expt_name", "expt_dir", "seed", "denoising_model", "diffusion", "data", "trainer_args", "callbacks", "adapt", "init_ckpt", "warm_start",
            "description")
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
    from .files import read_json

    config = read_json(path, "config file", ConfigError, MAX_CONFIG_BYTES)
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
        raise ConfigError(f"config key '{path}' must be {kind} {where}, got {short(value)}")


#: allowed keys (and example values for the type check) of the optimizer and lr_scheduler sections
OPTIMIZER_KEYS = {"lr": 0.0, "weight_decay": 0.0, "betas": [], "train": "", "adaptor_lr": None}
LR_SCHEDULER_KEYS = {"name": "", "warmup_steps": 0, "total_steps": None}


def check_diffusion_values(diffusion: dict[str, Any]) -> None:
    """Ranges of the numbers in the ``diffusion`` section, and the keys of its nested sections."""
    from .diffusion.gaussian import PREDICTIONS
    from .diffusion.schedule import SCHEDULES

    for key in ("optimizer", "lr_scheduler", "sampling"):
        if diffusion.get(key) is not None and not isinstance(diffusion[key], dict):
            raise ConfigError(f"config key 'diffusion.{key}' must be an object, got {type_name(diffusion[key])} ({short(diffusion[key])})")
    check_range(diffusion, "num_timesteps", "diffusion.num_timesteps", 1, MAX_TIMESTEPS)
    for key, allowed in (("prediction", PREDICTIONS), ("schedule", SCHEDULES.names())):
        if key in diffusion and diffusion[key] not in allowed:
            raise ConfigError(f"config key 'diffusion.{key}': unknown {key} {short(diffusion[key])}; choose one of: {', '.join(allowed)}")
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
    if isinstance(diffusion.get("sampling"), dict):
        check_sampling_section(diffusion["sampling"], "diffusion.sampling")


def check_sampling_section(sampling: dict[str, Any], path: str) -> None:
    """A section of sampler settings (``diffusion.sampling``, ``callbacks.images``): a known ``sampler``,
    ``steps`` in [1, 10000] (a sampler refuses more steps than the model's timesteps, and every call
    may give its own), ``guidance`` in [0, 50], ``eta`` >= 0, ``seed`` in [0, 2**63), ``n`` in [1, 1024]
    -- checked when the config is read, not when the model is first sampled."""
    from .diffusion import SAMPLERS
    from .schema import check_guidance, check_seed

    if "sampler" in sampling:
        check_name(SAMPLERS, sampling["sampler"], f"{path}.sampler")
    check_range(sampling, "steps", f"{path}.steps", 1, MAX_TIMESTEPS)
    check_range(sampling, "n", f"{path}.n", 1, MAX_BATCH)
    check_range(sampling, "eta", f"{path}.eta", 0, integer=False)
    if "clip" in sampling:
        check_type(sampling["clip"], True, f"{path}.clip")
    for key, check in (("guidance", check_guidance), ("seed", check_seed)):
        if key in sampling:
            try:
                check(sampling[key])
            except UserError as err:
                raise ConfigError(f"config key '{path}.{key}': {err}") from None


#: what a ``warm_start`` copies (:mod:`layoutdiffuse.warm_start`)
WARM_START_PARTS = ("backbone", "adaptor", "all")


def check_warm_start(spec: Any) -> None:
    """The ``warm_start`` section: ``{"ckpt": path, "parts": one of WARM_START_PARTS}``."""
    check_keys(spec, {"ckpt": "", "parts": ""}, "warm_start")
    if "ckpt" not in spec:
        raise ConfigError("config is missing 'warm_start.ckpt' (the trained model to copy tensors from)")
    if spec.get("parts", "all") not in WARM_START_PARTS:
        raise ConfigError(f"config key 'warm_start.parts': unknown part {spec['parts']!r}; choose one of: {', '.join(WARM_START_PARTS)}")


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
    check_folder_name(config["expt_name"], "expt_name")
    check_type(config.get("expt_dir", ""), "", "expt_dir")
    for key in ("denoising_model", "diffusion", "data", "trainer_args", "callbacks"):  # before anything reads inside them
        if key in config and not isinstance(config[key], dict):
            raise ConfigError(f"config key '{key}' must be an object, got {type_name(config[key])} ({short(config[key])})")
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
        if "warm_start" in config:
            raise ConfigError("config section 'warm_start' starts a new model ('denoising_model' or 'adapt'); 'init_ckpt' "
                              "already fine-tunes a whole trained model")
    else:
        check_adapt(config["adapt"])
    if "warm_start" in config:
        check_warm_start(config["warm_start"])

    diffusion = config["diffusion"]
    training = check_name(TRAININGS, diffusion.get("training", "DDPMTraining"), "diffusion.training")
    check_keys(diffusion, training.config_keys(), "diffusion")
    check_diffusion_values(diffusion)

    data = config["data"]
    factory = check_name(DATASETS, data.get("dataset"), "data.dataset")
    check_keys(data, {"dataset": "", "batch_size": 1, "val_batch_size": 1, "num_workers": 0, **signature_defaults(factory, skip=("split",))}, "data")
    for key, low, high in (("image_size", 1, MAX_IMAGE_SIZE), ("batch_size", 1, MAX_BATCH_SIZE), ("val_batch_size", 1, MAX_BATCH_SIZE),
                           ("num_workers", 0, 256)):
        check_range(data, key, f"data.{key}", low, high)
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
                raise ConfigError(f"config key 'trainer_args.{key}' must be an integer >= 1, or -1 for no limit; got {short(trainer_args[key])}")
    check_trainer_values(trainer_args)
    callbacks = config.get("callbacks", {})
    check_keys(callbacks, {k: {} for k in CALLBACK_KEYS}, "callbacks")
    for name, section in callbacks.items():
        check_keys(section, CALLBACK_KEYS[name], f"callbacks.{name}")
    check_callback_values(callbacks)


#: Trainer arguments the experiment sets itself (from expt_dir and the callbacks section)
TRAINER_OWN = {"callbacks": "the 'callbacks' section", "default_root_dir": "'expt_dir' and 'expt_name'"}


def check_trainer_values(trainer_args: dict[str, Any]) -> None:
    """The Trainer arguments whose bad values Lightning reports late, or with a traceback."""
    for key, where in TRAINER_OWN.items():
        if key in trainer_args:
            raise ConfigError(f"config key 'trainer_args.{key}' is set by the experiment from {where}; remove it")
    check_range(trainer_args, "accumulate_grad_batches", "trainer_args.accumulate_grad_batches", 1, MAX_BATCH_SIZE)
    for key in ("limit_train_batches", "limit_val_batches", "val_check_interval", "overfit_batches"):
        value = trainer_args.get(key)
        if value is None:
            continue
        positive = key in ("limit_train_batches", "val_check_interval")  # 0 would train (or validate) nothing, or divide by 0
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or value < 0 or (isinstance(value, float) and value > 1) or (positive and value == 0):
            allowed = "an integer >= 1 (batches) or a fraction in (0, 1]" if positive else "an integer >= 0 (batches) or a fraction in [0, 1]"
            raise ConfigError(f"config key 'trainer_args.{key}' must be {allowed}, got {short(value)}")


def check_callback_values(callbacks: dict[str, Any]) -> None:
    """Ranges in the ``callbacks`` sections (Lightning refuses some only with a traceback), and wandb installed when enabled."""
    checkpoint = callbacks.get("checkpoint", {})
    for key in ("every_n_train_steps", "every_n_epochs"):
        check_range(checkpoint, key, f"callbacks.checkpoint.{key}", 0)
    check_range(checkpoint, "save_top_k", "callbacks.checkpoint.save_top_k", -1)
    images = callbacks.get("images", {})
    check_range(images, "every_n_train_steps", "callbacks.images.every_n_train_steps", 0)
    check_sampling_section(images, "callbacks.images")
    if callbacks.get("wandb", {}).get("enabled"):
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("config key 'callbacks.wandb.enabled' is true but wandb is not installed; "
                              "install it (pip install wandb) or set callbacks.wandb.enabled=false")


def check_checkpoint_metadata(meta: Any) -> None:
    """The metadata a checkpoint or export carries (``config``, ``model``, ``image_shape``, ``class_names``):
    types, and every size bounded as in a config, before anything is built from it."""
    if not isinstance(meta, dict) or not {"config", "model", "image_shape"} <= set(meta):
        raise ConfigError("it must be an object holding 'config', 'model' and 'image_shape'")
    for key in ("config", "model"):
        if not isinstance(meta[key], dict):
            raise ConfigError(f"'{key}' must be an object, got {type_name(meta[key])} ({short(meta[key])})")
    shape = meta["image_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
            and 1 <= shape[0] <= 64 and all(1 <= v <= MAX_IMAGE_SIZE for v in shape[1:])):
        raise ConfigError(f"'image_shape' must be [channels 1-64, height, width 1-{MAX_IMAGE_SIZE}], got {short(shape)}")
    names = meta.get("class_names") or []
    if not (isinstance(names, list) and len(names) <= 100_000 and all(isinstance(n, str) for n in names)):
        raise ConfigError(f"'class_names' must be a list of strings, got {short(names)}")
    diffusion = meta["config"].get("diffusion", {})
    if not isinstance(diffusion, dict):
        raise ConfigError(f"config key 'diffusion' must be an object, got {type_name(diffusion)}")
    check_diffusion_values(diffusion)
    for key in ("num_timesteps",):  # the model's own copy of the chain length, where it keeps one
        if key in meta["model"]:
            check_range(meta["model"], key, f"model.{key}", 1, MAX_TIMESTEPS)
