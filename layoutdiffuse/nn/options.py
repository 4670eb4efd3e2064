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
#: ``instance_prompt``: ``class`` (a prompt-table row per class, the release) or ``text`` (a phrase per box,
#: encoded by :class:`~layoutdiffuse.nn.phrase_encoder.PhraseEncoder`)
INSTANCE_PROMPTS = ("class", "text")
#: ``phrase_encoder`` of text prompts on a diffusers foundation: ``foundation`` (its own frozen text encoder,
#: CLIP or LDMBert, through a trainable projection: :class:`~layoutdiffuse.sd.phrases.FoundationPhraseEncoder`)
FOUNDATION_PHRASE_ENCODERS = ("foundation",)


@dataclass(frozen=True)
class LayoutAdaptorOptions:
    """Options of the layout adaptor of a :class:`~layoutdiffuse.nn.unet.UNet`.

    ``num_classes``: size of the instance prompt table (without the null row), required for class prompts;
    ``levels``: UNet levels (downsample exponents) that get layout attention; ``embed_dim``: width
    of the instance and task prompts; ``num_heads``: heads of layout attention;
    ``num_task_prompts``: task-aware prompts (0: none); ``mask``: mask layouts instead of boxes;
    ``region_mask_attention``: mask classes as regions of the instance branch; ``mask_pick``: how a
    mask is subsampled (:data:`MASK_PICKS`); ``instance_prompt``: ``class`` or ``text``
    (:data:`INSTANCE_PROMPTS`: a phrase per box instead of a class); ``vocabulary``, ``max_words``:
    the words and the longest phrase of the text prompts' phrase encoder.
    """

    num_classes: int = 0
    levels: tuple[int, ...] = (0, 1)
    embed_dim: int = 128
    num_heads: int = 1
    num_task_prompts: int = 64
    mask: bool = False
    region_mask_attention: bool = False
    mask_pick: str = "top_left"
    instance_prompt: str = "class"
    vocabulary: tuple[str, ...] = ()
    max_words: int = 16

    #: allowed names of the options that take one
    NAMES: ClassVar[dict[str, tuple[str, ...]]] = {"mask_pick": MASK_PICKS, "instance_prompt": INSTANCE_PROMPTS}
    #: lowest value of the integer options
    LOWEST: ClassVar[dict[str, int]] = {"num_classes": 1, "embed_dim": 1, "num_heads": 1, "num_task_prompts": 0, "max_words": 1}

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
        text = options.get("instance_prompt") == "text"
        if "num_classes" not in options and not text:
            raise ConfigError(f"config is missing '{path}.num_classes' (size of the instance prompt table, without the null row)")
        if text and "num_classes" in options:
            raise ConfigError(f"config key '{path}.num_classes' does not apply to instance_prompt 'text' (a phrase per box, no class table)")
        if text != bool(options.get("vocabulary")):
            raise ConfigError(f"config key '{path}.vocabulary' (the phrase encoder's words) is needed with instance_prompt 'text' "
                              "and only there")
        if text and options.get("mask"):
            raise ConfigError(f"config key '{path}.instance_prompt': text prompts need box layouts (mask is true)")
        words = options.get("vocabulary", [])
        if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) and len(w.split()) == 1 for w in words) \
                or len(set(w.lower() for w in words)) != len(words):
            raise ConfigError(f"config key '{path}.vocabulary' must list distinct single words, got {str(words)[:200]}")
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
        if "vocabulary" in options:
            options["vocabulary"] = tuple(options["vocabulary"])
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (``levels`` as a list), as configs and checkpoints store it."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        drop = ("num_classes",) if self.instance_prompt == "text" else ("instance_prompt", "vocabulary", "max_words")
        return {k: v for k, v in out.items() if k not in drop}  # a class model's stored options stay as they were


@dataclass(frozen=True)
class DiffusersLayoutOptions(LayoutAdaptorOptions):
    """Options of the layout adaptor in a diffusers UNet (``adapt.layout`` of a foundation config).

    As :class:`LayoutAdaptorOptions` (``levels``: latent downsample exponents, the reference used
    32x32 and 16x16 of a 64x64 latent, ``(1, 2)``), plus ``mid_block`` (layout attention in the middle
    block too; the release has none there), ``task_prompt_form`` (:data:`TASK_PROMPT_FORMS`),
    ``image_in_kv`` and ``prompt_dim`` (``concat`` only; ``prompt_dim`` defaults to ``embed_dim``).
    With ``instance_prompt: "text"`` the phrases are encoded by ``phrase_encoder``
    (:data:`FOUNDATION_PHRASE_ENCODERS`: ``foundation``, the foundation's own frozen text encoder);
    the toys' ``vocabulary`` and ``max_words`` do not apply.
    """

    levels: tuple[int, ...] = (1, 2)
    mid_block: bool = True
    task_prompt_form: str = "gated"
    image_in_kv: bool = False
    prompt_dim: int | None = None
    phrase_encoder: str = "foundation"

    NAMES: ClassVar[dict[str, tuple[str, ...]]] = {"mask_pick": MASK_PICKS, "task_prompt_form": TASK_PROMPT_FORMS,
                                                   "instance_prompt": INSTANCE_PROMPTS, "phrase_encoder": FOUNDATION_PHRASE_ENCODERS}
    LOWEST: ClassVar[dict[str, int]] = {**LayoutAdaptorOptions.LOWEST, "prompt_dim": 1}

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None, path: str = "layout") -> "DiffusersLayoutOptions":
        """:meth:`LayoutAdaptorOptions.parse`, with text prompts read by the foundation's text encoder
        (``phrase_encoder``) instead of the toys' vocabulary."""
        options = dict(options or {})
        if options.get("instance_prompt") != "text":
            if "phrase_encoder" in options:
                raise ConfigError(f"config key '{path}.phrase_encoder' applies to instance_prompt 'text' only")
            return super().parse(options, path)
        for key in ("num_classes", "vocabulary", "max_words"):
            if key in options:
                raise ConfigError(f"config key '{path}.{key}' does not apply to text prompts on a diffusers foundation: its "
                                  "boxes' phrases are encoded by the foundation's own text encoder (phrase_encoder 'foundation')")
        if options.get("mask"):
            raise ConfigError(f"config key '{path}.instance_prompt': text prompts need box layouts (mask is true)")
        parsed = super().parse({k: v for k, v in options.items() if k != "instance_prompt"} | {"num_classes": 1}, path)
        return dataclasses.replace(parsed, num_classes=0, instance_prompt="text")

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`LayoutAdaptorOptions.to_dict`, the toys' text options left out (and ``phrase_encoder``
        for class prompts, so a class model's stored options stay as they were)."""
        drop = ("vocabulary", "max_words") if self.instance_prompt == "text" else ("phrase_encoder",)
        return {k: v for k, v in super().to_dict().items() if k not in drop}
