"""Conditioning and classifier-free guidance, folded into a ``model_fn(x_t, t)`` for samplers.

What each condition kind's null value, dropout and batching are: :mod:`layoutdiffuse.conditions`."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..conditions import batch_size, cat_conditions, check_condition, drop_condition, model_classes, null_condition
from ..errors import UserError
from ..schema import GUIDANCE_RANGE, check_guidance  # noqa: F401 -- the one check of a guidance scale, re-exported
from .gaussian import ModelFn

__all__ = ["GUIDANCE_RANGE", "check_guidance", "conditioned", "classifier_free_guidance", "class_labels",
           "null_condition", "drop_condition"]  # the last two: the condition table's, used with guidance


def conditioned(model: nn.Module, cond: dict[str, Any] | None) -> ModelFn:
    """``model_fn(x, t) = model(x, t, cond)``; ``cond`` is checked here, once
    (:func:`~layoutdiffuse.conditions.check_condition` with the model's ``condition_classes``)."""
    check_condition(cond, classes=model_classes(model))
    return lambda x, t: model(x, t, cond)


def classifier_free_guidance(model: nn.Module, cond: dict[str, Any], null_cond: dict[str, Any], scale: float, pred_channels: int | None = None) -> ModelFn:
    """Guided ``model_fn``: ``out = out_uncond + scale * (out_cond - out_uncond)``.

    Both branches run in one batched forward (:func:`~layoutdiffuse.conditions.cat_conditions`). The
    combination is applied to the prediction channels (the first ``pred_channels``, default all);
    variance channels, if any, come from the conditional branch. Because x0, eps and v are affine in
    the model output at fixed ``(x_t, t)``, guiding the raw output equals guiding eps. ``scale = 1``
    skips the unconditional branch. Both conditions are checked here, once.
    """
    if scale == 1:
        return conditioned(model, cond)
    classes = model_classes(model)
    check_condition(cond, classes=classes)
    check_condition(null_cond, batch_size(cond) if cond else None, classes)
    if set(cond) != set(null_cond):
        raise UserError(f"the condition has keys {sorted(cond)} and the null condition {sorted(null_cond)}; give both the same")
    both = cat_conditions([cond, null_cond])

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_c, out_u = model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        k = out_c.shape[1] if pred_channels is None else pred_channels
        guided = out_u[:, :k] + scale * (out_c[:, :k] - out_u[:, :k])
        return torch.cat([guided, out_c[:, k:]], dim=1)

    return model_fn


def class_labels(n: int, num_classes: int, start: int = 0) -> dict[str, torch.Tensor]:
    """The default condition of a class-conditional model: image ``i`` of a draw gets class
    ``i % num_classes`` (``start`` = the index of the first image), so a grid of ``num_classes``
    columns shows one class per column."""
    return {"label": torch.arange(start, start + n) % num_classes}
