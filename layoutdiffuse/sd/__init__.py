"""Foundational diffusers models (Stable Diffusion 1.x/2.x, LDM CelebA-HQ) adapted by LayoutDiffuse.

* :class:`~layoutdiffuse.sd.layout_unet.LayoutDiffusersUNet` -- a diffusers ``UNet2DConditionModel`` or
  ``UNet2DModel`` plus the layout adaptor, an exact copy of the foundation at insertion.
* :func:`~layoutdiffuse.sd.foundation.load_foundation` -- UNet, autoencoder, text encoder, tokenizer
  and noise schedule from a diffusers folder, a single ``.ckpt``/``.safetensors`` file, or the CompVis
  LDM ``model.ckpt``.
* :data:`~layoutdiffuse.sd.foundation.FOUNDATION_KINDS` -- one class per foundation kind (file checks,
  loading, download hint, latent downscale), the kinds of ``"adapt": {"foundation": ...}`` configs;
  the training module around them is built by :func:`layoutdiffuse.factory.build_module`.

Nothing here imports :mod:`layoutdiffuse.training`: foundations sit below the training modules.

Importing this package is cheap; diffusers and transformers load on first use of these names
(install them with ``pip install 'layoutdiffuse[sd]'``).
"""
from __future__ import annotations

from typing import Any

from .spec import FOUNDATION_KEYS, FOUNDATIONS, is_foundation_config

_LAZY = {
    "LayoutDiffusersUNet": "layout_unet", "TaskPromptProcessor": "layout_unet", "PromptGate": "layout_unet", "layout_sites": "layout_unet",
    "Foundation": "foundation", "load_foundation": "foundation", "foundation_kind": "foundation", "FOUNDATION_KINDS": "foundation",
    "check_foundation_files": "foundation", "diffusion_from_scheduler": "schedules", "diffusion_from_ldm": "schedules",
    "convert_ldm_unet": "ldm", "convert_ldm_vq": "ldm", "load_ldm": "ldm",
}

__all__ = ["FOUNDATIONS", "FOUNDATION_KEYS", "is_foundation_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
