"""A release checkpoint -> a ``.safetensors`` file that :func:`layoutdiffuse.factory.load_checkpoint` reads.

Without a foundation only the UNet is converted (the module is a
:class:`~layoutdiffuse.training.ddpm.DDPMTraining` around it: ``module.model(x, t, cond)`` on latents,
``module.diffusion`` the release's process). With the foundation's folder the module is the
:class:`~layoutdiffuse.training.latent.LatentDDPMTraining` of an ``adapt.foundation`` config: the
autoencoder and text encoder come from that folder, the UNet weights from the release checkpoint,
and sampling decodes images.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import MissingFileError, UserError
from .checkpoint import read_release_state_dict
from .classes import CLASS_TABLES
from .config import architecture, diffusion_config, read_release_config
from .convert import convert_release_unet

log = logging.getLogger(__name__)

#: the release's sampling run: PLMS of LDM, 20 steps, no clipping
RELEASE_SAMPLING = {"sampler": "plms", "steps": 20, "spacing": "ldm", "warmup": "improved_euler", "clip": False}
#: diffusers UNet config fields that must agree between the release's model and a foundation's UNet
ARCH_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
               "attention_head_dim", "cross_attention_dim", "transformer_layers_per_block", "resnet_time_scale_shift")


def class_names_of(spec: str | Sequence[str] | None, num_classes: int) -> list[str]:
    """``None`` (ids as names), a table name (``coco-stuff``), a JSON list file, or a list of names."""
    if spec is None:
        return [str(i) for i in range(num_classes)]
    if isinstance(spec, str):
        if spec in CLASS_TABLES:
            names = CLASS_TABLES[spec]()
        else:
            path = Path(spec)
            if not path.is_file():
                raise UserError(f"class names {spec!r}: neither a table ({', '.join(CLASS_TABLES)}) nor a JSON file")
            names = json.loads(path.read_text())
    else:
        names = list(spec)
    if len(names) != num_classes or not all(isinstance(n, str) for n in names):
        raise UserError(f"the model has {num_classes} layout classes; class names give {len(names)}")
    return list(names)


def _same(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def check_foundation_unet(release_unet: Mapping[str, Any], found: Mapping[str, Any], where: Path) -> None:
    diff = {k: (release_unet.get(k), found.get(k)) for k in ARCH_FIELDS if _same(release_unet.get(k)) != _same(found.get(k))}
    if diff:
        raise UserError(f"the release model and the foundation UNet at {where} differ in {diff} (release vs foundation); "
                        "is it the foundation this checkpoint was trained from?")


def build_converted_module(ckpt: str | Path, config: str | Path | Mapping[str, Any], foundation: str | Path | None = None,
                           class_names: str | Sequence[str] | None = None, guidance: float | None = None) -> Any:
    """The training module of a release checkpoint, ready to sample (see the module docstring)."""
    import torch

    from ..schema import check_sampling_options

    check_sampling_options(guidance=guidance)  # before reading anything: NaN, inf, negative scales refused

    release = read_release_config(config)
    state = read_release_state_dict(ckpt)
    arch = architecture(release)
    model_args = release["model_args"]
    layout = arch["layout"]
    sampling = {**RELEASE_SAMPLING, "guidance": float(guidance if guidance is not None else (1.0 if layout["mask"] else 5.0))}
    diffusion = {**diffusion_config(release), "ema_decay": 0.0, "sampling": sampling}
    size = int(model_args.get("image_size", 64))
    names = class_names_of(class_names, layout["num_classes"])
    source = {"checkpoint": Path(ckpt).name, "model_args": model_args, "beta_schedule_args": release["beta_schedule_args"]}
    from ..factory import build_module

    cfg = {"expt_name": f"release-{Path(ckpt).stem}", "release": source}
    if foundation is None:
        from .model import build_release_unet

        model = build_release_unet(arch)
        model.load_state_dict(convert_release_unet(state, arch, model))
        cfg.update(diffusion={**diffusion, "training": "DDPMTraining"}, data={"image_size": size})
        module = build_module(cfg, model=model, image_shape=(model_args["in_channels"], size, size), class_names=names)
    else:
        from ..sd.foundation import detect_kind, resolve_path
        from ..sd.layout_unet import plain_config

        folder = resolve_path(foundation)
        if not folder.exists():
            raise MissingFileError(f"foundation {folder} does not exist")
        kind = detect_kind(folder, arch["unet_class"])
        kind.check_files(folder)
        cfg.update(adapt={"foundation": kind.name, "path": str(folder), "layout": layout},
                   diffusion={**diffusion, "training": "LatentDDPMTraining"}, data={"image_size": size * kind.downscale})
        module = build_module(cfg, class_names=names)
        found_unet = plain_config(module.model.unet.config)
        check_foundation_unet(arch["unet"], found_unet, folder)
        if tuple(module.image_shape[1:]) != (size, size):
            raise UserError(f"the foundation's latents are {tuple(module.image_shape[1:])} for {size * kind.downscale} px, "
                            f"the release model's are {size}x{size}")
        fitted = {**arch, "unet": found_unet}
        with torch.no_grad():
            module.model.load_state_dict(convert_release_unet(state, fitted, module.model))
    return module.eval()


def convert_release(ckpt: str | Path, config: str | Path | Mapping[str, Any], out: str | Path, foundation: str | Path | None = None,
                    class_names: str | Sequence[str] | None = None, guidance: float | None = None) -> Path:
    """Convert a release checkpoint and write it to ``out`` (``.safetensors``, float32, config inside)."""
    from ..checkpoints import export_weights

    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out must name a .safetensors file, got {out}")
    module = build_converted_module(ckpt, config, foundation, class_names, guidance)
    path = export_weights(module, out, half=False)
    log.info("converted %s -> %s (%d parameters)", ckpt, path, sum(p.numel() for p in module.model.parameters()))
    return path
