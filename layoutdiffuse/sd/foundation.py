"""Foundational models: one class per kind (file checks, loading, download hint, latent downscale).

    "adapt": {"foundation": "stable_diffusion",
              "path": "$LAYOUTDIFFUSE_DATA/pretrained/stable-diffusion-v1-5",
              "layout": {"num_classes": 171, "levels": [1, 2], "num_task_prompts": 64},
              "gradient_checkpointing": true}

``path`` may start with ``$LAYOUTDIFFUSE_DATA`` (the data root, default ``~/data``, as everywhere in
this project); other ``$VARS`` and ``~`` are expanded too. Layouts on disk:

* ``stable_diffusion``: a diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``; what ``data_scripts/download_pretrained_models.sh`` writes), or one original
  ``.ckpt`` / ``.safetensors`` file read by diffusers' ``from_single_file``; no model hub is
  reachable offline, so a single file needs ``"config"``: a local diffusers folder holding the
  component configs.
* ``ldm``: the CompVis ``model.ckpt`` + ``config.yaml`` folder, or a diffusers folder
  (``unet/``, ``vqvae/``); see :mod:`layoutdiffuse.sd.ldm`.

The noise schedule and prediction target come from the foundation (its scheduler config or LDM
yaml); values given in the config's ``diffusion`` section win, with a warning when they differ.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from torch import nn

from ..data.paths import data_root
from ..autoencoder import Autoencoder, require_diffusers
from .schedules import diffusion_from_scheduler
from .spec import FOUNDATIONS
from ..errors import UserError, MissingFileError

log = logging.getLogger(__name__)

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                     "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors", "pytorch_model.fp16.bin")


@dataclass
class Foundation:
    """The parts of a foundational model. ``diffusion``: GaussianDiffusion keyword arguments
    (schedule, num_timesteps, prediction, beta_start, beta_end) of its training process."""

    kind: str
    unet: nn.Module
    autoencoder: Autoencoder
    text_encoder: nn.Module | None
    tokenizer: Any
    diffusion: dict[str, Any]
    source: Path


def resolve_path(path: str | os.PathLike) -> Path:
    """``$LAYOUTDIFFUSE_DATA`` (default ``~/data``), other environment variables and ``~`` expanded."""
    text = re.sub(r"\$\{?LAYOUTDIFFUSE_DATA\}?", lambda _: str(data_root()), str(path))
    return Path(os.path.expandvars(text)).expanduser()


# --- the kinds --------------------------------------------------------------------------------------

class FoundationKind:
    """One kind of foundation (``adapt.foundation``): where its files are, how it loads, what to
    download, and its autoencoder's latent downscale (pixel size = latent size * ``downscale``)."""

    name: ClassVar[str]
    download_hint: ClassVar[str]
    downscale: ClassVar[int]

    def missing(self, path: Path, what: str) -> MissingFileError:
        return MissingFileError(f"{self.name} foundation: {what} not found: {path}; {self.download_hint}")

    def need_parts(self, folder: Path, parts: Mapping[str, tuple[str, ...]]) -> None:
        """Each subfolder's ``config.json`` and one of its weight files, or the first missing one named."""
        for sub, names in parts.items():
            if not (folder / sub / "config.json").exists():
                raise self.missing(folder / sub / "config.json", f"{sub} config")
            if not any((folder / sub / n).exists() for n in names):
                raise self.missing(folder / sub / names[0], f"{sub} weights file")

    def need_scheduler(self, folder: Path) -> None:
        if not (folder / "scheduler" / "scheduler_config.json").exists():
            raise self.missing(folder / "scheduler" / "scheduler_config.json", "scheduler config (noise schedule and prediction type)")

    def check_files(self, path: str | os.PathLike, config: str | os.PathLike | None = None) -> Path:
        """Check that the weight files exist (a :class:`MissingFileError` names the first missing
        one) before anything is built. Returns the resolved path."""
        raise NotImplementedError

    def load(self, path: str | os.PathLike, config: str | os.PathLike | None = None, scale_factor: float | None = None,
             sample_posterior: bool = True) -> Foundation:
        """UNet, frozen autoencoder, frozen text encoder + tokenizer (text foundations) and noise schedule."""
        raise NotImplementedError

    def matches(self, folder: Path, unet_class: str) -> bool:
        """True when ``folder`` (with a release model whose UNet is ``unet_class``) is this kind."""
        raise NotImplementedError

    def from_text_folder(self, p: Path, autoencoder: str, text_encoder: tuple[Any, str], tokenizer: Any,
                         scale_factor: float | None, sample_posterior: bool) -> Foundation:
        """A text foundation's diffusers folder: ``unet/``, the ``autoencoder`` subfolder (a KL autoencoder),
        ``text_encoder = (class, subfolder)``, ``tokenizer/`` read by the ``tokenizer`` class, ``scheduler/``."""
        diffusers = require_diffusers()
        unet = diffusers.UNet2DConditionModel.from_pretrained(p, subfolder="unet", local_files_only=True)
        vae = diffusers.AutoencoderKL.from_pretrained(p, subfolder=autoencoder, local_files_only=True)
        encoder = text_encoder[0].from_pretrained(p / text_encoder[1], local_files_only=True)
        schedule = diffusion_from_scheduler(json.loads((p / "scheduler" / "scheduler_config.json").read_text()))
        return self.assembled(p, unet, vae, encoder, tokenizer.from_pretrained(p / "tokenizer", local_files_only=True), schedule,
                              scale_factor, sample_posterior)

    def assembled(self, p: Path, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer: Any, schedule: dict[str, Any],
                  scale_factor: float | None, sample_posterior: bool) -> Foundation:
        log.info("loaded %s foundation %s (%s, %.0fM UNet parameters)", self.name, p, schedule, sum(t.numel() for t in unet.parameters()) / 1e6)
        text_encoder.requires_grad_(False)
        autoencoder = Autoencoder(vae, scale_factor=scale_factor, sample_posterior=sample_posterior)
        return Foundation(self.name, unet, autoencoder, text_encoder.eval(), tokenizer, schedule, p)


class StableDiffusion(FoundationKind):
    """A diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), or one
    original ``.ckpt`` / ``.safetensors`` file with ``config`` (a local diffusers folder of component configs)."""

    name, downscale = "stable_diffusion", 8
    download_hint = "download it with `bash data_scripts/download_pretrained_models.sh sd15` (or sd21)"
    PARTS = {"unet": DIFFUSERS_WEIGHTS, "vae": DIFFUSERS_WEIGHTS, "text_encoder": TRANSFORMERS_WEIGHTS}

    def check_files(self, path: str | os.PathLike, config: str | os.PathLike | None = None) -> Path:
        p = resolve_path(path)
        if p.suffix in (".ckpt", ".safetensors"):
            if not p.exists():
                raise self.missing(p, "weights file")
            if config is None:
                raise UserError(f"single-file Stable Diffusion weights ({p}) need adapt.config: a local diffusers folder with the "
                                "component configs (model_index.json, unet/config.json, ...); no model hub is reached")
            if not resolve_path(config).is_dir():
                raise self.missing(resolve_path(config), "adapt.config folder")
            return p
        if not p.is_dir():
            raise self.missing(p / "unet" / DIFFUSERS_WEIGHTS[0],
                               f"weights file (no diffusers folder with unet/, vae/, text_encoder/, tokenizer/, scheduler/ at {p})")
        self.need_parts(p, self.PARTS)
        if not ((p / "tokenizer" / "tokenizer.json").exists() or (p / "tokenizer" / "vocab.json").exists()):
            raise self.missing(p / "tokenizer" / "vocab.json", "tokenizer vocabulary")
        self.need_scheduler(p)
        return p

    def load(self, path: str | os.PathLike, config: str | os.PathLike | None = None, scale_factor: float | None = None,
             sample_posterior: bool = True) -> Foundation:
        p = self.check_files(path, config)
        if p.is_file():
            pipe = require_diffusers().StableDiffusionPipeline.from_single_file(str(p), config=str(resolve_path(config)),
                                                                               local_files_only=True, load_safety_checker=False)
            return self.assembled(p, pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, diffusion_from_scheduler(pipe.scheduler.config),
                                  scale_factor, sample_posterior)
        from transformers import CLIPTextModel, CLIPTokenizer

        return self.from_text_folder(p, "vae", (CLIPTextModel, "text_encoder"), CLIPTokenizer, scale_factor, sample_posterior)

    def matches(self, folder: Path, unet_class: str) -> bool:
        return unet_class != "UNet2DModel" and not LDMText().matches(folder, unet_class)


class LDMText(FoundationKind):
    """The LAION text-to-image LDM: the diffusers folder of ``CompVis/ldm-text2im-large-256``."""

    name, downscale = "ldm_text", 8
    download_hint = "it is the diffusers folder of CompVis/ldm-text2im-large-256 (unet/, vqvae/, bert/, tokenizer/, scheduler/)"
    PARTS = {"unet": DIFFUSERS_WEIGHTS, "vqvae": DIFFUSERS_WEIGHTS, "bert": TRANSFORMERS_WEIGHTS}

    def check_files(self, path: str | os.PathLike, config: str | os.PathLike | None = None) -> Path:
        p = resolve_path(path)
        self.need_parts(p, self.PARTS)
        if not (p / "tokenizer" / "vocab.txt").exists():
            raise self.missing(p / "tokenizer" / "vocab.txt", "BERT tokenizer vocabulary")
        self.need_scheduler(p)
        return p

    def load(self, path: str | os.PathLike, config: str | os.PathLike | None = None, scale_factor: float | None = None,
             sample_posterior: bool = True) -> Foundation:
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel
        from transformers import BertTokenizer

        return self.from_text_folder(self.check_files(path, config), "vqvae", (LDMBertModel, "bert"), BertTokenizer, scale_factor,
                                     sample_posterior)

    def matches(self, folder: Path, unet_class: str) -> bool:
        index = folder / "model_index.json"
        return unet_class != "UNet2DModel" and ((folder / "bert").is_dir() or (index.is_file() and "LDMTextToImage" in index.read_text()))


class LDM(FoundationKind):
    """An unconditional LDM (CelebA-HQ): the CompVis ``model.ckpt`` + ``config.yaml`` folder, or a
    diffusers folder (``unet/``, ``vqvae/``); see :mod:`layoutdiffuse.sd.ldm`."""

    name, downscale = "ldm", 4
    download_hint = "download it with `bash data_scripts/download_pretrained_models.sh ldm-celebahq`"

    def check_files(self, path: str | os.PathLike, config: str | os.PathLike | None = None) -> Path:
        p = resolve_path(path)
        if p.is_dir() and (p / "unet" / "config.json").exists():
            self.need_parts(p, {"unet": DIFFUSERS_WEIGHTS, "vqvae": DIFFUSERS_WEIGHTS})
            return p
        ckpt = p / "model.ckpt" if p.is_dir() or not p.suffix else p
        if not ckpt.exists():
            raise self.missing(ckpt, "weights file")
        return p

    def load(self, path: str | os.PathLike, config: str | os.PathLike | None = None, scale_factor: float | None = None,
             sample_posterior: bool = True) -> Foundation:
        from .ldm import load_ldm

        unet, vq, schedule, scale = load_ldm(self.check_files(path, config))
        autoencoder = Autoencoder(vq, scale_factor=scale if scale_factor is None else scale_factor)
        log.info("loaded LDM foundation %s (%s, latent scale %s)", path, schedule, autoencoder.scale_factor)
        return Foundation(self.name, unet, autoencoder, None, None, schedule, resolve_path(path))

    def matches(self, folder: Path, unet_class: str) -> bool:
        return unet_class == "UNet2DModel"


#: the foundation kinds by ``adapt.foundation`` name
FOUNDATION_KINDS: dict[str, FoundationKind] = {kind.name: kind for kind in (StableDiffusion(), LDM(), LDMText())}


def foundation_kind(name: str) -> FoundationKind:
    """The kind named ``name`` (``adapt.foundation``), or one line naming the kinds there are."""
    if name not in FOUNDATION_KINDS:
        raise UserError(f"unknown foundation '{name}'; choose one of: {', '.join(FOUNDATIONS)}")
    return FOUNDATION_KINDS[name]


def detect_kind(folder: Path, unet_class: str) -> FoundationKind:
    """The kind of the foundation folder of a release model whose UNet is ``unet_class``."""
    return next(kind for kind in FOUNDATION_KINDS.values() if kind.matches(folder, unet_class))


def check_foundation_files(kind: str, path: str | os.PathLike, config: str | os.PathLike | None = None) -> Path:
    """:meth:`FoundationKind.check_files` of the kind named ``kind``."""
    return foundation_kind(kind).check_files(path, config)


def load_foundation(kind: str, path: str | os.PathLike, config: str | os.PathLike | None = None,
                    scale_factor: float | None = None, sample_posterior: bool = True) -> Foundation:
    """:meth:`FoundationKind.load` of the kind named ``kind``."""
    return foundation_kind(kind).load(path, config, scale_factor, sample_posterior)


def merge_diffusion(foundation: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The foundation's process, with the config's values winning (a warning names each difference)."""
    out = dict(foundation)
    for key, value in given.items():
        if key in foundation and foundation[key] != value:
            log.warning("diffusion.%s=%r differs from the foundation's %r; training with %r", key, value, foundation[key], value)
        out[key] = value
    return out
