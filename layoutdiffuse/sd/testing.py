"""Randomly initialised foundations of the real architectures, built offline (no model hub).

For tests, benchmarks and quick notebook runs: ``build_sd("tiny")`` gives a diffusers
``UNet2DConditionModel`` + ``AutoencoderKL``, a transformers ``CLIPTextModel`` and a real
``CLIPTokenizer``; ``build_sd("sd15")`` the same at Stable Diffusion 1.5 size (860M-parameter UNet,
the SD VAE, a CLIP ViT-L/14-sized text encoder) for throughput measurements. ``build_ldm("tiny")``:
``UNet2DModel`` + ``VQModel``. :func:`save_sd_folder` writes the diffusers folder layout that
:func:`~layoutdiffuse.sd.foundation.load_foundation` reads.

The tokenizer is a stand-in: a byte-level BPE with the 256 byte symbols, their end-of-word forms,
two merges (``c a``, ``ca t</w>``) and CLIP's two special tokens -- a real ``CLIPTokenizer``
(same padding, truncation and special-token behaviour), but not CLIP's 49,408-token vocabulary,
which cannot be fetched offline. Random weights: outputs mean nothing, shapes and costs are real.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..autoencoder import require_diffusers

#: architecture configs: UNet2DConditionModel, AutoencoderKL, CLIPTextConfig (+ tokenizer max length)
SD_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": {
        "unet": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32, 32),
                     down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                     cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8),
        "vae": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                    norm_num_groups=8, layers_per_block=1, sample_size=16),
        "text": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
        "max_length": 8,
    },
    "sd15": {
        "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8),
        "vae": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), latent_channels=4,
                    layers_per_block=2, sample_size=512),
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
                     hidden_act="quick_gelu"),
        "max_length": 77,
    },
}
LDM_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": {
        "unet": dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32, 32),
                     down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                     up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=8),
        "vq": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                   block_out_channels=(8, 16), latent_channels=3, num_vq_embeddings=32, vq_embed_dim=3, norm_num_groups=8,
                   layers_per_block=1, sample_size=16, scaling_factor=1.0),
    },
}
SD_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1}


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Every weight random, zero-initialised layers included (norm weights around 1), so that
    equality tests are not trivially about zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = scale * torch.randn(p.shape, generator=g)
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)
    return model


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 / CLIP byte -> printable-character table of byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def stand_in_tokenizer(max_length: int = 77) -> Any:
    """A real ``CLIPTokenizer`` over a generated byte-level vocabulary (see the module docstring)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    merges = [("c", "a"), ("ca", "t</w>")]
    tokens = chars + [c + "</w>" for c in chars] + ["ca", "cat</w>", "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=max_length)


def build_sd(arch: str = "tiny", seed: int = 0, random_unet: bool = True) -> dict[str, Any]:
    """``{"unet", "vae", "text_encoder", "tokenizer"}`` of a random Stable Diffusion architecture (eval mode).
    ``random_unet``: :func:`randomize` the UNet (else diffusers' initialisation, zero output conv)."""
    diffusers = require_diffusers()
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = SD_ARCHITECTURES[arch]
    torch.manual_seed(seed)
    tok = stand_in_tokenizer(spec["max_length"])
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=spec["max_length"], bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **spec["text"]))
    unet = diffusers.UNet2DConditionModel(**spec["unet"])
    if random_unet:
        randomize(unet, seed)
    return {"unet": unet.eval(), "vae": diffusers.AutoencoderKL(**spec["vae"]).eval(), "text_encoder": text.eval(), "tokenizer": tok}


def build_ldm(arch: str = "tiny", seed: int = 0) -> dict[str, Any]:
    """``{"unet", "vqvae"}`` of a random LDM architecture (eval mode, UNet randomised)."""
    diffusers = require_diffusers()
    spec = LDM_ARCHITECTURES[arch]
    torch.manual_seed(seed)
    return {"unet": randomize(diffusers.UNet2DModel(**spec["unet"]), seed).eval(), "vqvae": diffusers.VQModel(**spec["vq"]).eval()}


def save_sd_folder(root: str | Path, arch: str = "tiny", seed: int = 0, scheduler: dict[str, Any] | None = None) -> Path:
    """Write a random Stable Diffusion architecture as a diffusers folder (unet, vae, text_encoder,
    tokenizer, scheduler); returns ``root``."""
    root = Path(root)
    parts = build_sd(arch, seed)
    root.mkdir(parents=True, exist_ok=True)
    parts["unet"].save_pretrained(root / "unet")
    parts["vae"].save_pretrained(root / "vae")
    parts["text_encoder"].save_pretrained(root / "text_encoder")
    parts["tokenizer"].save_pretrained(root / "tokenizer")
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler or SD_SCHEDULER))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root
