"""Every training module is built here: :func:`build_module` (from a config: a UNet, a fine-tuned or
adapted checkpoint, a diffusers foundation) and :func:`load_checkpoint` (a trained module back from
its file, on a chosen device and in a chosen precision; or, only to sample, a
:class:`~layoutdiffuse.training.sampling_module.SamplingModule`, without importing Lightning).

The layers, bottom up: ``sd/`` (foundations: files, loading) and ``training/`` (the LightningModules)
know nothing of each other's construction; :mod:`layoutdiffuse.checkpoints` reads and checks files;
this module joins them. Lightning and the training classes are imported where a training module is
built, so that loading a module to sample imports neither.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch
from torch import nn

from .checkpoints import (MetaWithoutRandomInit, cast, check_fits, is_plain_unet, model_from_architecture, module_state, read_module_file,
                          sampling_model, sampling_state_dict)
from .devices import resolve_device, resolve_dtype
from .errors import UserError
from .nn import UNet
from .schema import ConfigError
from .sd.spec import is_foundation_config
from .state_dicts import dtype_mismatch
from .training.meta import CKPT_KEY
from .training.sampling_module import SamplingModule, training_name

if TYPE_CHECKING:
    import pytorch_lightning as pl

log = logging.getLogger(__name__)


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """The denoising model: from ``denoising_model``, a foundation checkpoint adapted by ``adapt``, or
    the sampling (EMA) weights of a trained module's checkpoint or export (``init_ckpt``, to fine-tune);
    ``warm_start`` then copies tensors of a trained model by name (:mod:`layoutdiffuse.warm_start`)."""
    if "init_ckpt" in config:
        log.info("fine-tuning %s", config["init_ckpt"])
        return sampling_model(config["init_ckpt"])
    if "denoising_model" in config:
        model = UNet(**config["denoising_model"])
    else:
        from .adapt import adapt

        spec = config["adapt"]
        log.info("adapting foundation %s", spec["foundation_ckpt"])
        model = adapt(sampling_model(spec["foundation_ckpt"]), spec["layout"])
    if "warm_start" in config:
        from .warm_start import warm_start

        warm_start(model, config["warm_start"]["ckpt"], config["warm_start"].get("parts", "all"))
    return model


def build_module(config: Mapping[str, Any], model: nn.Module | None = None, architecture: Mapping[str, Any] | None = None,
                 image_shape: tuple[int, ...] | None = None, class_names: list[str] | None = None,
                 foundation: Any = None) -> pl.LightningModule:
    """The training LightningModule of ``config`` -- the one factory behind ``train``, ``load_checkpoint``,
    the release converter, the benchmarks and the notebooks.

    ``model``: a denoising model to use instead of building one. ``architecture`` and ``image_shape``:
    the ``model`` and ``image_shape`` entries stored in a checkpoint, to rebuild a trained module
    (randomly initialised; load its state dict next). ``class_names``: the layout classes' names.
    A diffusers foundation config (``adapt.foundation``) loads the frozen foundation parts and inserts
    the adaptor; ``foundation``: a :class:`~layoutdiffuse.sd.foundation.Foundation` already in memory
    (e.g. random weights for a benchmark) instead of loading the config's.
    """
    from .training.registry import TRAININGS  # Lightning: only where a training module is built

    if foundation is not None or (model is None and is_foundation_config(config)):
        return _latent_module(config, model, architecture, class_names, foundation)
    if model is None:
        model = model_from_architecture(dict(architecture)) if architecture is not None else build_model(config)
    cls = TRAININGS.get(training_name(config))
    process, kwargs = cls.split_config(config["diffusion"])
    if image_shape is None:
        size = config["data"].get("image_size", 32)
        image_shape = (model.config["in_channel"], size, size)
    return cls(model, diffusion=process, image_shape=tuple(image_shape), seed=config.get("seed", 0), config=dict(config),
               class_names=class_names, **kwargs)


def _latent_module(config: Mapping[str, Any], model: nn.Module | None, architecture: Mapping[str, Any] | None,
                   class_names: list[str] | None, found: Any) -> pl.LightningModule:
    """A latent module: the foundation loaded (or ``found``), the adaptor inserted unless ``model`` is
    given, wrapped in the latent training class named by ``diffusion.training``."""
    from .sd.foundation import foundation_kind, merge_diffusion
    from .sd.layout_unet import LayoutDiffusersUNet, plain_config
    from .training.latent import LatentDDPMTraining
    from .training.registry import TRAININGS

    spec = config.get("adapt", {})
    name = config["diffusion"].get("training", "LatentDDPMTraining")
    cls = TRAININGS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, LatentDDPMTraining)):
        raise ConfigError(f"config key 'diffusion.training': a foundation model trains in latent space; use LatentDDPMTraining "
                          f"(or a subclass), got {name!r}")
    if found is None:
        found = foundation_kind(spec["foundation"]).load(spec["path"], spec.get("config"), spec.get("scale_factor"),
                                                         spec.get("sample_posterior", True))
    if architecture is not None and plain_config(found.unet.config) != dict(architecture.get("unet", {})):
        raise UserError(f"the checkpoint's UNet architecture differs from the foundation at {found.source}; "
                        "was it trained from another foundation?")
    if model is None:
        model = LayoutDiffusersUNet(found.unet, spec["layout"], foundation=spec["foundation"])
        if spec.get("gradient_checkpointing"):
            model.enable_gradient_checkpointing()
    process, kwargs = cls.split_config(config["diffusion"])
    process = merge_diffusion(found.diffusion, process)
    size = config["data"].get("image_size")
    if size is None:
        raise ConfigError("config key 'data.image_size' is needed to size the latents of a foundation model")
    return cls(model, autoencoder=found.autoencoder, text_encoder=found.text_encoder, tokenizer=found.tokenizer, diffusion=process,
               image_shape=found.autoencoder.latent_shape(int(size)), seed=config.get("seed", 0), config=dict(config),
               class_names=class_names, **kwargs)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside the block new modules get their parameters on the ``meta`` device (no memory, no random
    initialisation), buffers as usual: a skeleton whose weights :func:`load_checkpoint` assigns from the file."""
    register = nn.Module.register_parameter

    def on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        with MetaWithoutRandomInit():
            yield
    finally:
        nn.Module.register_parameter = register


def sampling_module_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A training module's state dict (or an export's) as a :class:`SamplingModule`'s: the sampling (EMA)
    weights as ``model.*``; the live weights and the EMA counter dropped (training state), keys of no
    module part kept (so they are refused as unexpected, as the training module refuses them)."""
    stray = {k: v for k, v in weights.items() if not k.startswith(("model.", "ema."))}
    return {**{f"model.{k}": v for k, v in sampling_state_dict(weights).items()}, **stray}


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = None, device: str | torch.device = "cpu",
                    dtype: str | torch.dtype = "auto", sampling_only: bool = False) -> pl.LightningModule | SamplingModule:
    """A trained module (eval mode) from a Lightning checkpoint or a ``.safetensors`` export
    (architecture and config are stored in it). Never unpickles code: ``weights_only=True`` / safetensors.

    ``device``: ``cpu`` (default), ``auto``, ``cuda``, ``cuda:N``, ``mps``; ``dtype``: ``auto``,
    ``float32``, ``float16``, ``bfloat16`` (:mod:`layoutdiffuse.devices`). The weights are read
    straight onto the device in that precision; a UNet module is built as a skeleton without
    weights first, so no float32 copy is made on the host. ``map_location``: the older name of ``device``.
    ``sampling_only``: a module only to sample: a :class:`SamplingModule` (no Lightning, the sampling
    weights only) where it samples as the training module would (a UNet of a class in
    :data:`~layoutdiffuse.training.sampling_module.SAMPLING_TRAININGS`), else the training module.
    """
    path = Path(path)
    device = resolve_device(map_location if map_location is not None else device)
    ckpt = read_module_file(path, device, dtype=None)
    meta = ckpt[CKPT_KEY]
    config = meta["config"]
    plain = is_plain_unet(meta)
    light = sampling_only and plain and SamplingModule.reproduces(config)
    target = resolve_dtype(dtype, device, latent=is_foundation_config(config))
    if not is_foundation_config(config):  # the denoiser's tensors checked on the meta device before anything is allocated
        check_fits(path, meta["model"], ckpt["state_dict"])
    try:
        with parameters_on_meta() if plain else contextlib.nullcontext():
            if light:
                module = SamplingModule.from_config(model_from_architecture(meta["model"]), config, meta["image_shape"],
                                                    meta.get("class_names") or [])
            else:
                module = build_module(config, architecture=meta["model"], image_shape=tuple(meta["image_shape"]),
                                      class_names=meta.get("class_names") or [])
    except UserError as err:
        raise UserError(f"checkpoint {path}: its metadata describes a model that cannot be built: {err}") from None
    weights = {k: cast(v, target) for k, v in ckpt["state_dict"].items()}
    state = sampling_module_state(weights) if light else module_state(module, weights)
    if wrong := dtype_mismatch(module.state_dict(), state):  # a bool or int8 tensor would be cast (or assigned) silently
        raise UserError(f"checkpoint {path} does not fit the model it describes: {wrong}")
    try:
        missing, unexpected = module.load_state_dict(state, strict=False, assign=plain)
    except RuntimeError as err:  # size mismatches the UNet check above cannot see (foundation modules)
        raise UserError(f"checkpoint {path} does not fit the model it describes: {str(err).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not match its architecture: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    if not light:
        module.on_load_checkpoint(ckpt)
    return module.to_inference(device, target).eval()
