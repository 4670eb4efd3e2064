"""Loading foundational models and building the training module of an ``adapt.foundation`` config.

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
from typing import Any, Mapping

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
DOWNLOAD_HINT = {
    "stable_diffusion": "download it with `bash data_scripts/download_pretrained_models.sh sd15` (or sd21)",
    "ldm": "download it with `bash data_scripts/download_pretrained_models.sh ldm-celebahq`",
    "ldm_text": "it is the diffusers folder of CompVis/ldm-text2im-large-256 (unet/, vqvae/, bert/, tokenizer/, scheduler/)",
}
#: the LAION text-to-image LDM's diffusers folder: subfolder -> weight file names
LDM_TEXT_PARTS = {"unet": DIFFUSERS_WEIGHTS, "vqvae": DIFFUSERS_WEIGHTS, "bert": TRANSFORMERS_WEIGHTS}


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


# --- file checks (fail before building anything) ---------------------------------------------------

def _need(path: Path, kind: str, what: str) -> None:
    raise MissingFileError(f"{kind} foundation: {what} not found: {path}; {DOWNLOAD_HINT[kind]}")


def _need_one(folder: Path, names: tuple[str, ...], kind: str, what: str) -> None:
    if not any((folder / n).exists() for n in names):
        _need(folder / names[0], kind, what)


def check_foundation_files(kind: str, path: str | os.PathLike, config: str | os.PathLike | None = None) -> Path:
    """Check that the weight files of a foundation exist; ``FileNotFoundError`` names the first missing
    one. Returns the resolved path."""
    if kind not in FOUNDATIONS:
        raise UserError(f"unknown foundation '{kind}'; choose one of: {', '.join(FOUNDATIONS)}")
    p = resolve_path(path)
    if kind == "stable_diffusion":
        if p.suffix in (".ckpt", ".safetensors"):
            if not p.exists():
                _need(p, kind, "weights file")
            if config is None:
                raise UserError(f"single-file Stable Diffusion weights ({p}) need adapt.config: a local diffusers folder with the "
                                 "component configs (model_index.json, unet/config.json, ...); no model hub is reached")
            if not resolve_path(config).is_dir():
                _need(resolve_path(config), kind, "adapt.config folder")
            return p
        if not p.is_dir():
            _need(p / "unet" / DIFFUSERS_WEIGHTS[0], kind,
                  f"weights file (no diffusers folder with unet/, vae/, text_encoder/, tokenizer/, scheduler/ at {p})")
        for sub, names in (("unet", DIFFUSERS_WEIGHTS), ("vae", DIFFUSERS_WEIGHTS), ("text_encoder", TRANSFORMERS_WEIGHTS)):
            if not (p / sub / "config.json").exists():
                _need(p / sub / "config.json", kind, f"{sub} config")
            _need_one(p / sub, names, kind, f"{sub} weights file")
        if not ((p / "tokenizer" / "tokenizer.json").exists() or (p / "tokenizer" / "vocab.json").exists()):
            _need(p / "tokenizer" / "vocab.json", kind, "tokenizer vocabulary")
        if not (p / "scheduler" / "scheduler_config.json").exists():
            _need(p / "scheduler" / "scheduler_config.json", kind, "scheduler config (noise schedule and prediction type)")
        return p
    if kind == "ldm_text":
        for sub, names in LDM_TEXT_PARTS.items():
            if not (p / sub / "config.json").exists():
                _need(p / sub / "config.json", kind, f"{sub} config")
            _need_one(p / sub, names, kind, f"{sub} weights file")
        if not (p / "tokenizer" / "vocab.txt").exists():
            _need(p / "tokenizer" / "vocab.txt", kind, "BERT tokenizer vocabulary")
        if not (p / "scheduler" / "scheduler_config.json").exists():
            _need(p / "scheduler" / "scheduler_config.json", kind, "scheduler config (noise schedule and prediction type)")
        return p
    # ldm
    if p.is_dir() and (p / "unet" / "config.json").exists():
        _need_one(p / "unet", DIFFUSERS_WEIGHTS, kind, "unet weights file")
        if not (p / "vqvae" / "config.json").exists():
            _need(p / "vqvae" / "config.json", kind, "vqvae config")
        _need_one(p / "vqvae", DIFFUSERS_WEIGHTS, kind, "vqvae weights file")
        return p
    ckpt = p / "model.ckpt" if p.is_dir() or not p.suffix else p
    if not ckpt.exists():
        _need(ckpt, kind, "weights file")
    return p


# --- loading -----------------------------------------------------------------------------------------

def load_foundation(kind: str, path: str | os.PathLike, config: str | os.PathLike | None = None,
                    scale_factor: float | None = None, sample_posterior: bool = True) -> Foundation:
    """Load a foundation's UNet, frozen autoencoder, frozen text encoder + tokenizer (text foundations)
    and noise schedule."""
    p = check_foundation_files(kind, path, config)
    diffusers = require_diffusers()
    if kind == "stable_diffusion":
        if p.is_file():
            pipe = diffusers.StableDiffusionPipeline.from_single_file(str(p), config=str(resolve_path(config)), local_files_only=True,
                                                                      load_safety_checker=False)
            unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
            schedule = diffusion_from_scheduler(pipe.scheduler.config)
        else:
            from transformers import CLIPTextModel, CLIPTokenizer

            unet = diffusers.UNet2DConditionModel.from_pretrained(p, subfolder="unet", local_files_only=True)
            vae = diffusers.AutoencoderKL.from_pretrained(p, subfolder="vae", local_files_only=True)
            text_encoder = CLIPTextModel.from_pretrained(p / "text_encoder", local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(p / "tokenizer", local_files_only=True)
            schedule = diffusion_from_scheduler(json.loads((p / "scheduler" / "scheduler_config.json").read_text()))
        autoencoder = Autoencoder(vae, scale_factor=scale_factor, sample_posterior=sample_posterior)
        text_encoder.requires_grad_(False)
        text_encoder.eval()
        log.info("loaded Stable Diffusion foundation %s (%s, %.0fM UNet parameters)", p, schedule,
                 sum(t.numel() for t in unet.parameters()) / 1e6)
        return Foundation(kind, unet, autoencoder, text_encoder, tokenizer, schedule, p)
    if kind == "ldm_text":
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel
        from transformers import BertTokenizer

        unet = diffusers.UNet2DConditionModel.from_pretrained(p, subfolder="unet", local_files_only=True)
        vae = diffusers.AutoencoderKL.from_pretrained(p, subfolder="vqvae", local_files_only=True)
        text_encoder = LDMBertModel.from_pretrained(p / "bert", local_files_only=True)
        tokenizer = BertTokenizer.from_pretrained(p / "tokenizer", local_files_only=True)
        text_encoder.requires_grad_(False)
        text_encoder.eval()
        schedule = diffusion_from_scheduler(json.loads((p / "scheduler" / "scheduler_config.json").read_text()))
        log.info("loaded LAION text-to-image LDM foundation %s (%s)", p, schedule)
        return Foundation(kind, unet, Autoencoder(vae, scale_factor=scale_factor, sample_posterior=sample_posterior), text_encoder,
                          tokenizer, schedule, p)
    from .ldm import load_ldm

    unet, vq, schedule, scale = load_ldm(p)
    autoencoder = Autoencoder(vq, scale_factor=scale if scale_factor is None else scale_factor)
    log.info("loaded LDM foundation %s (%s, latent scale %s)", p, schedule, autoencoder.scale_factor)
    return Foundation(kind, unet, autoencoder, None, None, schedule, p)


def merge_diffusion(foundation: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The foundation's process, with the config's values winning (a warning names each difference)."""
    out = dict(foundation)
    for key, value in given.items():
        if key in foundation and foundation[key] != value:
            log.warning("diffusion.%s=%r differs from the foundation's %r; training with %r", key, value, foundation[key], value)
        out[key] = value
    return out


def build_foundation_module(config: Mapping[str, Any], architecture: Mapping[str, Any] | None = None) -> Any:
    """The training module of an ``adapt.foundation`` config: the foundation loaded, the adaptor
    inserted (:class:`~layoutdiffuse.sd.layout_unet.LayoutDiffusersUNet`), wrapped in the latent training
    module named by ``diffusion.training`` (a :class:`~layoutdiffuse.training.latent.LatentDDPMTraining`).

    ``architecture``: the ``model`` entry of a checkpoint (rebuilding a trained module: the frozen
    parts come from the foundation, the UNet architecture must match the stored one).
    """
    from ..schema import ConfigError
    from ..training.latent import LatentDDPMTraining
    from ..training.registry import TRAININGS
    from .layout_unet import LayoutDiffusersUNet, plain_config

    spec = config["adapt"]
    cls = TRAININGS.get(config["diffusion"].get("training", "LatentDDPMTraining"))
    if not (isinstance(cls, type) and issubclass(cls, LatentDDPMTraining)):
        raise ConfigError(f"config key 'diffusion.training': a foundation model trains in latent space; use LatentDDPMTraining "
                          f"(or a subclass), got {config['diffusion'].get('training')!r}")
    found = load_foundation(spec["foundation"], spec["path"], spec.get("config"), spec.get("scale_factor"), spec.get("sample_posterior", True))
    if architecture is not None and plain_config(found.unet.config) != dict(architecture.get("unet", {})):
        raise UserError(f"the checkpoint's UNet architecture differs from the foundation at {found.source}; "
                         "was it trained from another foundation?")
    model = LayoutDiffusersUNet(found.unet, spec["layout"], foundation=spec["foundation"])
    if spec.get("gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    process, kwargs = cls.split_config(config["diffusion"])
    process = merge_diffusion(found.diffusion, process)
    size = config["data"].get("image_size")
    if size is None:
        raise ConfigError("config key 'data.image_size' is needed to size the latents of a foundation model")
    image_shape = found.autoencoder.latent_shape(int(size))
    return cls(model, autoencoder=found.autoencoder, text_encoder=found.text_encoder, tokenizer=found.tokenizer, diffusion=process,
               image_shape=image_shape, seed=config.get("seed", 0), config=dict(config), **kwargs)
