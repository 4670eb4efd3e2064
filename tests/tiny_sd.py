"""Tiny foundations for the tests (from :mod:`layoutdiffuse.sd.testing`: random weights, real
architectures, a generated stand-in CLIP tokenizer; nothing downloaded) and layout helpers."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from layoutdiffuse.sd.testing import (LDM_ARCHITECTURES, SD_ARCHITECTURES, SD_SCHEDULER, build_ldm, build_sd,  # noqa: E402,F401
                                      randomize)
from layoutdiffuse.sd.testing import save_sd_folder as _save_sd_folder  # noqa: E402

MAX_LEN = SD_ARCHITECTURES["tiny"]["max_length"]
CONTEXT_DIM = SD_ARCHITECTURES["tiny"]["unet"]["cross_attention_dim"]
LDM_VQ = LDM_ARCHITECTURES["tiny"]["vq"]


def tiny_sd(seed: int = 0) -> dict[str, Any]:
    return build_sd("tiny", seed)


def tiny_ldm(seed: int = 0) -> dict[str, Any]:
    return build_ldm("tiny", seed)


def save_sd_folder(root: Path, seed: int = 0, scheduler: dict[str, Any] | None = None) -> Path:
    return _save_sd_folder(root, "tiny", seed, scheduler)


def box_layouts(b: int, num_classes: int, seed: int = 1) -> torch.Tensor:
    """Padded box layouts, item i with i % 4 objects (item 0 is the empty layout)."""
    from layoutdiffuse.layout import pad_layouts

    g = torch.Generator().manual_seed(seed)
    layouts = []
    for i in range(b):
        n = i % 4
        wh = 0.1 + 0.5 * torch.rand(n, 2, generator=g)
        xy = torch.rand(n, 2, generator=g) * (1 - wh)
        layouts.append(torch.cat([xy, wh, torch.randint(0, num_classes, (n, 1), generator=g).float()], 1))
    return pad_layouts(layouts)


def perturbed(model: torch.nn.Module, seed: int = 5) -> torch.nn.Module:
    """A copy of an adapted model whose adaptor is no longer an identity (gates and zero-initialised outputs random)."""
    from layoutdiffuse.nn.adaptor import is_adaptor_name

    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adaptor_name(name):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def masks(b: int, size: int, num_classes: int, seed: int = 2) -> torch.Tensor:
    """Random part masks ``(b, size, size)`` with ~20% ignore (255) pixels."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randint(0, num_classes, (b, size, size), generator=g)
    m[torch.rand(m.shape, generator=g) < 0.2] = 255
    return m




def release_sd_folder(root: Path, release_config: Path, monkeypatch: Any) -> Path:
    """A stand-in Stable Diffusion folder whose UNet has the architecture of a tiny release model
    (``release_config``: its JSON) and random weights (converting the release checkpoint onto it
    replaces every UNet weight); tiny autoencoder and text encoder."""
    from layoutdiffuse.release import architecture, read_release_config
    from layoutdiffuse.sd import testing

    unet = architecture(read_release_config(release_config))["unet"]
    monkeypatch.setitem(testing.SD_ARCHITECTURES, "release_tiny", {
        "unet": unet, "max_length": 8,
        "vae": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    block_out_channels=(8, 8, 8, 8), latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=64),
        "text": dict(hidden_size=unet["cross_attention_dim"], intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                     projection_dim=24)})
    return testing.save_sd_folder(root, "release_tiny")
