"""CompVis latent-diffusion checkpoints -> diffusers ``UNet2DModel`` + ``VQModel``.

The LDM CelebA-HQ 256 foundation is released as ``model.ckpt`` (a Lightning checkpoint of
``ldm.models.diffusion.ddpm.LatentDiffusion``) with ``config.yaml``. This module reads both without
the ``ldm`` package and without executing code from the checkpoint, and converts:

* ``model.diffusion_model.*`` (openai ``UNetModel``, no cross-attention) -> ``UNet2DModel`` (the
  EMA weights ``model_ema.*`` when the checkpoint has them: LDM samples with them);
* ``first_stage_model.*`` (``VQModelInterface``) -> ``VQModel`` (encoder/decoder renaming by
  diffusers' own ``convert_ldm_vae_checkpoint``; the codebook and 1x1 convs keep their names);
* the noise schedule and latent scale of ``model.params``.

A folder already in diffusers layout (``unet/``, ``vqvae/``, ``scheduler/``, e.g. the Hub's
``CompVis/ldm-celebahq-256``) loads directly.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import StateDictError, UserError
from ..release.checkpoint import read_release_state_dict
from ..state_dicts import state_dict_mismatch
from .schedules import diffusion_from_ldm, diffusion_from_scheduler

log = logging.getLogger(__name__)

#: ``configs/latent-diffusion/celebahq-ldm-vq-4.yaml`` of CompVis/latent-diffusion (the ``model`` part
#: this module reads); used when the checkpoint's folder has no ``config.yaml``.
LDM_CELEBAHQ_256: dict[str, Any] = {"model": {"params": {
    "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "image_size": 64, "channels": 3,
    "unet_config": {"params": {"image_size": 64, "in_channels": 3, "out_channels": 3, "model_channels": 224,
                               "attention_resolutions": [8, 4, 2], "num_res_blocks": 2, "channel_mult": [1, 2, 3, 4],
                               "num_head_channels": 32}},
    "first_stage_config": {"params": {"embed_dim": 3, "n_embed": 8192, "ddconfig": {
        "double_z": False, "z_channels": 3, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
    "cond_stage_config": "__is_unconditional__",
}}}



# --- configs ------------------------------------------------------------------------------------

def read_ldm_config(path: str | Path | None) -> dict[str, Any]:
    """``model.params`` of an LDM ``config.yaml`` (or of :data:`LDM_CELEBAHQ_256` when ``path`` is None)."""
    if path is None:
        return LDM_CELEBAHQ_256["model"]["params"]
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
        return data["model"]["params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a latent-diffusion config (needs model.params): {err}") from err


def unet_config_from_ldm(params: Mapping[str, Any]) -> dict[str, Any]:
    """``UNet2DModel`` arguments of an LDM ``unet_config.params`` (unconditional openai UNetModel)."""
    p = dict(params)
    for key, bad in (("use_spatial_transformer", True), ("resblock_updown", True), ("num_classes", None), ("context_dim", None)):
        if key in p and p[key] is not None and (bad is None or p[key] == bad):
            raise NotImplementedError(f"LDM UNet with {key}={p[key]!r} is not supported (unconditional UNets without "
                                      "ResBlock up/down-sampling are)")
    mult = list(p["channel_mult"])
    channels = [p["model_channels"] * m for m in mult]
    attn_levels = [i for i in range(len(mult)) if 2 ** i in p.get("attention_resolutions", [])]
    head_channels = p.get("num_head_channels", -1)
    if head_channels in (-1, None):
        heads = p.get("num_heads", 1)
        dims = {c // heads for i, c in enumerate(channels) if i in attn_levels} | {channels[-1] // heads}
        if len(dims) != 1:
            raise NotImplementedError("LDM UNet with a fixed num_heads over levels of different widths is not supported "
                                      "(diffusers UNet2DModel fixes the head dimension)")
        head_channels = dims.pop()
    down = ["AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(len(mult))]
    up = ["AttnUpBlock2D" if i in attn_levels else "UpBlock2D" for i in reversed(range(len(mult)))]
    return dict(sample_size=p.get("image_size", 64), in_channels=p["in_channels"], out_channels=p["out_channels"],
                layers_per_block=p["num_res_blocks"], block_out_channels=channels, down_block_types=down, up_block_types=up,
                attention_head_dim=head_channels, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
                resnet_time_scale_shift="scale_shift" if p.get("use_scale_shift_norm") else "default",
                flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, time_embedding_type="positional",
                dropout=float(p.get("dropout", 0.0)))


def vq_config_from_ldm(params: Mapping[str, Any], scale_factor: float) -> dict[str, Any]:
    """``VQModel`` arguments of an LDM ``first_stage_config.params``."""
    dd = params["ddconfig"]
    if dd.get("attn_resolutions"):
        raise NotImplementedError(f"LDM autoencoders with attention in the down/up blocks (attn_resolutions={dd['attn_resolutions']}) "
                                  "are not supported; the VQ-f4 / f8 models without it are")
    n = len(dd["ch_mult"])
    return dict(in_channels=dd["in_channels"], out_channels=dd["out_ch"], down_block_types=["DownEncoderBlock2D"] * n,
                up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=[dd["ch"] * m for m in dd["ch_mult"]],
                layers_per_block=dd["num_res_blocks"], latent_channels=dd["z_channels"], num_vq_embeddings=params["n_embed"],
                vq_embed_dim=params["embed_dim"], sample_size=dd.get("resolution", 256), norm_num_groups=32,
                scaling_factor=scale_factor)


# --- weights ------------------------------------------------------------------------------------

_RESNET = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
           ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))


def convert_ldm_unet(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any], legacy_attention: bool = True) -> dict[str, torch.Tensor]:
    """openai ``UNetModel`` state dict (``input_blocks.*``, ``middle_block.*``, ...) -> ``UNet2DModel`` state dict.

    ``config``: the ``UNet2DModel`` arguments (:func:`unet_config_from_ldm`). Attention ``qkv`` (a 1x1
    conv) is split into ``to_q/to_k/to_v`` in the head order of ``QKVAttentionLegacy`` (per head
    q, k, v; ``legacy_attention=False``: ``QKVAttention``, all q then k then v). Every source key
    must be used; a leftover raises ``KeyError`` listing it.
    """
    sd = dict(sd)
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}

    def take(src: str, dst: str) -> None:
        if src not in sd:
            raise KeyError(f"LDM UNet checkpoint lacks {src} (expected for {dst}); is the config right for this checkpoint?")
        out[dst] = sd[src]
        used.add(src)

    def params_of(prefix: str) -> list[str]:
        return [k[len(prefix) + 1:] for k in sd if k.startswith(prefix + ".")]

    def resnet(src: str, dst: str) -> None:
        for rest in params_of(src):
            new = rest
            for a, b in _RESNET:
                if new.startswith(a + "."):
                    new = b + new[len(a):]
            take(f"{src}.{rest}", f"{dst}.{new}")

    def attention(src: str, dst: str) -> None:
        take(f"{src}.norm.weight", f"{dst}.group_norm.weight")
        take(f"{src}.norm.bias", f"{dst}.group_norm.bias")
        w, b = sd[f"{src}.qkv.weight"], sd[f"{src}.qkv.bias"]
        used.update({f"{src}.qkv.weight", f"{src}.qkv.bias"})
        c = w.shape[0] // 3
        heads = c // config["attention_head_dim"]
        if legacy_attention:  # rows: head 0 (q, k, v), head 1 (q, k, v), ...
            wq, wk, wv = w.reshape(heads, 3, c // heads, c).unbind(1)
            bq, bk, bv = b.reshape(heads, 3, c // heads).unbind(1)
        else:
            wq, wk, wv = w.reshape(3, c, c).unbind(0)
            bq, bk, bv = b.reshape(3, c).unbind(0)
        for name, wt, bt in (("to_q", wq, bq), ("to_k", wk, bk), ("to_v", wv, bv)):
            out[f"{dst}.{name}.weight"] = wt.reshape(c, c).contiguous()
            out[f"{dst}.{name}.bias"] = bt.reshape(c).contiguous()
        out[f"{dst}.to_out.0.weight"] = sd[f"{src}.proj_out.weight"].reshape(c, c)
        take(f"{src}.proj_out.bias", f"{dst}.to_out.0.bias")
        used.add(f"{src}.proj_out.weight")

    for i, name in ((0, "linear_1"), (2, "linear_2")):
        take(f"time_embed.{i}.weight", f"time_embedding.{name}.weight")
        take(f"time_embed.{i}.bias", f"time_embedding.{name}.bias")
    for src, dst in (("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out")):
        take(f"{src}.weight", f"{dst}.weight")
        take(f"{src}.bias", f"{dst}.bias")

    n_levels = len(config["block_out_channels"])
    per_level = config["layers_per_block"]
    attn = [t.startswith("Attn") for t in config["down_block_types"]]
    idx = 1
    for level in range(n_levels):
        for j in range(per_level):
            resnet(f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}")
            if attn[level]:
                attention(f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{j}")
            idx += 1
        if level != n_levels - 1:
            take(f"input_blocks.{idx}.0.op.weight", f"down_blocks.{level}.downsamplers.0.conv.weight")
            take(f"input_blocks.{idx}.0.op.bias", f"down_blocks.{level}.downsamplers.0.conv.bias")
            idx += 1
    resnet("middle_block.0", "mid_block.resnets.0")
    attention("middle_block.1", "mid_block.attentions.0")
    resnet("middle_block.2", "mid_block.resnets.1")
    idx = 0
    for up, level in enumerate(reversed(range(n_levels))):
        for j in range(per_level + 1):
            resnet(f"output_blocks.{idx}.0", f"up_blocks.{up}.resnets.{j}")
            k = 1
            if attn[level]:
                attention(f"output_blocks.{idx}.1", f"up_blocks.{up}.attentions.{j}")
                k = 2
            if level and j == per_level:
                take(f"output_blocks.{idx}.{k}.conv.weight", f"up_blocks.{up}.upsamplers.0.conv.weight")
                take(f"output_blocks.{idx}.{k}.conv.bias", f"up_blocks.{up}.upsamplers.0.conv.bias")
            idx += 1
    left = sorted(set(sd) - used)
    if left:
        raise KeyError(f"LDM UNet checkpoint has {len(left)} keys this architecture does not use: {left[:20]}")
    return out


def convert_ldm_vq(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """LDM ``VQModelInterface`` state dict (``encoder.*``, ``decoder.*``, ``quantize.*``, ``quant_conv.*``,
    ``post_quant_conv.*``) -> ``VQModel`` state dict. The training-only ``loss.*`` keys are dropped."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    out = convert_ldm_vae_checkpoint(sd, dict(config))
    if "quantize.embedding.weight" not in sd:
        raise KeyError("LDM VQ checkpoint lacks quantize.embedding.weight (the codebook); is it a VQ model?")
    out["quantize.embedding.weight"] = sd["quantize.embedding.weight"]
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning ``.ckpt`` (or a bare state dict; ``.safetensors`` too), read
    without executing code by the project's one safe reader
    (:func:`layoutdiffuse.release.checkpoint.read_release_state_dict`): tensors and plain data, the
    data-container classes of Lightning / omegaconf / numpy as inert stand-ins, anything else refused by name."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return read_release_state_dict(path)


def _ema_unet(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The EMA UNet weights of an LDM checkpoint (LitEma stores ``model_ema.<name without dots>``), if complete."""
    live = {k[len("model.diffusion_model."):]: k for k in sd if k.startswith("model.diffusion_model.")}
    ema = {}
    for short in live:
        key = "model_ema." + ("diffusion_model." + short).replace(".", "")
        if key not in sd:
            return None
        ema[short] = sd[key]
    return ema


def load_ldm(path: str | Path, use_ema: bool = True) -> tuple[Any, Any, dict[str, Any], float]:
    """``(UNet2DModel, VQModel, diffusion kwargs, latent scale)`` of an LDM foundation.

    ``path``: a diffusers folder (``unet/``, ``vqvae/``), a folder with ``model.ckpt`` (and
    ``config.yaml``; without it :data:`LDM_CELEBAHQ_256`), or the ``.ckpt`` itself.
    """
    from diffusers import UNet2DModel, VQModel

    path = Path(path)
    if path.is_dir() and (path / "unet" / "config.json").exists():
        import json

        unet = UNet2DModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        vq = VQModel.from_pretrained(path, subfolder="vqvae", local_files_only=True)
        sched = path / "scheduler" / "scheduler_config.json"
        diffusion = diffusion_from_scheduler(json.loads(sched.read_text())) if sched.exists() else diffusion_from_ldm(LDM_CELEBAHQ_256["model"]["params"])
        return unet.eval(), vq.eval(), diffusion, 1.0  # diffusers' LDMPipeline uses the VQ latents unscaled
    ckpt = path / "model.ckpt" if path.is_dir() else path
    yaml_path = ckpt.parent / "config.yaml"
    if not yaml_path.exists():
        log.warning("no config.yaml beside %s: assuming the LDM CelebA-HQ 256 architecture", ckpt)
    params = read_ldm_config(yaml_path if yaml_path.exists() else None)
    cond = params.get("cond_stage_config", "__is_unconditional__")
    if params.get("conditioning_key") is not None or cond not in ("__is_unconditional__", None):
        raise NotImplementedError(f"{ckpt}: conditional LDMs (conditioning_key={params.get('conditioning_key')!r}) are not supported; "
                                  "use foundation 'stable_diffusion' for text models, 'ldm' for unconditional ones")
    scale = float(params.get("scale_factor", 1.0))
    unet_cfg = unet_config_from_ldm(params["unet_config"]["params"])
    vq_cfg = vq_config_from_ldm(params["first_stage_config"]["params"], scale)
    sd = read_state_dict(ckpt)
    unet_sd = _ema_unet(sd) if use_ema else None
    if unet_sd is not None:
        log.info("%s: using the EMA UNet weights", ckpt)
    else:
        unet_sd = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    vq_sd = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    if not unet_sd or not vq_sd:
        raise UserError(f"{ckpt} is not a latent-diffusion checkpoint: no model.diffusion_model.* / first_stage_model.* weights")
    unet = UNet2DModel(**unet_cfg)
    legacy = not params["unet_config"]["params"].get("use_new_attention_order", False)
    _load_exact(unet, convert_ldm_unet(unet_sd, unet_cfg, legacy_attention=legacy), f"{ckpt} (UNet)")
    vq = VQModel(**vq_cfg)
    _load_exact(vq, convert_ldm_vq(vq_sd, vq_cfg), f"{ckpt} (VQ autoencoder)")
    return unet.eval(), vq.eval(), diffusion_from_ldm(params), scale


def _load_exact(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    report = state_dict_mismatch(model, state_dict)
    if report:
        raise StateDictError(f"{what} does not match the {type(model).__name__} built from its config: {report}")
    model.load_state_dict(state_dict)
