"""The layout type shared by every dataset and model.

A **box layout** of one image is a float tensor ``(N, 5)`` of rows ``(x, y, w, h, c)``: top-left
corner and size normalised to [0, 1] of the image, and an integer class ``c`` stored as float.
A batch is padded to ``(B, N, 5)``; padding rows have class ``-1`` (:data:`PAD`). Zero objects is
a legal layout (the *empty layout*, the unconditional branch of classifier-free guidance).

A **mask layout** is an integer map ``(B, H, W)`` of part classes; :data:`IGNORE` (255) is treated
as background/null.

One sample of any layout dataset is a dict::

    {"image": (3|1, H, W) in [-1, 1], "layout": (N, 5), optional "mask": (H, W) long,
     optional "caption": str}

and :func:`layoutdiffuse.conditions.collate` turns a list of them into a batch with a padded ``layout``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .errors import UserError

PAD = -1
IGNORE = 255
TOLERANCE = 1e-3
FIELDS = ("x", "y", "w", "h", "class")


class LayoutError(UserError):
    """A layout that breaks the format; the message names the object and the field."""


def empty_layout(batch_size: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """The empty layout: ``(batch_size, 0, 5)``."""
    return torch.zeros(batch_size, 0, 5, device=device)


def validity(layout: torch.Tensor) -> torch.Tensor:
    """``layout: (..., N, 5)`` -> bool ``(..., N)``: True for real objects, False for padding."""
    return layout[..., 4] >= 0


def validate_layout(layout: torch.Tensor, num_classes: int | None, tolerance: float = TOLERANCE) -> torch.Tensor:
    """Check a box layout ``(N, 5)`` or ``(B, N, 5)`` and return it unchanged.

    Raises :class:`LayoutError` naming the first bad object and field: wrong shape, NaN/inf,
    non-positive size, a box leaving [0, 1] by more than ``tolerance``, a class outside
    ``[0, num_classes)`` (``None``: any integer >= 0; padding rows, class -1, are skipped; any other
    negative class is refused, never read as padding).
    """
    if not isinstance(layout, torch.Tensor):
        raise LayoutError(f"layout must be a tensor of shape (N, 5) or (B, N, 5), got {type(layout).__name__}")
    if layout.ndim not in (2, 3) or layout.shape[-1] != 5:
        raise LayoutError(f"layout must have shape (N, 5) or (B, N, 5) with rows (x, y, w, h, class), got {tuple(layout.shape)}")
    batched = layout if layout.ndim == 3 else layout[None]
    valid = validity(batched) | torch.isnan(batched[..., 4])

    def fail(mask: torch.Tensor, what: str, first_field: int = 0) -> None:
        bad = (mask & (valid[..., None] if mask.ndim == 3 else valid)).nonzero()
        if len(bad):
            b, n, *f = bad[0].tolist()
            field = FIELDS[first_field + f[0]] if f else "box"
            where = f"object {n}" if layout.ndim == 2 else f"image {b}, object {n}"
            row = [round(v, 4) for v in batched[b, n].tolist()]
            raise LayoutError(f"{where}: field '{field}' {what} (row {row})")

    allowed = ">= 0" if num_classes is None else f"in [0, {num_classes})"
    cls = batched[..., 4]
    negative = (cls < 0) & (cls != PAD)
    if negative.any():
        b, n = negative.nonzero()[0].tolist()
        where = f"object {n}" if layout.ndim == 2 else f"image {b}, object {n}"
        raise LayoutError(f"{where}: field 'class' must be an integer class {allowed}, or {PAD} for a padding row; "
                          f"got {cls[b, n].item():g} (row {[round(v, 4) for v in batched[b, n].tolist()]})")
    fail(~torch.isfinite(batched), "is NaN or infinite")
    fail(batched[..., 2:4] <= 0, "must be > 0 (box sizes are positive)", first_field=2)
    fail(batched[..., 0:2] < -tolerance, "must be >= 0 (boxes start inside the image)")
    fail(batched[..., 0:2] + batched[..., 2:4] > 1 + tolerance, "leaves the image: x + w and y + h must be <= 1")
    cls = batched[..., 4:5]
    fail((cls != cls.round()) | (cls >= (math.inf if num_classes is None else num_classes)), f"must be an integer class {allowed}",
         first_field=4)
    return layout


def pad_layouts(layouts: Sequence[torch.Tensor], length: int | None = None) -> torch.Tensor:
    """Stack ``(N_i, 5)`` layouts into ``(B, max N_i, 5)`` with padding rows of class -1."""
    n = max([len(l) for l in layouts] + [0]) if length is None else length
    out = torch.zeros(len(layouts), n, 5)
    out[..., 4] = PAD
    for i, l in enumerate(layouts):
        out[i, : len(l)] = l
    return out


def cat_layouts(layouts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate batched layouts ``(B_i, N_i, 5)`` along the batch, padding to the largest N."""
    n = max(l.shape[1] for l in layouts)
    padded = []
    for l in layouts:
        extra = l.new_zeros(l.shape[0], n - l.shape[1], 5)
        extra[..., 4] = PAD
        padded.append(torch.cat([l, extra], dim=1))
    return torch.cat(padded, dim=0)

