"""Warm starts: a new model's tensors copied from a trained model where names match (``warm_start`` in a config).

``{"warm_start": {"ckpt": PATH, "parts": "backbone" | "adaptor" | "all"}}`` beside ``denoising_model``
or ``adapt``: after the model is built, each of its tensors in ``parts`` (``adaptor``: the adaptor's,
``adaptor.*`` and ``*.task_prompt.*``; ``backbone``: the others) takes the value of the tensor of the
same name in the checkpoint's sampling (EMA) model when the shapes agree. A tensor whose shapes differ
only in an image-channel axis of size 1 in the source (a grey model starting an RGB one: the stem
conv's input channels, the last conv's output channels) is tiled across the channels. The stem's
weights are divided by the channel count (a grey image repeated in every channel gets the source's
response) and perturbed by noise of their own spread: exact copies would leave every channel
reading only the channels' mean, and training would stay at the loss of predicting the mean noise
(2/3 for three channels; measured: 0.67 after 60 steps, against 0.12 with the perturbation). Every
other tensor keeps its initial value, and the log says how many did.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .nn.adaptor import is_adaptor_name

log = logging.getLogger(__name__)



def tiled(source: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """``source`` tiled to ``shape`` across the one axis (0 or 1) where it has size 1 and the target
    more (axis 1, a conv's input channels: divided by the count and perturbed, see the module
    docstring; draws from torch's global generator); ``None`` when it does not fit so."""
    if source.ndim != len(shape) or source.shape == shape:
        return None
    differ = [i for i, (a, b) in enumerate(zip(source.shape, shape)) if a != b]
    if len(differ) != 1 or differ[0] > 1 or source.shape[differ[0]] != 1:
        return None
    axis, count = differ[0], shape[differ[0]]
    out = source.repeat_interleave(count, dim=axis)
    if axis == 0:
        return out
    out = out / count
    return out + torch.randn_like(out) * out.float().std()


@torch.no_grad()
def warm_start(model: nn.Module, path: str | Path, parts: str = "all") -> dict[str, int]:
    """Copy the checkpoint's tensors into ``model`` (see the module docstring); returns the counts
    ``{"copied", "tiled", "kept"}`` (kept: no tensor of that name and shape in the source)."""
    from .checkpoints import sampling_model

    source = sampling_model(path).state_dict()
    counts = {"copied": 0, "tiled": 0, "kept": 0}
    for name, tensor in model.state_dict().items():
        adaptor = is_adaptor_name(name)
        if (parts == "backbone" and adaptor) or (parts == "adaptor" and not adaptor):
            continue
        value = source.get(name)
        if value is not None and value.shape == tensor.shape:
            tensor.copy_(value)
            counts["copied"] += 1
        elif value is not None and (grown := tiled(value, tensor.shape)) is not None:
            tensor.copy_(grown)
            counts["tiled"] += 1
        else:
            counts["kept"] += 1
    log.info("warm start from %s (%s): %d tensors copied, %d tiled across channels, %d kept as initialised",
             path, parts, counts["copied"], counts["tiled"], counts["kept"])
    return counts

