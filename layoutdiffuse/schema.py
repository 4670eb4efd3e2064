"""The config schema's building blocks: key and type checks against example values.

A leaf module (it imports nothing from the package but :mod:`layoutdiffuse.errors`), so the
modules whose signatures define the allowed keys (the UNet, the training modules, the datasets)
can use :func:`signature_defaults` without importing :mod:`layoutdiffuse.config` back.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from .errors import UserError


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
        raise ConfigError(f"config key '{path}' must be {type_name(default)}, got {type_name(value)} ({value!r})")


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
