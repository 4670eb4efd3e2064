"""The release's published models: their architectures and the foundations they were trained from.

``model_args`` are the release's ``denoising_model.model_args`` of each published checkpoint, as
its state-dict key manifests and its foundations' configs determine them (tests/test_release.py
converts a shape-only state dict of every manifest with them). ``foundation_unet`` is the diffusers
UNet config of the foundation's own UNet, which the converted model must have.

Checkpoints and foundations (none is fetched by this project; see docs/published_models.md):

* ``cocostuff_SD1_5`` / ``cocostuff_SD2_1``: COCO-stuff on Stable Diffusion 1.5 / 2.1-base (512 px);
* ``cocostuff`` / ``vg``: COCO-stuff / Visual Genome on the LAION text-to-image LDM (256 px, BERT);
* ``celeb_mask``: CelebAMask-HQ on the CelebA-HQ LDM (256 px, VQ-f4).
"""
from __future__ import annotations

from typing import Any

_SD_SCHEDULE = {"schedule": "linear", "n_timestep": 1000, "linear_start": 0.00085, "linear_end": 0.012}
_BOXES = {"instance_prompt_attn_type": "layout_partial_v2", "instance_prompt_args": {"num_classes": 181, "embedding_dim": 128},
          "prompt_dim": 128}
_SD_UNET = {"image_size": 64, "in_channels": 4, "out_channels": 4, "model_channels": 320, "attention_resolutions": [4, 2, 1],
            "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "use_spatial_transformer": True, "transformer_depth": 1,
            "legacy": False, "instance_attn_res": [2, 4], "num_prompt": 0, "image_in_kv": False, **_BOXES}
_LDM_TEXT = {**_SD_UNET, "image_size": 32, "num_heads": 8, "text_context_dim": 1280, "instance_attn_res": [1, 2],
             "num_prompt": 64, "image_in_kv": True}
_SD_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
_SD_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
_TEXT_FOUNDATION = dict(in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
                        down_block_types=_SD_DOWN, up_block_types=_SD_UP, transformer_layers_per_block=1,
                        resnet_time_scale_shift="default")

PUBLISHED: dict[str, dict[str, Any]] = {
    "cocostuff_SD1_5": {
        "foundation": "Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5)", "guidance": 7.5,
        "model_args": {**_SD_UNET, "num_heads": 8, "text_context_dim": 768}, "beta_schedule_args": _SD_SCHEDULE,
        "foundation_unet": {**_TEXT_FOUNDATION, "sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},
    },
    "cocostuff_SD2_1": {
        "foundation": "Stable Diffusion 2.1-base (stabilityai/stable-diffusion-2-1-base)", "guidance": 5.0,
        "model_args": {**_SD_UNET, "num_head_channels": 64, "text_context_dim": 1024}, "beta_schedule_args": _SD_SCHEDULE,
        "foundation_unet": {**_TEXT_FOUNDATION, "sample_size": 64, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
                            "use_linear_projection": True},
    },
    "cocostuff": {
        "foundation": "LAION text-to-image LDM (CompVis/ldm-text2im-large-256)", "guidance": 5.0,
        "model_args": dict(_LDM_TEXT), "beta_schedule_args": _SD_SCHEDULE,
        "foundation_unet": {**_TEXT_FOUNDATION, "sample_size": 32, "cross_attention_dim": 1280, "attention_head_dim": 8},
    },
    "vg": {
        "foundation": "LAION text-to-image LDM (CompVis/ldm-text2im-large-256)", "guidance": 5.0,
        "model_args": dict(_LDM_TEXT), "beta_schedule_args": _SD_SCHEDULE,
        "foundation_unet": {**_TEXT_FOUNDATION, "sample_size": 32, "cross_attention_dim": 1280, "attention_head_dim": 8},
    },
    "celeb_mask": {
        "foundation": "CelebA-HQ LDM (CompVis/ldm-celebahq-256)", "guidance": 1.0,
        "model_args": {"image_size": 64, "in_channels": 3, "out_channels": 3, "model_channels": 224, "attention_resolutions": [8, 4, 2],
                       "num_res_blocks": 2, "channel_mult": [1, 2, 3, 4], "num_head_channels": 32,
                       "instance_prompt_attn_type": "segmentation", "instance_attn_res": [2, 4],
                       "instance_prompt_args": {"num_classes": 19, "embedding_dim": 128}, "num_prompt": 0},
        "beta_schedule_args": {"schedule": "linear", "n_timestep": 1000, "linear_start": 0.0015, "linear_end": 0.0195},
        "foundation_unet": None,  # the CelebA-HQ LDM's UNet2DModel: layoutdiffuse.sd.ldm.LDM_CELEBAHQ_256
    },
}


def release_config(name: str) -> dict[str, Any]:
    """The release config (``denoising_model`` / ``diffusion`` parts) of a published model."""
    from ..errors import UnknownNameError

    if name not in PUBLISHED:
        raise UnknownNameError(f"unknown published model {name!r}; choose one of: {', '.join(PUBLISHED)}")
    entry = PUBLISHED[name]
    return {"denoising_model": {"model_args": dict(entry["model_args"])},
            "diffusion": {"beta_schedule_args": dict(entry["beta_schedule_args"]), "training_target": "noise"}}


def foundation_unet(name: str) -> tuple[str, dict[str, Any]]:
    """``(diffusers class, config)`` of the foundation UNet of a published model."""
    entry = PUBLISHED[name]
    if entry["foundation_unet"] is None:
        from ..sd.ldm import LDM_CELEBAHQ_256, unet_config_from_ldm

        return "UNet2DModel", unet_config_from_ldm(LDM_CELEBAHQ_256["model"]["params"]["unet_config"]["params"])
    return "UNet2DConditionModel", dict(entry["foundation_unet"])
