"""Sampling in one line::

    images, layouts = layoutdiffuse.sample(layout=[{"label": "7", "box": [0.1, 0.1, 0.5, 0.8]}], n=8)

The default checkpoint is the shipped Layout-MNIST LayoutDiffuse model
(``layoutdiffuse/weights/layout_mnist.safetensors``).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from .layout import validate_layout
from .layout_file import load_layout, parse_layout
from .errors import UserError, MissingFileError

SHIPPED_MODEL = Path(__file__).parent / "weights" / "layout_mnist.safetensors"


@lru_cache(maxsize=4)
def _load(path: str) -> pl.LightningModule:
    from .experiment import load_checkpoint

    return load_checkpoint(path)


def load_model(ckpt: str | Path | None = None) -> pl.LightningModule:
    """A ready-to-sample module (cached per path); ``None`` = the shipped Layout-MNIST model."""
    path = Path(ckpt) if ckpt is not None else SHIPPED_MODEL
    if not path.exists():
        hint = " (the shipped model is missing from this install)" if ckpt is None else ""
        raise MissingFileError(f"checkpoint {path} does not exist{hint}")
    return _load(str(path.resolve()))


def is_layout_model(module: pl.LightningModule) -> bool:
    return getattr(module.model, "adaptor", None) is not None


def is_text_model(module: pl.LightningModule) -> bool:
    """True for models that read a text prompt (a latent model with a text encoder)."""
    return getattr(module, "text_encoder", None) is not None


def as_layout(layout: Any, class_names: list[str]) -> torch.Tensor:
    """A layout given as ``None``, a path, JSON objects or a tensor -> validated ``(N, 5)``."""
    if layout is None:
        return torch.zeros(0, 5)
    if isinstance(layout, (str, Path)):
        return load_layout(layout, class_names)
    if isinstance(layout, torch.Tensor):
        return validate_layout(layout.float(), len(class_names))
    return parse_layout(layout, class_names)


def sample(
    layout: Any = None,
    n: int = 8,
    ckpt: str | Path | pl.LightningModule | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    progress: bool = False,
    prompt: str | None = None,
    negative_prompt: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw ``n`` images for one layout. Returns ``(images (n, C, H, W) in [-1, 1], layouts (n, N, 5) or None)``.

    ``layout``: ``None`` / ``[]`` (unconditional: the empty layout), a layout file path, a list of
    ``{"label", "box"}`` objects, or a tensor ``(N, 5)``. Unset sampler options use the model's defaults.
    ``prompt`` / ``negative_prompt``: text for models with a text encoder (:func:`is_text_model`).
    """
    if n < 1:
        raise UserError(f"n must be >= 1, got {n}")
    module = ckpt if isinstance(ckpt, pl.LightningModule) else load_model(ckpt)
    opts: dict[str, Any] = {k: v for k, v in dict(sampler=sampler, steps=steps, guidance=guidance).items() if v is not None}
    text: dict[str, Any] = {}
    if prompt is not None or negative_prompt is not None:
        if not is_text_model(module):
            raise UserError("this model has no text encoder: sample it without prompt / negative_prompt")
        text = {"caption": [prompt or ""] * n}
        if negative_prompt is not None:
            opts["negative_prompt"] = negative_prompt
    g = torch.Generator(device=module.device).manual_seed(seed)
    if not is_layout_model(module):
        if layout:
            raise UserError("this checkpoint is not a layout model; sample it without a layout")
        return module.sample(n, generator=g, progress=progress, **{k: v for k, v in opts.items() if k != "guidance"}), None
    rows = as_layout(layout, module.class_names or [str(i) for i in range(module.model.adaptor.num_classes)])
    layouts = rows[None].expand(n, -1, -1).to(module.device)
    images = module.sample(n, cond={"layout": layouts, **text}, generator=g, progress=progress, **opts)
    return images, layouts
