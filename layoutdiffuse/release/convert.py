"""Release UNet state dict (``denoise_fn.*``) -> :class:`~layoutdiffuse.sd.layout_unet.LayoutDiffusersUNet`.

1. The layout-attention blocks (``<stage>.<i>.<j>`` holding ``attention.to_prompt_token``) are taken
   out and become ``adaptor.blocks.<site>`` (``qkv`` and ``proj_out`` keep their 1x1-conv shapes;
   ``to_prompt_token`` ``(3C, d, 1)`` -> ``prompt_qkv`` ``(3C, d)``); the shared prompt table
   ``cls_embedder.class_embedder.weight`` -> ``adaptor.prompt_table.weight`` (every block's copy of it must
   equal it). ``<site>`` is the diffusers module the block follows (the attention of that stage).
2. The sub-module indices behind each removed block are shifted back down by one, which leaves the
   foundation's own LDM keys; these go through diffusers' LDM -> diffusers conversion
   (``convert_ldm_unet_checkpoint`` for text UNets; :func:`layoutdiffuse.sd.ldm.convert_ldm_unet`
   for the unconditional CelebA-HQ UNet).
3. The task prompts of each cross-attention (``attn2.prompt``, ``attn2.prompt_to_context_dim``,
   ``attn2.image_to_context_dim``) -> ``task_prompt.<layer>.{prompt, to_context, image_to_context}``.

Every source key must be used exactly once and every model key filled with its shape; otherwise a
one-line :class:`~layoutdiffuse.errors.UserError` names the keys. ``vqvae_fn.*`` / ``text_fn.*`` (the
frozen foundation's autoencoder and text encoder in real checkpoints) are left to the foundation.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping

import torch

from ..errors import UserError

log = logging.getLogger(__name__)

PREFIX = "denoise_fn."
#: prefixes of the frozen foundation parts in a release checkpoint (loaded from the foundation instead)
FOUNDATION_PREFIXES = ("vqvae_fn.", "text_fn.")
TABLE = "cls_embedder.class_embedder.weight"
LAYOUT_PARTS = {"norm.weight": "norm.weight", "norm.bias": "norm.bias", "qkv.weight": "qkv.weight", "qkv.bias": "qkv.bias",
                "attention.to_prompt_token.weight": "prompt_qkv.weight", "proj_out.weight": "proj_out.weight",
                "proj_out.bias": "proj_out.bias", "attention.class_embedder.class_embedder.weight": None}
PROMPT_PARTS = {"prompt": "prompt", "prompt_to_context_dim.weight": "to_context.weight",
                "image_to_context_dim.weight": "image_to_context.weight"}
_BLOCK = re.compile(r"^(input_blocks|output_blocks|middle_block)\.(\d+)\.(\d+)\.(.+)$")


def _listed(keys: list[str], limit: int = 8) -> str:
    return "[" + ", ".join(keys[:limit]) + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "") + "]"


def split_release_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The UNet keys (``denoise_fn.`` removed); foundation parts are dropped, anything else is refused."""
    unet, other = {}, []
    for key, value in state.items():
        if key.startswith(PREFIX):
            unet[key[len(PREFIX):]] = value
        elif not key.startswith(FOUNDATION_PREFIXES):
            other.append(key)
    if other:
        raise UserError(f"release checkpoint has {len(other)} keys outside {PREFIX}* and the foundation parts "
                        f"({', '.join(FOUNDATION_PREFIXES)}): {_listed(other)}")
    if not unet:
        raise UserError(f"release checkpoint has no {PREFIX}* keys (the UNet); is it a LayoutDiffuse release checkpoint?")
    odd = [f"{PREFIX}{k} ({v.dtype})" for k, v in unet.items() if not v.is_floating_point()]
    if odd:  # the UNet's weights are floats; an int8 or bool tensor would be cast silently into nonsense
        raise UserError(f"release checkpoint has {len(odd)} UNet tensors that are not floating point: {_listed(odd)}")
    broken = [f"{PREFIX}{k}" for k, v in unet.items() if not v.is_meta and not torch.isfinite(v).all()]  # meta: key manifests
    if broken:
        raise UserError(f"release checkpoint has {len(broken)} UNet tensors holding NaN or infinity (a damaged file): {_listed(broken)}")
    return unet


def _site(stage: str, index: int, follows: int, per_level: int) -> str:
    """Diffusers module name after which the layout block at ``<stage>.<index>`` (sub-module ``follows + 1``) runs."""
    kind = "attentions" if follows >= 1 else "resnets"
    if stage == "input_blocks":
        return f"down_blocks.{(index - 1) // (per_level + 1)}.{kind}.{(index - 1) % (per_level + 1)}"
    if stage == "output_blocks":
        return f"up_blocks.{index // (per_level + 1)}.{kind}.{index % (per_level + 1)}"
    raise UserError(f"a layout-attention block in the middle block ({stage}.{index}) is not supported")


def take_layout_blocks(sd: dict[str, torch.Tensor], per_level: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """Remove the layout blocks and the prompt table from ``sd`` -> ``(adaptor state dict, the rest
    un-shifted, un-shifted key -> release key)``."""
    found = sorted({m.groups()[:3] for k in sd if (m := _BLOCK.match(k)) and m.group(4) == "attention.to_prompt_token.weight"},
                   key=lambda g: (g[0], int(g[1]), int(g[2])))
    if TABLE not in sd:
        raise UserError(f"release checkpoint lacks denoise_fn.{TABLE} (the shared instance-prompt table)")
    table = sd.pop(TABLE)
    adaptor: dict[str, torch.Tensor] = {"adaptor.prompt_table.weight": table}
    removed: dict[tuple[str, int], int] = {}
    for stage, index, sub in found:
        prefix = f"{stage}.{index}.{sub}."
        keys = [k for k in sd if k.startswith(prefix)]
        extra = [k for k in keys if k[len(prefix):] not in LAYOUT_PARTS]
        missing = [prefix + p for p in LAYOUT_PARTS if prefix + p not in sd]
        if extra or missing:
            raise UserError(f"layout-attention block denoise_fn.{prefix[:-1]}: "
                            + "; ".join(s for s in (f"missing {_listed(['denoise_fn.' + k for k in missing])}" if missing else "",
                                                    f"unknown keys {_listed(['denoise_fn.' + k for k in extra])}" if extra else "") if s))
        if (stage, int(index)) in removed:
            raise UserError(f"two layout-attention blocks in denoise_fn.{stage}.{index}; the release inserts one per stage")
        removed[(stage, int(index))] = int(sub)
        site = _site(stage, int(index), int(sub) - 1, per_level).replace(".", "_")
        copy = sd.pop(prefix + "attention.class_embedder.class_embedder.weight")
        if copy.shape != table.shape or (not copy.is_meta and not table.is_meta and not torch.equal(copy, table)):
            raise UserError(f"denoise_fn.{prefix}attention.class_embedder.class_embedder.weight differs from denoise_fn.{TABLE}; "
                            "the release shares one prompt table between all blocks")
        for part, target in LAYOUT_PARTS.items():
            if target is None:
                continue
            value = sd.pop(prefix + part)
            adaptor[f"adaptor.blocks.{site}.{target}"] = value[..., 0] if part == "attention.to_prompt_token.weight" else value
    rest: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in sd.items():
        new = key
        m = _BLOCK.match(key)
        if m and (m.group(1), int(m.group(2))) in removed and int(m.group(3)) > removed[(m.group(1), int(m.group(2)))]:
            new = f"{m.group(1)}.{m.group(2)}.{int(m.group(3)) - 1}.{m.group(4)}"
        rest[new] = value
        origin[new] = key
    return adaptor, rest, origin


def take_task_prompts(converted: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move the release's per-layer task-prompt keys of a converted (diffusers-named) UNet state dict to
    ``task_prompt.<layer>.*``."""
    out = {}
    for key in list(converted):
        for part, target in PROMPT_PARTS.items():
            if key.endswith(".attn2." + part):
                layer = key[: -len(part) - 1]
                value = converted.pop(key)
                out[f"task_prompt.{layer.replace('.', '_')}.{target}"] = value[0] if part == "prompt" else value
    return out


def convert_foundation_keys(rest: dict[str, torch.Tensor], cls_name: str, config: Mapping[str, Any],
                            origin: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """The un-shifted LDM UNet keys -> diffusers names (every key used exactly once; ``origin`` names
    the release's key of each un-shifted one in errors)."""
    origin = origin or {}
    if cls_name == "UNet2DModel":
        from ..sd.ldm import convert_ldm_unet

        try:
            return convert_ldm_unet(rest, config, legacy_attention=True)
        except KeyError as err:
            what = str(err.args[0])
            if " " not in what:  # a bare key the architecture needs
                what = f"lacks denoise_fn.{origin.get(what, what)} (is the config right for this checkpoint?)"
            raise UserError(f"release UNet: {what}") from None
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    out = convert_ldm_unet_checkpoint({LDM_UNET_KEY + k: v for k, v in rest.items()}, dict(config))
    by_id: dict[int, list[str]] = {}
    for key, value in out.items():
        by_id.setdefault(id(value), []).append(key)
    twice = [keys for keys in by_id.values() if len(keys) > 1]
    if twice:
        raise UserError(f"release UNet keys used twice by the conversion: {twice[:5]}")
    unused = [k for k, v in rest.items() if id(v) not in by_id]
    if unused:
        raise UserError(f"release UNet has {len(unused)} keys this architecture does not use: "
                        f"{_listed(['denoise_fn.' + origin.get(k, k) for k in unused])}")
    return out


def fit_projections(sd: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """1x1-conv ``proj_in`` / ``proj_out`` weights ``(C, C, 1, 1)`` as linear ``(C, C)`` where the model has
    linear projections (SD 2.x foundations; the release built them as convs)."""
    for key, value in sd.items():
        if key.endswith(("proj_in.weight", "proj_out.weight")) and key in target:
            want = tuple(target[key].shape)
            if value.ndim == 4 and value.shape[2:] == (1, 1) and tuple(value.shape[:2]) == want:
                sd[key] = value[:, :, 0, 0]
            elif value.ndim == 2 and len(want) == 4 and want[2:] == (1, 1) and tuple(value.shape) == want[:2]:
                sd[key] = value[:, :, None, None]
    return sd


def convert_release_unet(state: Mapping[str, torch.Tensor], arch: Mapping[str, Any], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The release checkpoint's ``state`` as a state dict of ``model`` (a LayoutDiffusersUNet of ``arch``).

    Raises a one-line :class:`UserError` naming missing, unknown, unused or mis-shaped keys.
    """
    sd = split_release_state_dict(state)
    adaptor, rest, origin = take_layout_blocks(sd, arch["unet"]["layers_per_block"])
    unet = convert_foundation_keys(rest, arch["unet_class"], arch["unet"], origin)
    prompts = take_task_prompts(unet)
    full = {**{f"unet.{k}": v for k, v in unet.items()}, **adaptor, **prompts}
    own = model.state_dict(keep_vars=True)
    full = fit_projections(full, own)
    source = {id(v): PREFIX + k for k, v in state.items()}  # name the release's key where a value passed unchanged
    missing = [k for k in own if k not in full]
    unknown = [source.get(id(v), k) for k, v in full.items() if k not in own]
    shapes = [f"{source.get(id(full[k]), k)} {tuple(full[k].shape)} vs {k} {tuple(own[k].shape)}" for k in own
              if k in full and tuple(full[k].shape) != tuple(own[k].shape)]
    parts = [f"{len(missing)} model keys missing {_listed(missing)}" if missing else "",
             f"{len(unknown)} release keys this architecture does not have {_listed(unknown)}" if unknown else "",
             f"{len(shapes)} keys of another shape (release vs model) {_listed(shapes)}" if shapes else ""]
    if any(parts):
        raise UserError("release checkpoint does not fit the model its config describes: " + "; ".join(p for p in parts if p))
    return full
