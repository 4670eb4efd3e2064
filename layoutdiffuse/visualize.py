"""Pictures: image grids, with each layout box and its label drawn over the image."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torchvision.utils import draw_bounding_boxes, make_grid, save_image

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe", "#008080"]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` in [-1, 1] -> uint8 RGB ``(B, 3, H, W)``."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]


def draw_layouts(images: torch.Tensor, layouts: torch.Tensor, class_names: Sequence[str] | None = None, scale: int = 1) -> torch.Tensor:
    """Draw boxes and labels of ``layouts (B, N, 5)`` over ``images (B, C, H, W)`` in [-1, 1].

    Returns uint8 ``(B, 3, H*scale, W*scale)``; ``scale`` upsamples small images so labels are legible.
    """
    rgb = to_uint8(images)
    if scale > 1:
        rgb = torch.nn.functional.interpolate(rgb.float(), scale_factor=scale, mode="nearest").to(torch.uint8)
    h, w = rgb.shape[-2:]
    out = []
    for img, layout in zip(rgb, layouts.detach().cpu()):  # drawing is per image in torchvision
        layout = layout[layout[:, 4] >= 0]
        if len(layout) == 0:
            out.append(img)
            continue
        xyxy = torch.stack([layout[:, 0] * w, layout[:, 1] * h, (layout[:, 0] + layout[:, 2]) * w, (layout[:, 1] + layout[:, 3]) * h], 1)
        classes = layout[:, 4].long().tolist()
        labels = [class_names[c] if class_names else str(c) for c in classes]
        colors = [PALETTE[c % len(PALETTE)] for c in classes]
        out.append(draw_bounding_boxes(img, xyxy, labels=labels, colors=colors, width=1))
    return torch.stack(out)


def grid(images: torch.Tensor, layouts: torch.Tensor | None = None, class_names: Sequence[str] | None = None, nrow: int | None = None, scale: int | None = None) -> torch.Tensor:
    """A uint8 ``(3, H', W')`` grid; with ``layouts`` each tile has its boxes drawn over it."""
    n = images.shape[0]
    nrow = nrow or max(1, int(n**0.5 + 0.999))
    if layouts is not None:
        scale = scale or max(1, 128 // images.shape[-1])
        tiles = draw_layouts(images, layouts, class_names, scale)
    else:
        tiles = to_uint8(images)
        if scale and scale > 1:
            tiles = torch.nn.functional.interpolate(tiles.float(), scale_factor=scale, mode="nearest").to(torch.uint8)
    return make_grid(tiles, nrow=nrow, padding=2, pad_value=255)


def grid_columns(module: Any) -> int | None:
    """Columns of a sample grid: one per class for a class-conditional model (image ``i`` has class
    ``i % num_classes``), else ``None`` (the grid's default)."""
    return module.label_classes or None


def save_grid(images: torch.Tensor, path: str | Path, layouts: torch.Tensor | None = None, class_names: Sequence[str] | None = None, nrow: int | None = None, scale: int | None = None) -> Path:
    """Write :func:`grid` in the format ``path``'s suffix names (parent folders created, written atomically). Returns the path."""
    from .files import atomic_path, image_format

    path = Path(path)
    fmt = image_format(path)
    picture = grid(images, layouts, class_names, nrow, scale).float() / 255
    with atomic_path(path) as tmp:  # the temporary name has no image suffix: name the format
        save_image(picture, tmp, format=fmt)
    return path
