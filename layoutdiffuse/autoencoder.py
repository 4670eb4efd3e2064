"""Latent space: the frozen autoencoder between images and a latent diffusion (LDM, Stable Diffusion).

* :class:`Autoencoder` -- wraps a diffusers ``AutoencoderKL`` (Stable Diffusion) or ``VQModel``
  (LDM CelebA-HQ) behind ``encode`` / ``decode``; always frozen and in eval mode.
* :class:`LatentCache` -- the autoencoder's output for training images on disk, so the encoder runs
  once per distinct image instead of once per step.

Latents are scaled: ``z = scale_factor * (E(x) - shift_factor)`` (``0.18215`` for Stable Diffusion
1.x/2.x, ``1.0`` for the LDM CelebA-HQ VQ-f4), so the diffusion sees roughly unit variance.
Needs the optional extra ``pip install 'layoutdiffuse[sd]'`` (diffusers).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .files import save_safetensors
from .errors import UserError

log = logging.getLogger(__name__)


#: latents the decoder runs on at a time by default (:class:`Autoencoder` ``decode_batch_size``)
DECODE_BATCH_SIZE = 4


def check_batch_size(value: int | None, what: str) -> int | None:
    """``value`` if it is ``None`` or a positive int, else a :class:`UserError` naming ``what``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{what} must be a positive integer (or None for all at once), got {value!r}")
    return value


def require_diffusers() -> Any:
    """Import diffusers or say how to install it."""
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("latent diffusion and foundation models need diffusers and transformers: "
                          "pip install 'layoutdiffuse[sd]'") from err
    return diffusers


class Autoencoder(nn.Module):
    """A frozen image <-> latent map.

    Args:
        model: a diffusers ``AutoencoderKL`` or ``VQModel``.
        scale_factor: latent scale (default: ``model.config.scaling_factor``; pass 1.0 for the LDM
            VQ models, whose latents are used unscaled).
        shift_factor: subtracted before scaling (default: ``model.config.shift_factor`` or 0).
        sample_posterior: KL models only: draw ``z ~ q(z|x)`` (Stable Diffusion training) instead of
            its mean.
        decode_batch_size: :meth:`decode` runs the decoder on this many latents at a time (``None``:
            all at once). Every image is decoded on its own by the decoder's arithmetic (GroupNorm and
            quantisation are per image), so slices change memory, not the result: the Stable Diffusion
            decoder's activations at 512 px are about 1 GiB per image and per float32 tensor.

    Shapes: ``x: (B, C, H, W)`` in [-1, 1] <-> ``z: (B, latent_channels, H / f, W / f)``.
    Models whose config says ``force_upcast`` (the Stable Diffusion VAE overflows in float16) run in
    float32 with autocast disabled.
    """

    def __init__(self, model: nn.Module, scale_factor: float | None = None, shift_factor: float | None = None,
                 sample_posterior: bool = True, decode_batch_size: int | None = DECODE_BATCH_SIZE):
        super().__init__()
        diffusers = require_diffusers()
        if isinstance(model, diffusers.AutoencoderKL):
            self.kind = "kl"
        elif isinstance(model, diffusers.VQModel):
            self.kind = "vq"
        else:
            raise TypeError(f"Autoencoder wraps a diffusers AutoencoderKL or VQModel, got {type(model).__name__}")
        self.model = model
        cfg = model.config
        self.scale_factor = float(cfg.get("scaling_factor", 1.0) if scale_factor is None else scale_factor)
        shift = cfg.get("shift_factor", None) if shift_factor is None else shift_factor
        self.shift_factor = float(shift or 0.0)
        self.sample_posterior = sample_posterior
        self.decode_batch_size = check_batch_size(decode_batch_size, "decode_batch_size")
        self.upcast = bool(cfg.get("force_upcast", False))
        self.requires_grad_(False)
        self.eval()

    # --- shape facts ---------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        """Channels of the latents the diffusion sees (VQ: after ``quant_conv``, ``vq_embed_dim``)."""
        cfg = self.model.config
        if self.kind == "vq" and cfg.get("vq_embed_dim") is not None:
            return int(cfg.vq_embed_dim)
        return int(cfg.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latents of ``image_size x image_size`` images."""
        f = self.downsample_factor
        if image_size % f:
            raise UserError(f"image_size {image_size} must be divisible by the autoencoder's downsample factor {f}")
        return (self.latent_channels, image_size // f, image_size // f)

    def fingerprint(self) -> str:
        """A short id of this autoencoder (config, scaling and a few weights), for latent caches."""
        h = hashlib.sha1(json.dumps({k: v for k, v in dict(self.model.config).items() if not k.startswith("_")},
                                    sort_keys=True, default=str).encode())
        h.update(f"{self.kind}:{self.scale_factor}:{self.shift_factor}".encode())
        for name, p in self.model.named_parameters():
            if name.startswith(("encoder.conv_in", "quant_conv")):
                h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    # --- frozen ----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Autoencoder":
        """Always eval: the autoencoder is frozen."""
        return super().train(False)

    @contextlib.contextmanager
    def _precision(self, x: torch.Tensor) -> Iterator[None]:
        if self.upcast and x.device.type in ("cuda", "cpu"):
            with torch.autocast(x.device.type, enabled=False):
                yield
        else:
            yield

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # --- image <-> latent ------------------------------------------------------------------------
    @torch.no_grad()
    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder says about ``x: (B, C, H, W)``: KL models ``(B, 2c, h, w)`` (mean, log-variance),
        VQ models the pre-quantisation latents ``(B, c, h, w)``; float32, unscaled. This is what
        :class:`LatentCache` stores."""
        with self._precision(x):
            x = x.to(torch.float32 if self.upcast else self._dtype())
            if self.kind == "kl":
                out = self.model.encode(x).latent_dist.parameters
            else:
                out = self.model.encode(x).latents
        return out.float()

    def latents_from_moments(self, moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents ``z`` from :meth:`moments` (a posterior sample or its mean for KL models)."""
        if self.kind == "kl":
            mean, logvar = moments.chunk(2, dim=1)
            if self.sample_posterior:
                std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
                z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            else:
                z = mean
        else:
            z = moments
        return (z - self.shift_factor) * self.scale_factor

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x: (B, C, H, W)`` in [-1, 1] -> scaled latents ``(B, c, H/f, W/f)`` (float32)."""
        return self.latents_from_moments(self.moments(x), generator)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Scaled latents ``z: (B, c, h, w)`` -> images ``(B, C, h*f, w*f)`` (float32, roughly [-1, 1];
        VQ models quantise first, as LDM does), ``batch_size`` latents at a time (default
        :attr:`decode_batch_size`; ``None`` there: all at once)."""
        size = check_batch_size(batch_size, "batch_size") or self.decode_batch_size or len(z)
        with self._precision(z):
            z = (z / self.scale_factor + self.shift_factor).to(torch.float32 if self.upcast else self._dtype())
            return torch.cat([self.model.decode(part).sample.float() for part in z.split(size)])


class LatentCache:
    """Autoencoder :meth:`~Autoencoder.moments` of images, on disk.

    Entries are keyed by the image's *content* (sha1 of its shape, dtype and bytes), so random
    augmentations simply miss and recompute; one file per image under
    ``<directory>/<autoencoder fingerprint>/<key[:2]>/<key>.safetensors``, written atomically
    (safe with several DDP ranks). The KL posterior is stored (mean and log-variance), so a cached
    image still gets a fresh posterior sample every step.
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: str):
        self.root = Path(directory).expanduser() / fingerprint
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(image: torch.Tensor) -> str:
        """Content key of one image ``(C, H, W)``."""
        array = image.detach().cpu().contiguous()
        h = hashlib.sha1(f"{tuple(array.shape)}:{array.dtype}".encode())
        h.update(array.numpy().tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def moments(self, images: torch.Tensor, encoder: Autoencoder) -> torch.Tensor:
        """Moments of ``images: (B, C, H, W)``: cached ones read, the others encoded (in one batch) and stored."""
        from safetensors.torch import load_file

        keys = [self.key(img) for img in images]
        found: dict[int, torch.Tensor] = {}
        for i, k in enumerate(keys):
            p = self.path(k)
            if p.exists():
                try:
                    found[i] = load_file(str(p))["moments"]
                except Exception as err:  # a torn or foreign file: recompute it
                    log.warning("latent cache: unreadable %s (%s); recomputing", p, err)
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            fresh = encoder.moments(images[missing])
            for i, m in zip(missing, fresh):
                found[i] = m
                save_safetensors({"moments": m.detach().cpu().contiguous()}, self.path(keys[i]))
        return torch.stack([found[i] for i in range(len(keys))]).to(images.device)
