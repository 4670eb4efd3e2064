"""The release's config (``denoising_model.model_args``, ``diffusion.beta_schedule_args``) in this
project's terms: the diffusers UNet config, the adaptor options and the diffusion process.

The release's UNet is the LDM ``openaimodel.UNetModel`` (spatial transformers with text
cross-attention for the text foundations, plain attention blocks for CelebA-HQ) with
``InstancePromptAttentionBlock`` layout attention inserted after the attention block of every
input / output stage at each downsample factor in ``instance_attn_res``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from ..errors import MissingFileError, UserError
from ..schema import MAX_CONFIG_BYTES, MAX_TIMESTEPS, short

#: release ``instance_prompt_attn_type`` -> mask layouts?  (the ablation variants are not supported)
ATTN_TYPES = {"layout_partial": False, "layout_partial_v2": False, "segmentation": True}
#: release ``beta_schedule_args.schedule`` -> this project's schedule ("linear" is linear in sqrt(beta))
SCHEDULES = {"linear": "scaled_linear"}
TARGETS = {"noise": "eps"}
#: model_args keys this translation reads or knowingly ignores (anything else is refused, by name)
KNOWN_ARGS = {
    "image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions", "channel_mult",
    "num_heads", "num_head_channels", "use_checkpoint", "prompt_dim", "num_prompt", "instance_prompt_attn_type",
    "instance_attn_res", "instance_prompt_args", "verbose", "use_spatial_transformer", "transformer_depth", "legacy",
    "text_context_dim", "context_dim", "image_in_kv", "dropout", "use_scale_shift_norm", "use_fp16", "conv_resample",
    "dims", "num_heads_upsample", "use_new_attention_order", "resblock_updown", "use_linear_in_transformer", "num_classes",
}

#: (type, low, high) of the release's numbers this converter reads; sizes are bounded so that a mistyped
#: config cannot ask for a model of hundreds of GB. ``list`` entries hold positive integers.
RELEASE_NUMBERS: dict[str, tuple[type, float, float]] = {
    "image_size": (int, 1, 1024), "in_channels": (int, 1, 64), "out_channels": (int, 1, 64), "model_channels": (int, 1, 4096),
    "num_res_blocks": (int, 1, 16), "attention_resolutions": (list, 1, 64), "channel_mult": (list, 1, 64),
    "num_heads": (int, -1, 1024), "num_head_channels": (int, -1, 4096), "transformer_depth": (int, 1, 64),
    "text_context_dim": (int, 1, 8192), "context_dim": (int, 1, 8192), "prompt_dim": (int, 1, 8192), "num_prompt": (int, 0, 1024),
    "instance_attn_res": (list, 1, 64), "dropout": (float, 0, 1),
}
#: the model_args every release config holds
RELEASE_REQUIRED = ("in_channels", "out_channels", "model_channels", "num_res_blocks", "attention_resolutions", "channel_mult")
SCHEDULE_NUMBERS = {"n_timestep": (int, 1, MAX_TIMESTEPS), "linear_start": (float, 0, 1), "linear_end": (float, 0, 1)}


def check_release_numbers(section: Mapping[str, Any], table: dict[str, tuple[type, float, float]], where: str) -> None:
    """Types and ranges of a release config section's numbers (one line naming the key)."""
    def number(v: Any, kind: type) -> bool:
        ok = isinstance(v, (int, float)) if kind is float else isinstance(v, int)
        return ok and not isinstance(v, bool) and math.isfinite(v)

    for key, (kind, low, high) in table.items():
        if key not in section or section[key] is None:
            continue
        value = section[key]
        if kind is list:
            ok = isinstance(value, (list, tuple)) and 0 < len(value) <= 16 and all(number(v, int) and low <= v <= high for v in value)
            want = f"a list of 1-16 integers in [{low}, {high}]"
        else:
            ok = number(value, kind) and low <= value <= high
            want = f"{'an integer' if kind is int else 'a number'} in [{low}, {high}]"
        if not ok:
            raise UserError(f"{where}: '{key}' must be {want}, got {short(value)}")


def read_release_config(path: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """``{"model_args", "beta_schedule_args", "training_target"}`` of a release config file (the whole
    config, or its ``denoising_model`` / ``diffusion`` parts as in the fixtures' ``NAME.json``), of its
    parsed JSON, or of a published model's name (:data:`~layoutdiffuse.release.published.PUBLISHED`)."""
    from .published import PUBLISHED, release_config

    if isinstance(path, Mapping):
        data: Any = dict(path)
        where = "release config"
    elif isinstance(path, str) and path in PUBLISHED and not Path(path).is_file():
        data, where = release_config(path), f"published model {path}"
    else:
        from ..files import check_readable, read_json

        p = Path(path)
        if not p.exists():
            raise MissingFileError(f"release config {p} does not exist (give the release's config JSON, or the name of a "
                                   f"published model: {', '.join(PUBLISHED)})")
        check_readable(p, "release config")
        data = read_json(p, "release config", max_bytes=MAX_CONFIG_BYTES)
        where = str(p)
    try:
        model_args = dict(data["denoising_model"]["model_args"])
        diffusion = data["diffusion"]
        if "beta_schedule_args" not in diffusion and isinstance(diffusion.get("model_args"), Mapping):
            diffusion = diffusion["model_args"]  # the whole config: diffusion.model_args holds them
        schedule = dict(diffusion["beta_schedule_args"])
    except (KeyError, TypeError) as err:
        raise UserError(f"{where} is not a release config: needs denoising_model.model_args and "
                        f"diffusion.beta_schedule_args (missing {err})") from None
    unknown = sorted(set(model_args) - KNOWN_ARGS)
    if unknown:
        raise UserError(f"{where}: model_args {short(unknown)} are not understood by this converter; known: {', '.join(sorted(KNOWN_ARGS))}")
    missing = [k for k in RELEASE_REQUIRED if k not in model_args]
    if missing:
        raise UserError(f"{where}: denoising_model.model_args is missing {', '.join(missing)}")
    check_release_numbers(model_args, RELEASE_NUMBERS, f"{where}: denoising_model.model_args")
    prompt_args = model_args.get("instance_prompt_args")
    if prompt_args is not None:
        if not isinstance(prompt_args, Mapping):
            raise UserError(f"{where}: 'instance_prompt_args' must be an object, got {short(prompt_args)}")
        check_release_numbers(prompt_args, {"num_classes": (int, 1, 100_000), "embedding_dim": (int, 1, 8192)},
                              f"{where}: denoising_model.model_args.instance_prompt_args")
    check_release_numbers(schedule, SCHEDULE_NUMBERS, f"{where}: diffusion.beta_schedule_args")
    return {"model_args": model_args, "beta_schedule_args": schedule, "training_target": diffusion.get("training_target", "noise")}


def is_text_model(model_args: Mapping[str, Any]) -> bool:
    """True for the release's text foundations (spatial transformers with cross-attention)."""
    return bool(model_args.get("use_spatial_transformer"))


def diffusion_config(release: Mapping[str, Any]) -> dict[str, Any]:
    """GaussianDiffusion arguments of the release's ``beta_schedule_args`` and ``training_target``."""
    args = release["beta_schedule_args"]
    name = args.get("schedule", "linear")
    if name not in SCHEDULES:
        raise UserError(f"release beta schedule {name!r} is not supported; supported: {', '.join(SCHEDULES)}")
    target = release.get("training_target", "noise")
    if target not in TARGETS:
        raise UserError(f"release training_target {target!r} is not supported; supported: {', '.join(TARGETS)}")
    return {"schedule": SCHEDULES[name], "num_timesteps": int(args.get("n_timestep", 1000)),
            "beta_start": float(args["linear_start"]), "beta_end": float(args["linear_end"]), "prediction": TARGETS[target]}


def _levels(factors: Any, what: str) -> list[int]:
    levels = []
    for f in factors:
        level = round(math.log2(f)) if isinstance(f, int) and f > 0 else -1
        if level < 0 or 2**level != f:
            raise UserError(f"{what} must list downsample factors 1, 2, 4, ...; got {list(factors)}")
        levels.append(level)
    return levels


def _heads(model_args: Mapping[str, Any], channels: list[int]) -> list[int]:
    head_channels = model_args.get("num_head_channels", -1)
    if head_channels not in (-1, None):
        return [c // head_channels for c in channels]
    heads = model_args.get("num_heads", -1)
    if heads in (-1, None):
        raise UserError("release model_args need num_heads or num_head_channels")
    return [heads] * len(channels)


def unet_config(model_args: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(diffusers class name, config)`` of the release UNet without its layout blocks."""
    for key, bad in (("resblock_updown", True), ("use_new_attention_order", True), ("dims", 1), ("dims", 3)):
        if model_args.get(key) == bad:
            raise UserError(f"release model_args {key}={bad!r} is not supported")
    if not is_text_model(model_args):
        from ..sd.ldm import unet_config_from_ldm

        allowed = ("image_size", "in_channels", "out_channels", "model_channels", "attention_resolutions", "num_res_blocks",
                   "channel_mult", "num_head_channels", "num_heads", "use_scale_shift_norm", "dropout")
        return "UNet2DModel", unet_config_from_ldm({k: model_args[k] for k in allowed if k in model_args})
    mult = list(model_args["channel_mult"])
    channels = [model_args["model_channels"] * m for m in mult]
    attn = [2**i in model_args["attention_resolutions"] for i in range(len(mult))]
    context_dim = model_args.get("text_context_dim") or model_args.get("context_dim")
    if not context_dim:
        raise UserError("a release text model needs text_context_dim (or context_dim) in model_args")
    heads = _heads(model_args, channels)
    depth = model_args.get("transformer_depth", 1)
    return "UNet2DConditionModel", dict(
        sample_size=model_args.get("image_size", 64), in_channels=model_args["in_channels"], out_channels=model_args["out_channels"],
        layers_per_block=model_args["num_res_blocks"], block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=int(context_dim),
        attention_head_dim=heads[0] if len(set(heads)) == 1 else heads,  # diffusers' name for the number of heads
        transformer_layers_per_block=depth, use_linear_projection=bool(model_args.get("use_linear_in_transformer", False)),
        norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
        resnet_time_scale_shift="scale_shift" if model_args.get("use_scale_shift_norm") else "default",
        dropout=float(model_args.get("dropout", 0.0)))


def layout_options(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """This project's adaptor options (``LayoutDiffusersUNet`` ``layout``) reproducing the release's."""
    kind = model_args.get("instance_prompt_attn_type", "segmentation")
    if kind not in ATTN_TYPES:
        raise UserError(f"release instance_prompt_attn_type {kind!r} is not supported; supported: {', '.join(ATTN_TYPES)}")
    prompt_args = model_args.get("instance_prompt_args") or {}
    if "num_classes" not in prompt_args:
        raise UserError("release model_args.instance_prompt_args needs num_classes")
    mask = ATTN_TYPES[kind]
    opts: dict[str, Any] = {
        "num_classes": int(prompt_args["num_classes"]), "embed_dim": int(prompt_args.get("embedding_dim", 128)),
        "levels": _levels(model_args.get("instance_attn_res", []), "instance_attn_res"), "num_heads": 1,
        "mask": mask, "mask_pick": "centre" if mask else "top_left", "num_task_prompts": 0, "mid_block": False,
    }
    if is_text_model(model_args):
        opts.update(task_prompt_form="concat", num_task_prompts=int(model_args.get("num_prompt", 0)),
                    image_in_kv=bool(model_args.get("image_in_kv", False)),
                    prompt_dim=int(model_args.get("prompt_dim") or opts["embed_dim"]))
    return opts


def architecture(release: Mapping[str, Any]) -> dict[str, Any]:
    """The :meth:`~layoutdiffuse.sd.layout_unet.LayoutDiffusersUNet.from_config` data of a release model."""
    model_args = release["model_args"]
    name, config = unet_config(model_args)
    return {"foundation": None, "unet_class": name,
            "unet": config, "layout": layout_options(model_args)}
