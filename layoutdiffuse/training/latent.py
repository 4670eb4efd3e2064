"""``LatentDDPMTraining``: DDPM training and sampling in the latent space of a frozen autoencoder.

The Stable Diffusion / LDM recipe: images are encoded (no gradient) to scaled latents, the
diffusion runs there, samples are decoded. For text foundations the captions are encoded by the
frozen text encoder after condition dropout, so a dropped caption is the empty string, exactly
the unconditional input Stable Diffusion was trained with. Classifier-free guidance drops / nulls
the layout *and* the caption together; sampling (:meth:`~layoutdiffuse.training.ddpm.DDPMTraining.sample`)
also takes negative prompts.

The autoencoder and text encoder are always frozen, never in the optimizer, never in EMA, kept in
eval mode, and left out of checkpoints (they are reloaded from the foundation). Latents may be
cached on disk (``latent_cache``: a folder; see :class:`~layoutdiffuse.autoencoder.LatentCache`).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..diffusion.guidance import null_condition
from .ddpm import DDPMTraining
from ..errors import UserError

log = logging.getLogger(__name__)

#: submodules that are frozen foundation parts (not saved in checkpoints)
FROZEN = ("autoencoder", "text_encoder")


class LatentDDPMTraining(DDPMTraining):
    """:class:`DDPMTraining` in latent space.

    Args:
        denoising_model: ``model(z_t, t, cond)`` on latents (e.g. :class:`~layoutdiffuse.sd.layout_unet.LayoutDiffusersUNet`).
        autoencoder: a :class:`~layoutdiffuse.autoencoder.Autoencoder` (frozen).
        text_encoder, tokenizer: a frozen transformers text encoder and its tokenizer for text
            foundations (``cond["caption"]`` -> ``cond["context"]``), or ``None``; a denoiser with text
            instance prompts gets them too (``use_text_encoder``: per-box phrases, :mod:`layoutdiffuse.sd.phrases`).
        latent_cache: a folder to cache the autoencoder's output for training images, or ``None``.
        kwargs: as :class:`DDPMTraining`, with latent defaults: ``image_shape`` (the *latent* shape
            ``(c, h, w)``) ``(4, 32, 32)``, ``ema_decay`` 0.9999, ``cond_drop_prob`` 0.1 (layout and
            caption dropped together), sampling with ``clip=False`` (latents are not in [-1, 1]).
    """

    def __init__(
        self,
        denoising_model: nn.Module,
        autoencoder: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any = None,
        latent_cache: str | None = None,
        **kwargs: Any,
    ):
        if autoencoder is None:
            raise UserError("LatentDDPMTraining needs an autoencoder (layoutdiffuse.autoencoder.Autoencoder)")
        if (text_encoder is None) != (tokenizer is None):
            raise UserError("give both text_encoder and tokenizer, or neither")
        denoising_model.train()  # diffusers' from_pretrained returns eval-mode models
        hand_over = getattr(denoising_model, "use_text_encoder", None)
        if hand_over is not None:  # text prompts read with the frozen text encoder (before the EMA copy, which shares it)
            hand_over(text_encoder, tokenizer)
        kwargs = {"image_shape": (4, 32, 32), "ema_decay": 0.9999, "cond_drop_prob": 0.1, **kwargs}
        kwargs["sampling"] = {"clip": False, **(kwargs.get("sampling") or {})}
        super().__init__(denoising_model, **kwargs)
        self.autoencoder = autoencoder
        self.autoencoder.requires_grad_(False)
        self.text_encoder = text_encoder
        if text_encoder is not None:
            text_encoder.requires_grad_(False)
            text_encoder.eval()
        self.tokenizer = tokenizer
        self.latent_cache_dir = latent_cache
        self._cache = None
        self._warned_caption = False

    @classmethod
    def config_keys(cls) -> dict[str, Any]:
        keys = super().config_keys()
        for name in ("autoencoder", "text_encoder", "tokenizer"):
            keys.pop(name, None)
        return keys

    # --- frozen parts ------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "LatentDDPMTraining":
        """Train/eval the denoiser; the frozen foundation parts stay in eval mode."""
        super().train(mode)
        for name in FROZEN:
            part = getattr(self, name, None)
            if part is not None:
                part.eval()
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Without the frozen foundation parts (``autoencoder.*``, ``text_encoder.*``): checkpoints hold what trains."""
        out = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for key in [k for k in out if k[len(prefix):].startswith(tuple(f"{n}." for n in FROZEN))]:
            del out[key]
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Loads a checkpoint without frozen parts: those keep the foundation's weights."""
        state_dict = dict(state_dict)
        for name in FROZEN:
            part = getattr(self, name, None)
            if part is not None:
                for key, value in part.state_dict().items():
                    state_dict.setdefault(f"{name}.{key}", value)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # --- latents -----------------------------------------------------------------------------------
    @property
    def latent_cache(self) -> Any:
        if self.latent_cache_dir and self._cache is None:
            from ..autoencoder import LatentCache

            self._cache = LatentCache(self.latent_cache_dir, self.autoencoder.fingerprint())
        return self._cache

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``images: (B, C, H, W)`` in [-1, 1] -> scaled latents ``(B, c, h, w)`` (float32)."""
        cache = self.latent_cache
        moments = cache.moments(images, self.autoencoder) if cache is not None else self.autoencoder.moments(images)
        z = self.autoencoder.latents_from_moments(moments, generator)
        if tuple(z.shape[1:]) != self.image_shape:
            raise UserError(f"images {tuple(images.shape[1:])} encode to latents {tuple(z.shape[1:])}, but this module's "
                             f"image_shape is {self.image_shape} (data.image_size must match)")
        return z

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, c, h, w)`` -> images ``(B, C, H, W)`` in [-1, 1], float32."""
        return self.autoencoder.decode(z).clamp(-1, 1)

    decode_latents = decode

    def process_batch(self, batch: Any, mode: str = "train") -> dict[str, Any]:
        """The base batch handling, then ``x0`` = the latents of ``image``."""
        inputs = super().process_batch(batch, mode)
        inputs["x0"] = self.encode_images(inputs["x0"], self.step_generator(10_000 if mode == "train" else 10_001))
        return inputs

    # --- text --------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> text-encoder hidden states ``(B, S, D)`` (padded to the tokenizer's max length)."""
        tok = self.tokenizer(list(captions), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return self.text_encoder(tok.input_ids.to(self.device))[0]

    def encode_condition(self, cond: dict[str, Any] | None, batch_size: int) -> dict[str, Any] | None:
        """``cond`` with ``caption`` (list of str; absent = empty captions) replaced by ``context``
        for text foundations; captions are dropped (with one warning) for unconditional ones."""
        if self.text_encoder is None:
            if cond and "caption" in cond:
                if not self._warned_caption:
                    log.warning("the foundation has no text encoder: captions are ignored")
                    self._warned_caption = True
                cond = {k: v for k, v in cond.items() if k != "caption"}
            return cond
        cond = dict(cond or {})
        if "context" in cond:
            return cond
        captions = cond.pop("caption", None)
        if captions is None:
            captions = [""] * batch_size
        if len(captions) != batch_size:
            raise UserError(f"{len(captions)} captions for a batch of {batch_size}")
        cond["context"] = self.encode_text(captions)
        return cond

    def compute_losses(self, x0: torch.Tensor, t: torch.Tensor, cond: dict[str, Any] | None, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().compute_losses(x0, t, self.encode_condition(cond, x0.shape[0]), noise)

    # --- the inference interface -------------------------------------------------------------------
    @property
    def is_text_model(self) -> bool:
        return self.text_encoder is not None

    @property
    def is_latent_model(self) -> bool:
        return True

    def precision_parts(self) -> list[nn.Module]:
        """The denoiser, its EMA copy, the text encoder, and the autoencoder unless its config says it
        must run in float32 (``force_upcast``)."""
        parts = [self.text_encoder] + ([] if self.autoencoder.upcast else [self.autoencoder])
        return super().precision_parts() + [p for p in parts if p is not None]

    def sampling_options(self, **overrides: Any) -> dict[str, Any]:
        opts = super().sampling_options(**overrides)
        if opts.get("clip"):
            log.warning("clip=True ignored: latents are not in [-1, 1] (decoded images are clamped)")
            opts["clip"] = False
        return opts

    def sampling_conditions(self, n: int, cond: dict[str, Any] | None, guidance: float,
                            negative_prompt: str | Sequence[str] | None = None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """``cond`` and its null (the empty layout and the empty caption -- or ``negative_prompt``, one
        string or ``n``) with captions encoded by the text encoder."""
        cond = dict(cond or {})
        if negative_prompt is not None and self.text_encoder is None:
            raise UserError("negative_prompt needs a text foundation (this model has no text encoder)")
        if guidance == 1:
            return self.encode_condition(cond, n), None
        null = null_condition(cond)
        if negative_prompt is not None:
            null["caption"] = [negative_prompt] * n if isinstance(negative_prompt, str) else list(negative_prompt)
        return self.encode_condition(cond, n) or {}, self.encode_condition(null, n) or {}
