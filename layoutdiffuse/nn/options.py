"""The layout adaptor's options as one declared type (no torch: config validation reads it).

:class:`LayoutAdaptorOptions` is the ``layout`` section of a config (``denoising_model.layout``,
``adapt.layout``) for this project's UNet, and what :meth:`~layoutdiffuse.nn.adaptor.LayoutAdaptor.attach`
takes; :class:`DiffusersLayoutOptions` adds the options of the diffusers foundations
(:class:`~layoutdiffuse.sd.layout_unet.LayoutDiffusersUNet`). The config check, the model builders
and their defaults all read these classes: :meth:`LayoutAdaptorOptions.parse` refuses an unknown
key, a wrong type or an unknown name in one line naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..schema import ConfigError, check_keys

#: how a mask layout is subsampled to a level's resolution (:func:`~layoutdiffuse.nn.adaptor.subsample_mask`)
MASK_PICKS = ("top_left", "centre")
#: ``task_prompt_form``: ``gated`` (this project: a zero-gated second softmax over shared prompts, exact
#: identity at insertion) or ``concat`` (the original release: per-layer prompts concatenated to the text
#: context, one softmax; ``image_in_kv`` appends the projected image tokens too)
TASK_PROMPT_FORMS = ("gated", "concat")


@dataclass(frozen=True)
class LayoutAdaptorOptions:
    """Options of the layout adaptor of a :class:`~layoutdiffuse.nn.unet.UNet`.

    ``num_classes``: size of the instance prompt table (without the null row), required;
    ``levels``: UNet levels (downsample exponents) that get layout attention; ``embed_dim``: width
    of the instance and task prompts; ``num_heads``: heads of layout attention;
    ``num_task_prompts``: task-aware prompts (0: none); ``mask``: mask layouts instead of boxes;
    ``region_mask_attention``: mask classes as regions of the instance branch; ``mask_pick``: how a
    mask is subsampled (:data:`MASK_PICKS`).
    """

    num_classes: int
    levels: tuple[int, ...] = (0, 1)
    embed_dim: int = 128
    num_heads: int = 1
    num_task_prompts: int = 64
    mask: bool = False
    region_mask_attention: bool = False
    mask_pick: str = "top_left"

    #: allowed names of the options that take one
    NAMES: ClassVar[dict[str, tuple[str, ...]]] = {"mask_pick": MASK_PICKS}
    #: lowest value of the integer options
    LOWEST: ClassVar[dict[str, int]] = {"num_classes": 1, "embed_dim": 1, "num_heads": 1, "num_task_prompts": 0}

    @classmethod
    def keys(cls) -> dict[str, Any]:
        """Every option with an example value of its type (``None``: any), for :func:`~layoutdiffuse.schema.check_keys`."""
        out = {}
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else 1
            out[f.name] = list(default) if isinstance(default, tuple) else default
        return out

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None, path: str = "layout") -> "LayoutAdaptorOptions":
        """``options`` (a config's ``layout`` object) checked and completed with the defaults; a
        :class:`~layoutdiffuse.schema.ConfigError` names the first bad key (``path.key``) and what is allowed."""
        options = dict(options or {})
        check_keys(options, cls.keys(), path)
        if "num_classes" not in options:
            raise ConfigError(f"config is missing '{path}.num_classes' (size of the instance prompt table, without the null row)")
        for key, low in cls.LOWEST.items():
            value = options.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ConfigError(f"config key '{path}.{key}' must be an integer >= {low}, got {value!r}")
        for key, names in cls.NAMES.items():
            if key in options and options[key] not in names:
                raise ConfigError(f"config key '{path}.{key}': unknown {key} {options[key]!r}; choose one of: {', '.join(names)}")
        levels = options.get("levels", ())
        if not all(isinstance(lvl, int) and not isinstance(lvl, bool) and lvl >= 0 for lvl in levels):
            raise ConfigError(f"config key '{path}.levels' must list UNet levels (integers >= 0), got {levels!r}")
        if "levels" in options:
            options["levels"] = tuple(levels)
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (``levels`` as a list), as configs and checkpoints store it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class DiffusersLayoutOptions(LayoutAdaptorOptions):
    """Options of the layout adaptor in a diffusers UNet (``adapt.layout`` of a foundation config).

    As :class:`LayoutAdaptorOptions` (``levels``: latent downsample exponents, the reference used
    32x32 and 16x16 of a 64x64 latent, ``(1, 2)``), plus ``mid_block`` (layout attention in the middle
    block too; the release has none there), ``task_prompt_form`` (:data:`TASK_PROMPT_FORMS`),
    ``image_in_kv`` and ``prompt_dim`` (``concat`` only; ``prompt_dim`` defaults to ``embed_dim``).
    """

    levels: tuple[int, ...] = (1, 2)
    mid_block: bool = True
    task_prompt_form: str = "gated"
    image_in_kv: bool = False
    prompt_dim: int | None = None

    NAMES: ClassVar[dict[str, tuple[str, ...]]] = {"mask_pick": MASK_PICKS, "task_prompt_form": TASK_PROMPT_FORMS}
    LOWEST: ClassVar[dict[str, int]] = {**LayoutAdaptorOptions.LOWEST, "prompt_dim": 1}
