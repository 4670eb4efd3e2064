"""Conditioning and classifier-free guidance, folded into a ``model_fn(x_t, t)`` for samplers."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..layout import cat_layouts
from .gaussian import ModelFn

from ..schema import GUIDANCE_RANGE, check_guidance  # noqa: F401 -- the one check of a guidance scale, re-exported


def conditioned(model: nn.Module, cond: dict[str, Any] | None) -> ModelFn:
    """``model_fn(x, t) = model(x, t, cond)``."""
    return lambda x, t: model(x, t, cond)


def cat_conds(conds: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate condition dicts along the batch: layouts padded to a common N, tensors concatenated."""
    out: dict[str, Any] = {}
    for key in conds[0]:
        values = [c[key] for c in conds]
        if key == "layout":
            out[key] = cat_layouts(values)
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.cat(values, dim=0)
        else:
            out[key] = [v for vs in values for v in vs]
    return out


def classifier_free_guidance(model: nn.Module, cond: dict[str, Any], null_cond: dict[str, Any], scale: float, pred_channels: int | None = None) -> ModelFn:
    """Guided ``model_fn``: ``out = out_uncond + scale * (out_cond - out_uncond)``.

    Both branches run in one batched forward. The combination is applied to the prediction
    channels (the first ``pred_channels``, default all); variance channels, if any, come from the
    conditional branch. Because x0, eps and v are affine in the model output at fixed ``(x_t, t)``,
    guiding the raw output equals guiding eps. ``scale = 1`` skips the unconditional branch.
    """
    if scale == 1:
        return conditioned(model, cond)
    both = cat_conds([cond, null_cond])

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_c, out_u = model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        k = out_c.shape[1] if pred_channels is None else pred_channels
        guided = out_u[:, :k] + scale * (out_c[:, :k] - out_u[:, :k])
        return torch.cat([guided, out_c[:, k:]], dim=1)

    return model_fn


def null_condition(cond: dict[str, Any]) -> dict[str, Any]:
    """The unconditional version of ``cond``: empty layouts, all-ignore masks, empty captions, class -1."""
    from ..layout import IGNORE

    out: dict[str, Any] = {}
    for key, value in cond.items():
        if key == "layout":
            out[key] = value.new_zeros(value.shape[0], 0, 5)
        elif key == "mask":
            out[key] = torch.full_like(value, IGNORE)
        elif key == "caption":
            out[key] = [""] * len(value)
        elif key == "label":
            out[key] = torch.full_like(value, -1)
        elif isinstance(value, torch.Tensor):
            out[key] = torch.zeros_like(value)
        else:
            out[key] = value
    return out


def drop_condition(cond: dict[str, Any], p: float, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Replace each sample's condition by the null condition with probability ``p`` (CFG training).

    A dropped box layout keeps its shape with every row marked padding (class -1); a dropped class
    label becomes -1 (no class).
    """
    from ..layout import IGNORE, PAD

    first = next(v for v in cond.values() if isinstance(v, (torch.Tensor, list)))
    batch = first.shape[0] if isinstance(first, torch.Tensor) else len(first)
    device = first.device if isinstance(first, torch.Tensor) else None
    drop = torch.rand(batch, generator=generator, device=generator.device if generator is not None else device) < p
    drop = drop.to(device) if device is not None else drop
    out: dict[str, Any] = {}
    for key, value in cond.items():
        if key == "layout":
            value = value.clone()
            value[..., 4] = torch.where(drop[:, None], torch.full_like(value[..., 4], PAD), value[..., 4])
        elif key == "mask":
            value = torch.where(drop.view(-1, *([1] * (value.ndim - 1))), torch.full_like(value, IGNORE), value)
        elif key == "caption":
            value = ["" if d else c for d, c in zip(drop.tolist(), value)]
        elif key == "label":
            value = torch.where(drop, torch.full_like(value, -1), value)
        elif isinstance(value, torch.Tensor):
            value = value * (~drop).view(-1, *([1] * (value.ndim - 1))).to(value.dtype)
        out[key] = value
    return out


def class_labels(n: int, num_classes: int, start: int = 0) -> dict[str, torch.Tensor]:
    """The default condition of a class-conditional model: image ``i`` of a draw gets class
    ``i % num_classes`` (``start`` = the index of the first image), so a grid of ``num_classes``
    columns shows one class per column."""
    return {"label": torch.arange(start, start + n) % num_classes}
