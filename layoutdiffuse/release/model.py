"""Building the release's model in this project's form and filling it from a release checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from .checkpoint import read_release_state_dict
from .config import architecture, read_release_config
from .convert import convert_release_unet


def build_release_unet(arch: Mapping[str, Any], device: str | torch.device | None = None) -> Any:
    """A randomly initialised :class:`~layoutdiffuse.sd.layout_unet.LayoutDiffusersUNet` of ``arch``
    (``device="meta"``: shapes only, no memory)."""
    from ..sd.layout_unet import LayoutDiffusersUNet

    if device is None:
        return LayoutDiffusersUNet.from_config(arch)
    with torch.device(device):
        return LayoutDiffusersUNet.from_config(arch)


def load_release_unet(ckpt: str | Path | Mapping[str, torch.Tensor], config: str | Path | Mapping[str, Any]) -> Any:
    """The release UNet of ``ckpt`` (a ``.ckpt`` path or its state dict) and ``config`` (the release's
    config file or its parsed :func:`~layoutdiffuse.release.config.read_release_config`), in eval mode."""
    release = config if isinstance(config, Mapping) and "model_args" in config else read_release_config(config)
    state = ckpt if isinstance(ckpt, Mapping) else read_release_state_dict(ckpt)
    arch = architecture(release)
    model = build_release_unet(arch)
    model.load_state_dict(convert_release_unet(state, arch, model))
    return model.eval()
