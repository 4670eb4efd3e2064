"""The ``adapt`` config section for foundation models (no heavy imports: config validation uses it); its
``layout`` options are :class:`~layoutdiffuse.nn.options.DiffusersLayoutOptions`."""
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
    "layout": {},                   # adaptor options: layoutdiffuse.nn.options.DiffusersLayoutOptions
    "gradient_checkpointing": False,
    "scale_factor": None,           # override the latent scale (default: the foundation's)
    "sample_posterior": True,       # KL autoencoders: z ~ q(z|x) in training (else its mean)
}
FOUNDATION_REQUIRED = ("foundation", "path", "layout")


def is_foundation_config(config: dict[str, Any]) -> bool:
    """True when ``config`` adapts a diffusers foundation (``adapt.foundation`` set)."""
    return isinstance(config.get("adapt"), dict) and "foundation" in config["adapt"]
