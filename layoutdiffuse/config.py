"""JSON experiment configs: load, validate, and build objects by registered name.

A config has the sections of the original release::

    {"expt_name": str, "expt_dir": str, "seed": int,
     "denoising_model": {UNet arguments},            # or "adapt": {"foundation_ckpt", "layout"}
                                                     # or "adapt": {"foundation", "path", "layout", ...} (layoutdiffuse.sd)
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
from pathlib import Path
from typing import Any

from .schema import ConfigError, check_keys, check_name, check_type, signature_defaults, type_name

__all__ = ["ConfigError", "load_config", "set_override", "validate", "signature_defaults"]

SECTIONS = ("expt_name", "expt_dir", "seed", "denoising_model", "diffusion", "data", "trainer_args", "callbacks", "adapt", "description")
REQUIRED = ("expt_name", "diffusion", "data")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a JSON config and validate it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
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


def validate(config: dict[str, Any]) -> None:
    """Check every section of ``config``; raise :class:`ConfigError` naming the first bad key."""
    import pytorch_lightning as pl

    from .data.registry import DATASETS
    from .nn import ATTN_BLOCKS, RES_BLOCKS, UNet
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
    if ("denoising_model" in config) == ("adapt" in config):
        raise ConfigError("config needs exactly one of 'denoising_model' (a model of its own) or 'adapt' (adapt a foundation checkpoint)")
    check_type(config["expt_name"], "", "expt_name")
    check_type(config.get("expt_dir", ""), "", "expt_dir")
    check_type(config.get("seed", 0), 0, "seed")

    if "denoising_model" in config:
        model = config["denoising_model"]
        check_keys(model, signature_defaults(UNet), "denoising_model")
        check_name(RES_BLOCKS, model.get("res_block_type", "scale_shift"), "denoising_model.res_block_type")
        check_name(ATTN_BLOCKS, model.get("attn_block_type", "self"), "denoising_model.attn_block_type")
    elif isinstance(config["adapt"], dict) and "foundation" in config["adapt"]:  # a diffusers foundation (layoutdiffuse.sd)
        from .sd.spec import FOUNDATION_KEYS, FOUNDATION_REQUIRED, FOUNDATIONS, LAYOUT_KEYS

        check_keys(config["adapt"], FOUNDATION_KEYS, "adapt")
        for key in FOUNDATION_REQUIRED:
            if key not in config["adapt"]:
                raise ConfigError(f"config is missing 'adapt.{key}'")
        if config["adapt"]["foundation"] not in FOUNDATIONS:
            raise ConfigError(f"config key 'adapt.foundation': unknown foundation '{config['adapt']['foundation']}'; "
                              f"choose one of: {', '.join(FOUNDATIONS)}")
        check_keys(config["adapt"]["layout"], LAYOUT_KEYS, "adapt.layout")
        if "num_classes" not in config["adapt"]["layout"]:
            raise ConfigError("config is missing 'adapt.layout.num_classes'")
    else:
        check_keys(config["adapt"], {"foundation_ckpt": "", "layout": {}}, "adapt")
        for key in ("foundation_ckpt", "layout"):
            if key not in config["adapt"]:
                raise ConfigError(f"config is missing 'adapt.{key}'")

    diffusion = config["diffusion"]
    training = check_name(TRAININGS, diffusion.get("training", "DDPMTraining"), "diffusion.training")
    check_keys(diffusion, training.config_keys(), "diffusion")

    data = config["data"]
    factory = check_name(DATASETS, data.get("dataset"), "data.dataset")
    check_keys(data, {"dataset": "", "batch_size": 1, "val_batch_size": 1, "num_workers": 0, **signature_defaults(factory, skip=("split",))}, "data")

    check_keys(config.get("trainer_args", {}), signature_defaults(pl.Trainer), "trainer_args", types=False)  # the Trainer checks its own types
    callbacks = config.get("callbacks", {})
    check_keys(callbacks, {k: {} for k in CALLBACK_KEYS}, "callbacks")
    for name, section in callbacks.items():
        check_keys(section, CALLBACK_KEYS[name], f"callbacks.{name}")
