"""The config schema's building blocks: key and type checks against example values.

A leaf module (it imports nothing from the package but :mod:`layoutdiffuse.errors`), so the
modules whose signatures define the allowed keys (the UNet, the training modules, the datasets)
can use :func:`signature_defaults` without importing :mod:`layoutdiffuse.config` back.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from .errors import UserError, short


#: the largest config file read (a config is a few KB; a bigger file is not one)
MAX_CONFIG_BYTES = 10**7


class ConfigError(UserError):
    """A config that cannot be built; the message names the key path."""


def type_name(value: Any) -> str:
    return "null" if value is None else {dict: "object", list: "list", str: "string", bool: "bool", int: "int", float: "number"}.get(type(value), type(value).__name__)


def check_type(value: Any, default: Any, path: str) -> None:
    """``value`` must have the JSON type of ``default`` (ints pass for numbers; None defaults accept anything)."""
    if default is None or default is inspect.Parameter.empty:
        return
    ok = isinstance(value, type(default))
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    if not ok:
        raise ConfigError(f"config key '{path}' must be {type_name(default)}, got {type_name(value)} ({short(value)})")


def signature_defaults(fn: Callable, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword arguments of ``fn`` and their defaults (``Parameter.empty`` when required)."""
    params = inspect.signature(fn).parameters
    return {n: p.default for n, p in params.items() if n not in skip and n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_keys(section: dict[str, Any], allowed: dict[str, Any], path: str, types: bool = True) -> None:
    """Unknown keys (and, with ``types``, wrong types) in ``section`` -> :class:`ConfigError`."""
    if not isinstance(section, dict):
        raise ConfigError(f"config key '{path}' must be an object, got {type_name(section)}")
    for key, value in section.items():
        if key not in allowed:
            raise ConfigError(f"unknown config key '{path}.{key}'; allowed keys: {', '.join(sorted(allowed))}")
        if types:
            check_type(value, allowed[key], f"{path}.{key}")


def check_name(registry: Any, name: Any, path: str) -> Any:
    """``registry.get(name)``, an unknown name reported with its key path."""
    try:
        return registry.get(name)
    except KeyError as err:
        raise ConfigError(f"config key '{path}': {err.args[0]}") from None


# --------------------------------------------------------------------------- numbers given to sample / edit
#: the largest sample count one call draws in one batch (``edit``; ``sample`` draws in batches)
MAX_BATCH = 1024
SEED_RANGE = (0, 2**63)


def check_integer(value: Any, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[low, high]``, else one :class:`UserError` line."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (high is not None and value > high):
        where = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise UserError(f"{name} must be an integer {where}, got {short(value)}")
    return int(value)


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed: an integer in ``[0, 2**63)`` (what ``torch.Generator.manual_seed`` takes without wrapping)."""
    import numbers

    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise UserError(f"{name} must be an integer in [0, 2**63), got {short(seed)}")
    return int(seed)


#: the guidance scales accepted: 0 is the unconditional model, 1 the conditional one, and scales in
#: use lie between 1 and ~15; far beyond, every sample saturates
GUIDANCE_RANGE = (0.0, 50.0)


def check_guidance(scale: Any) -> float:
    """``scale`` as a float if it is a finite number in :data:`GUIDANCE_RANGE`, else :class:`UserError`."""
    import math

    low, high = GUIDANCE_RANGE
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or not low <= scale <= high:
        raise UserError(f"guidance must be a finite number in [{low:g}, {high:g}] (0 = unconditional, 1 = conditional, "
                        f"typical 1-15), got {short(scale)}")
    return float(scale)


def check_sampling_options(n: Any = None, seed: Any = None, guidance: Any = None, steps: Any = None, resample: Any = None,
                           max_n: int | None = None) -> None:
    """The one set of checks of the numbers ``sample`` and ``edit`` take (``None`` = not given): ``n`` an
    integer in [1, ``max_n``], ``seed`` in [0, 2**63), ``guidance`` a finite number in [0, 50], ``steps``
    an integer >= 1 (the sampler checks it against the model's timesteps), ``resample`` in [0, 100]."""
    if n is not None:
        check_integer(n, "n", 1, max_n)
    if seed is not None:
        check_seed(seed)
    if guidance is not None:
        check_guidance(guidance)
    if steps is not None:
        check_integer(steps, "steps", 1)
    if resample is not None:
        check_integer(resample, "resample", 0, 100)


def check_image_values(image: Any, name: str = "image") -> None:
    """An image tensor ``(..., C, H, W)`` must hold finite floats in [-1, 1] (a little rounding allowed):
    a uint8 or [0, 255] image would be clamped to white and a NaN one would sample NaN, silently."""
    import torch

    if not image.is_floating_point():
        raise UserError(f"{name} must hold floating-point values in [-1, 1], got dtype {image.dtype} "
                        "(for 8-bit pixels use x / 127.5 - 1)")
    if not torch.isfinite(image).all():
        raise UserError(f"{name} holds NaN or infinite values; give finite values in [-1, 1]")
    if image.numel() and (image.min() < -1.001 or image.max() > 1.001):
        raise UserError(f"{name} values lie in [{image.min().item():.4g}, {image.max().item():.4g}]; an image holds values "
                        "in [-1, 1] (for pixels in [0, 255] use x / 127.5 - 1)")


# --------------------------------------------------------------------------- sizes read from files and flags
#: the largest diffusion chain (the release and Stable Diffusion use 1000; each step costs a few buffers of T floats)
MAX_TIMESTEPS = 10_000
#: the largest training image side in pixels (Stable Diffusion's 512-1024 px; a square of this side is 64 MB as float)
MAX_IMAGE_SIZE = 4096
#: the largest batch in a config (per device)
MAX_BATCH_SIZE = 65_536
#: characters an experiment name may hold besides letters and digits (it names one folder inside expt_dir)
NAME_CHARS = "-_.+=@"


def check_folder_name(value: Any, path: str) -> str:
    """``value`` names one folder (``expt_name``): not empty, no ``/`` or ``\\``, not ``.`` or ``..``."""
    if not isinstance(value, str):
        raise ConfigError(f"config key '{path}' must be a string, got {type_name(value)}")
    if value in ("", ".", "..") or not all(c.isalnum() or c in NAME_CHARS for c in value) or value.startswith("."):
        raise ConfigError(f"config key '{path}' must name one folder inside expt_dir (letters, digits and {NAME_CHARS}, not "
                          f"starting with '.'), got {short(value)}")
    return value
