"""One strict check of weights against a model, reporting every mismatch by name.

Used wherever weights are loaded: adapted foundations (:func:`layoutdiffuse.adapt.load_foundation_state`),
diffusers layout UNets, converted LDM checkpoints and :func:`layoutdiffuse.experiment.load_checkpoint`.
Foundation and adaptor keys are listed apart, since only adaptor keys may be new in an adapted model.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .nn.adaptor import is_adaptor_name


def listed(keys: Sequence[str], limit: int = 20) -> str:
    """``[a, b, ... and N more]``."""
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + more + "]"


def state_dict_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                        may_be_missing: Callable[[str], bool] = lambda key: False) -> str:
    """Empty when ``state_dict`` fits ``model`` (every key, every shape); else one line naming the
    missing, unexpected and mis-shaped keys. Keys for which ``may_be_missing`` is true may be absent."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not may_be_missing(k)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        adaptor = [k for k in keys if is_adaptor_name(k)]
        other = [k for k in keys if not is_adaptor_name(k)]
        if other:
            parts.append(f"{len(other)} {what} foundation keys {listed(other)}")
        if adaptor:
            parts.append(f"{len(adaptor)} {what} adaptor keys {listed(adaptor)}")
    if shapes:
        parts.append(f"{len(shapes)} keys with another shape (given vs model) {listed(shapes)}")
    return "; ".join(parts)


def dtype_mismatch(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> str:
    """Empty when every tensor of ``state_dict`` holds the kind of number its model tensor in ``own`` holds
    (floating point for floating point, integers for integers; never bool or complex where the model has
    neither); else one line naming the keys. ``load_state_dict`` would silently cast a bool or int8
    tensor into float weights."""
    def kind(t: torch.Tensor) -> str:
        return "bool" if t.dtype == torch.bool else "complex" if t.is_complex() else "float" if t.is_floating_point() else "integer"

    bad = [f"{k}: {v.dtype} (the model holds {own[k].dtype})" for k, v in state_dict.items()
           if k in own and isinstance(v, torch.Tensor) and kind(v) != kind(own[k])]
    return f"{len(bad)} tensors of another kind of number {listed(bad, 4)}" if bad else ""
