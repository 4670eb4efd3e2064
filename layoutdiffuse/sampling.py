"""Sampling in one line::

    images, layouts = layoutdiffuse.sample(layout=[{"label": "7", "box": [0.1, 0.1, 0.5, 0.8]}], n=8)

The default checkpoint is the shipped Layout-MNIST LayoutDiffuse model
(``layoutdiffuse/weights/layout_mnist.safetensors``).
"""
from __future__ import annotations

import numbers
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from .diffusion.guidance import check_guidance
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


def as_layout(layout: Any, class_names: list[str]) -> torch.Tensor:
    """A layout given as ``None``, a path, JSON objects or a tensor -> validated ``(N, 5)``
    (a tensor may also be a batch ``(B, N, 5)``, one layout per image)."""
    if layout is None:
        return torch.zeros(0, 5)
    if isinstance(layout, (str, Path)):
        return load_layout(layout, class_names)
    if isinstance(layout, torch.Tensor):
        if layout.is_complex() or layout.dtype == torch.bool:
            raise UserError(f"a layout tensor holds real numbers (rows x, y, w, h, class), got dtype {layout.dtype}")
        return validate_layout(layout.float(), len(class_names))
    return parse_layout(layout, class_names)


#: images per model call; larger ``n`` are drawn in batches of this size from one generator
BATCH_SIZE = 64


def sample(
    layout: Any = None,
    n: int | None = None,
    ckpt: str | Path | pl.LightningModule | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    progress: bool = False,
    batch_size: int = BATCH_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw ``n`` images for one layout (default 8), or one image per layout of a batch.
    Returns ``(images (n, C, H, W) in [-1, 1], layouts (n, N, 5) or None)``.

    ``layout``: ``None`` / ``[]`` (unconditional: the empty layout), a layout file path, a list of
    ``{"label", "box"}`` objects, a tensor ``(N, 5)``, or a batch ``(B, N, 5)`` (then ``n`` is ``B``).
    Unset sampler options use the model's defaults. Images are drawn ``batch_size`` at a time from
    one seeded generator, so any ``n`` fits in memory.
    """
    for name, value in (("n", n), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    if guidance is not None:
        check_guidance(guidance)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise UserError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    module = ckpt if isinstance(ckpt, pl.LightningModule) else load_model(ckpt)
    opts = {k: v for k, v in dict(sampler=sampler, steps=steps, guidance=guidance).items() if v is not None}
    g = torch.Generator(device=module.device).manual_seed(seed)
    if not is_layout_model(module):
        if layout is not None and (not isinstance(layout, (list, tuple, torch.Tensor)) or len(layout)):
            raise UserError("this checkpoint is not a layout model; sample it without a layout")
        n = 8 if n is None else int(n)
        opts.pop("guidance", None)
        return in_batches(lambda k, _: module.sample(k, generator=g, progress=progress, **opts), n, batch_size), None
    rows = as_layout(layout, module.class_names or [str(i) for i in range(module.model.adaptor.num_classes)]).to(module.device)
    if rows.ndim == 3:
        if n is not None and n != len(rows):
            raise UserError(f"a batch of {len(rows)} layouts draws one image per layout: leave n unset or pass n={len(rows)}, got n={n}")
        layouts = rows
    else:
        layouts = rows[None].expand(8 if n is None else int(n), -1, -1)
    images = in_batches(lambda k, i: module.sample(k, cond={"layout": layouts[i : i + k]}, generator=g, progress=progress, **opts),
                        len(layouts), batch_size)
    return images, layouts


def in_batches(draw: Any, n: int, batch_size: int) -> torch.Tensor:
    """``draw(k, start) -> (k, C, H, W)`` called for consecutive chunks of at most ``batch_size``, concatenated."""
    return torch.cat([draw(min(batch_size, n - i), i) for i in range(0, n, batch_size)])
