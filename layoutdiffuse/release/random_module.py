"""Published models with random weights, built in memory (no download): the converted module of
each of the release's five published architectures, for the GPU check and the full-size tests. The
foundation folders and release-format checkpoints on disk: :mod:`layoutdiffuse.sd.random_foundation`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..autoencoder import Autoencoder, require_diffusers


def build_random_module(name: str, tiny: bool = False, seed: int = 0) -> Any:
    """The converted module of published model ``name`` (the adapted UNet with the foundation's
    autoencoder and text encoder) with random weights, built in memory by
    :func:`~layoutdiffuse.factory.build_module` as a conversion would build it; float32, eval mode."""
    import tempfile

    from ..factory import build_module
    from ..sd.foundation import Foundation, foundation_kind
    from ..sd.random_foundation import SCALING, _text_parts, foundation_configs, tiny_release_config
    from ..sd.testing import randomize
    from .config import architecture, diffusion_config, read_release_config
    from .export import RELEASE_SAMPLING
    from .model import build_release_unet

    diffusers = require_diffusers()
    cfg = foundation_configs(name, tiny)
    release = read_release_config(tiny_release_config(name) if tiny else name)
    arch = architecture(release)
    torch.manual_seed(seed)
    model = build_release_unet({**arch, "unet": cfg["unet"][1]})
    randomize(model, seed, scale=0.02)
    ae_cls, ae_cfg = cfg["autoencoder"]
    autoencoder = Autoencoder(getattr(diffusers, ae_cls)(**ae_cfg), scale_factor=SCALING.get(cfg["kind"], 1.0))
    text_encoder = tokenizer = None
    if cfg["text"] is not None:
        with tempfile.TemporaryDirectory() as scratch:
            text_encoder, tokenizer = _text_parts(cfg["kind"], cfg["text"], Path(scratch))
        text_encoder.eval()
    size = int(cfg["unet"][1]["sample_size"])
    sampling = {**RELEASE_SAMPLING, "guidance": 1.0 if arch["layout"]["mask"] else 5.0}
    kind = foundation_kind(cfg["kind"])
    config = {"expt_name": f"random-{name}", "adapt": {"foundation": kind.name},
              "diffusion": {**diffusion_config(release), "ema_decay": 0.0, "sampling": sampling, "training": "LatentDDPMTraining"},
              "data": {"image_size": size * kind.downscale}}
    found = Foundation(kind=kind.name, unet=model, autoencoder=autoencoder, text_encoder=text_encoder, tokenizer=tokenizer,
                       diffusion={}, source=Path(f"random weights of {name}"))
    return build_module(config, model=model, foundation=found).eval()
