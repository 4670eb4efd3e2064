"""Foundational model -> LayoutDiffuse model (docs/method.md §5).

>>> layout_unet = adapt(foundation, {"num_classes": 180, "levels": [0, 1]})   # doctest: +SKIP
>>> optimizer = torch.optim.AdamW(param_groups(layout_unet, "freeze_backbone", adaptor_lr=1e-4))  # doctest: +SKIP

The adaptor lives under its own names (``adaptor.*`` and ``*.task_prompt.*``), so every
state-dict key of the foundation is unchanged in the adapted model and loads strictly.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from .nn.adaptor import is_adaptor_name
from .nn.unet import UNet
from .errors import StateDictError, UserError
from .state_dicts import listed, state_dict_mismatch

log = logging.getLogger(__name__)

MODES = ("all", "freeze_backbone", "separate")


def load_foundation_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a foundation's ``state_dict`` into an adapted ``model``: every foundation key must land
    (with its shape) and only adaptor keys may be left unloaded; otherwise a
    :class:`~layoutdiffuse.errors.StateDictError` lists them."""
    adaptor_keys = [k for k in state_dict if is_adaptor_name(k)]
    if adaptor_keys:
        raise StateDictError(f"the foundation state dict already holds adaptor keys {listed(adaptor_keys)}; "
                             "adapt a plain foundation model, or load an adapted checkpoint with load_state_dict")
    report = state_dict_mismatch(model, state_dict, may_be_missing=is_adaptor_name)
    if report:
        raise StateDictError(f"foundation weights do not match the adapted model: {report} "
                             "(only adaptor keys, 'adaptor.*' and '*.task_prompt.*', may be new)")
    model.load_state_dict(state_dict, strict=False)


def adapt(foundation: UNet, layout: dict[str, Any]) -> UNet:
    """Build ``UNet(**foundation.config, layout=layout)`` and load the foundation's weights into it.

    ``layout``: the adaptor config (:meth:`~layoutdiffuse.nn.adaptor.LayoutAdaptor.attach` arguments,
    e.g. ``{"num_classes": 180, "levels": [0, 1]}``). The result starts as an exact copy of the
    foundation's function (zero-initialised adaptor outputs).
    """
    if foundation.adaptor is not None:
        raise UserError("the foundation already has a layout adaptor; adapt the plain foundation model")
    config = dict(foundation.config, layout=dict(layout))
    model = UNet(**config)
    param = next(foundation.parameters())
    model.to(device=param.device, dtype=param.dtype)
    load_foundation_state(model, foundation.state_dict())
    model.train(foundation.training)
    added = sum(p.numel() for n, p in model.named_parameters() if is_adaptor_name(n))
    log.info("adapted foundation: %d adaptor parameters added", added)
    return model


def adaptor_parameter_names(model: nn.Module) -> list[str]:
    """Names of the adaptor's parameters (``adaptor.*``, ``*.task_prompt.*``) in ``model``."""
    return [name for name, _ in model.named_parameters() if is_adaptor_name(name)]


def param_groups(model: nn.Module, mode: str = "all", lr: float = 3e-5, adaptor_lr: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups for training an adapted model.

    * ``"all"``: every weight at ``lr`` (the reference: 3e-5, AdamW).
    * ``"freeze_backbone"``: backbone ``requires_grad=False``; the adaptor at ``adaptor_lr`` (default ``lr``).
    * ``"separate"``: backbone at ``lr``, adaptor at ``adaptor_lr`` (required).

    ``"all"`` and ``"separate"`` set ``requires_grad=True`` everywhere (undoing an earlier freeze).
    Each group carries a ``"name"`` (``"backbone"`` / ``"adaptor"``) for LR logging.
    """
    if mode not in MODES:
        raise UserError(f"unknown param_groups mode '{mode}'; choose one of: {', '.join(MODES)}")
    adaptor, backbone = [], []
    for name, p in model.named_parameters():
        (adaptor if is_adaptor_name(name) else backbone).append(p)
    if not adaptor and mode != "all":
        raise UserError(f"mode '{mode}' needs an adapted model, but it has no adaptor parameters")
    if mode == "all":
        for p in backbone + adaptor:
            p.requires_grad_(True)
        return [{"params": backbone + adaptor, "lr": lr, "name": "all"}]
    if mode == "freeze_backbone":
        for p in backbone:
            p.requires_grad_(False)
        for p in adaptor:
            p.requires_grad_(True)
        return [{"params": adaptor, "lr": lr if adaptor_lr is None else adaptor_lr, "name": "adaptor"}]
    if adaptor_lr is None:
        raise UserError("mode 'separate' needs adaptor_lr (the backbone uses lr)")
    for p in backbone + adaptor:
        p.requires_grad_(True)
    return [{"params": backbone, "lr": lr, "name": "backbone"}, {"params": adaptor, "lr": adaptor_lr, "name": "adaptor"}]
