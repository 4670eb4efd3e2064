"""The ``adapt`` config section for foundation models (no heavy imports: config validation uses it)."""
from __future__ import annotations

from typing import Any

#: foundation kinds and what they are
FOUNDATIONS = {
    "stable_diffusion": "Stable Diffusion 1.x / 2.x: text-conditioned UNet2DConditionModel, AutoencoderKL, CLIP text encoder",
    "ldm": "CompVis latent diffusion, unconditional UNet2DModel + VQModel (e.g. LDM CelebA-HQ 256)",
    "ldm_text": "LAION text-to-image LDM (diffusers' ldm-text2im layout): UNet2DConditionModel, AutoencoderKL (vqvae/), "
                "LDMBert text encoder (bert/) and BERT tokenizer",
}

#: allowed keys of ``adapt`` for a foundation, with example values for type checks (None = any)
FOUNDATION_KEYS: dict[str, Any] = {
    "foundation": "",               # a FOUNDATIONS name
    "path": "",                     # diffusers folder, single .ckpt/.safetensors, or LDM folder / model.ckpt
    "config": None,                 # single-file Stable Diffusion: a local diffusers folder with the component configs
    "layout": {},                   # adaptor: num_classes, levels, embed_dim, num_heads, num_task_prompts, mask, ...
    "gradient_checkpointing": False,
    "scale_factor": None,           # override the latent scale (default: the foundation's)
    "sample_posterior": True,       # KL autoencoders: z ~ q(z|x) in training (else its mean)
}
FOUNDATION_REQUIRED = ("foundation", "path", "layout")


def is_foundation_config(config: dict[str, Any]) -> bool:
    """True when ``config`` adapts a diffusers foundation (``adapt.foundation`` set)."""
    return isinstance(config.get("adapt"), dict) and "foundation" in config["adapt"]

#: adaptor options of a foundation and their defaults (``adapt.layout``; see LayoutDiffusersUNet)
LAYOUT_DEFAULTS: dict[str, Any] = {
    "num_classes": None, "levels": [1, 2], "embed_dim": 128, "num_heads": 1, "num_task_prompts": 64,
    "mask": False, "region_mask_attention": False, "mask_pick": "top_left", "mid_block": True,
    "task_prompt_form": "gated", "image_in_kv": False, "prompt_dim": None,
}
#: ``task_prompt_form``: ``gated`` (this project: a zero-gated second softmax over shared prompts, exact
#: identity at insertion) or ``concat`` (the original release: per-layer prompts concatenated to the text
#: context, one softmax; ``image_in_kv`` appends the projected image tokens too)
TASK_PROMPT_FORMS = ("gated", "concat")
#: the same keys with example values for config type checks
LAYOUT_KEYS: dict[str, Any] = {**LAYOUT_DEFAULTS, "num_classes": 1}
