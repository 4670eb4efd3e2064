"""The release's published models at full size with random weights, built offline (no model hub).

For the full-size rehearsal (``benchmarks/rehearse_full_size.py``) and the GPU check
(``benchmarks/gpu_check.py``): shapes, memory and time are those of the real models; outputs mean
nothing.

* :func:`save_foundation` -- a foundation folder in the diffusers layout its loader reads
  (:func:`~layoutdiffuse.sd.foundation.load_foundation`): Stable Diffusion 1.5 / 2.1-base (``unet/``,
  ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), the LAION text-to-image LDM
  (``unet/``, ``vqvae/``, ``bert/``, ``tokenizer/``, ``scheduler/``) or the CelebA-HQ LDM (``unet/``,
  ``vqvae/``). The text encoders have the real widths, depths and vocabulary sizes; the tokenizers
  are made locally (a byte-level CLIP tokenizer, :func:`~layoutdiffuse.sd.testing.stand_in_tokenizer`;
  a BERT word-piece tokenizer over a few words).
* :func:`write_release_checkpoint` -- a release-format ``.ckpt`` (``{"state_dict": {"denoise_fn.*": ...}}``)
  holding every key of a published model's key manifest (``NAME.keys.tsv``) as a random tensor.
* :func:`layoutdiffuse.release.random_module.build_random_module` -- the converted module in memory (foundation parts and adapted UNet),
  without files: what ``convert-release`` would give, for the GPU check.
* :class:`InPrecision` -- a denoiser run in half precision with float32 in and out, so the sampler's
  arithmetic stays in float32.

``"tiny"`` variants of each name have the same structure at toy widths (tests run them in seconds).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..autoencoder import require_diffusers
from ..errors import UserError
from .testing import SD_ARCHITECTURES, SD_SCHEDULER, stand_in_tokenizer

#: published model -> foundation kind (:data:`~layoutdiffuse.sd.spec.FOUNDATIONS`)
KINDS = {"cocostuff_SD1_5": "stable_diffusion", "cocostuff_SD2_1": "stable_diffusion", "cocostuff": "ldm_text", "vg": "ldm_text",
         "celeb_mask": "ldm"}
#: text encoders of the foundations (transformers configs): CLIP ViT-L/14 (SD 1.5), OpenCLIP ViT-H/14 without its
#: last layer (SD 2.1), LDMBert (the LAION LDM)
TEXT = {
    "cocostuff_SD1_5": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
                            hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77),
    "cocostuff_SD2_1": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, projection_dim=512,
                            hidden_act="gelu", vocab_size=49408, max_position_embeddings=77),
    "ldm_text": dict(d_model=1280, encoder_layers=32, encoder_ffn_dim=5120, encoder_attention_heads=8, head_dim=64, vocab_size=30522,
                     max_position_embeddings=77),
}
#: the KL-f8 autoencoder of Stable Diffusion and of the LAION LDM (``vqvae/`` there, an AutoencoderKL all the same)
KL_F8 = dict(SD_ARCHITECTURES["sd15"]["vae"])
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "on", "the", "grass", "beach", "person", "sand", "sea", "blurry"]
SCALING = {"stable_diffusion": 0.18215, "ldm_text": 0.18215}
#: the suffix of the release's shared prompt-table keys
SHARED_TABLE = "class_embedder.weight"


def _tiny_unet(name: str) -> tuple[str, dict[str, Any]]:
    from ..release.published import foundation_unet

    cls, cfg = foundation_unet(name)
    cfg = dict(cfg)
    if cls == "UNet2DModel":
        cfg.update(block_out_channels=[32, 64, 96, 128], attention_head_dim=16, sample_size=16)
    else:
        heads = cfg["attention_head_dim"]
        cfg.update(block_out_channels=[32, 64, 64, 64], sample_size=8,
                   cross_attention_dim=32, attention_head_dim=[2, 4, 4, 4] if isinstance(heads, list) else 2)
    return cls, cfg


def tiny_release_config(name: str) -> dict[str, Any]:
    """The release config of a published model at the widths of :func:`foundation_configs` ``tiny=True``."""
    from ..release.published import release_config

    cfg = release_config(name)
    args = cfg["denoising_model"]["model_args"]
    _, unet = _tiny_unet(name)
    args.update(model_channels=32, image_size=unet["sample_size"], instance_prompt_args={**args["instance_prompt_args"], "embedding_dim": 16})
    if KINDS[name] == "ldm":
        args.update(channel_mult=[1, 2, 3, 4], num_head_channels=16)
    else:
        args.update(channel_mult=[1, 2, 2, 2], text_context_dim=32, prompt_dim=16)
        if "num_head_channels" in args:
            args["num_head_channels"] = 16
        else:
            args["num_heads"] = 2
        if args.get("num_prompt"):
            args["num_prompt"] = 4
    return cfg


def foundation_configs(name: str, tiny: bool = False) -> dict[str, Any]:
    """``{"kind", "unet": (class, config), "autoencoder": (class, config), "text": config | None}``."""
    from ..release.published import PUBLISHED, foundation_unet
    from .ldm import LDM_CELEBAHQ_256, vq_config_from_ldm

    if name not in PUBLISHED:
        raise UserError(f"unknown published model {name!r}; choose one of: {', '.join(PUBLISHED)}")
    kind = KINDS[name]
    unet = _tiny_unet(name) if tiny else foundation_unet(name)
    if kind == "ldm":
        vq = vq_config_from_ldm(LDM_CELEBAHQ_256["model"]["params"]["first_stage_config"]["params"], 1.0)
        if tiny:
            vq.update(block_out_channels=[8, 16, 16], norm_num_groups=8, layers_per_block=1, num_vq_embeddings=64)
        return {"kind": kind, "unet": unet, "autoencoder": ("VQModel", vq), "text": None}
    kl = dict(KL_F8, sample_size=512 if kind == "stable_diffusion" else 256)
    text = dict(TEXT["ldm_text" if kind == "ldm_text" else name])
    if tiny:
        kl.update(block_out_channels=(8, 8, 16, 16), norm_num_groups=8, layers_per_block=1, sample_size=64)
        if kind == "ldm_text":
            text.update(d_model=32, encoder_layers=1, encoder_ffn_dim=37, encoder_attention_heads=2, head_dim=16, max_position_embeddings=8)
        else:
            text.update(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, projection_dim=32,
                        max_position_embeddings=8)
    return {"kind": kind, "unet": unet, "autoencoder": ("AutoencoderKL", kl), "text": text}


def _bert_tokenizer(folder: Path, max_length: int) -> Any:
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"), model_max_length=max_length)


def _text_parts(kind: str, text: Mapping[str, Any], scratch: Path) -> tuple[nn.Module, Any]:
    """(text encoder, tokenizer) of a text foundation, randomly initialised."""
    if kind == "ldm_text":
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

        tok = _bert_tokenizer(scratch, text["max_position_embeddings"])
        return LDMBertModel(LDMBertConfig(**text)), tok
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = stand_in_tokenizer(text["max_position_embeddings"])
    return CLIPTextModel(CLIPTextConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                        **text)), tok


def save_foundation(name: str, root: str | Path, tiny: bool = False, seed: int = 0, unet: tuple[str, dict[str, Any]] | None = None,
                    scheduler: Mapping[str, Any] | None = None) -> Path:
    """Write the foundation of published model ``name`` as a folder that ``convert-release --foundation``
    reads (random weights, float32, one part in memory at a time); returns ``root``. ``unet``:
    ``(diffusers class, config)`` replacing the foundation's UNet (e.g. a release fixture's tiny
    architecture; the text encoder's width follows its ``cross_attention_dim``); ``scheduler``: its
    ``scheduler_config.json`` (default Stable Diffusion's)."""
    diffusers = require_diffusers()
    cfg = foundation_configs(name, tiny)
    if unet is not None:
        cfg["unet"] = unet
        width = unet[1].get("cross_attention_dim")
        if cfg["text"] is not None and width:
            cfg["text"]["d_model" if cfg["kind"] == "ldm_text" else "hidden_size"] = int(width)
    kind, root = cfg["kind"], Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cls, unet_cfg = cfg["unet"]
    getattr(diffusers, cls)(**unet_cfg).save_pretrained(root / "unet")
    ae_cls, ae_cfg = cfg["autoencoder"]
    getattr(diffusers, ae_cls)(**ae_cfg).save_pretrained(root / ("vae" if kind == "stable_diffusion" else "vqvae"))
    if cfg["text"] is not None:
        encoder, tok = _text_parts(kind, cfg["text"], root / "tokenizer")
        encoder.save_pretrained(root / ("bert" if kind == "ldm_text" else "text_encoder"))
        del encoder
        tok.save_pretrained(root / "tokenizer")
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(scheduler or SD_SCHEDULER)))
    pipeline = {"stable_diffusion": "StableDiffusionPipeline", "ldm_text": "LDMTextToImagePipeline", "ldm": "LDMPipeline"}[kind]
    (root / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    return root


def read_manifest(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a release key manifest (``NAME.keys.tsv``: key, tab, shape as ``AxBxC``)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            out[key] = tuple(int(s) for s in shape.split("x"))
    return out


def random_release_state(shapes: Mapping[str, tuple[int, ...]], dtype: torch.dtype = torch.float16, seed: int = 0,
                         scale: float = 0.02) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes: norm weights ``1 + scale * N(0, 1)``, everything else
    ``scale * N(0, 1)`` (about unit-variance activations at these widths), stored in ``dtype``. The
    release's one prompt table appears under every block (``*class_embedder.weight``):
    those keys hold one tensor, as in a real checkpoint."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    table = None
    for key, shape in shapes.items():
        if key.endswith(SHARED_TABLE) and table is not None and tuple(table.shape) == tuple(shape):
            out[key] = table
            continue
        t = scale * torch.randn(shape, generator=g)
        if "norm" in key and key.endswith("weight"):
            t += 1
        out[key] = t.to(dtype)
        if key.endswith(SHARED_TABLE):
            table = out[key]
    return out


def write_release_checkpoint(shapes: Mapping[str, tuple[int, ...]], path: str | Path, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """A release-format ``.ckpt`` (Lightning dict, ``state_dict`` of random tensors of ``shapes``)."""
    from ..files import save_torch

    state = random_release_state(shapes, dtype, seed)
    return save_torch({"epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.6.0", "state_dict": state}, path)


def release_scheduler(beta_schedule_args: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers scheduler config of the release's ``beta_schedule_args`` (its "linear" is ``scaled_linear``)."""
    return {**SD_SCHEDULER, "beta_start": float(beta_schedule_args["linear_start"]), "beta_end": float(beta_schedule_args["linear_end"]),
            "num_train_timesteps": int(beta_schedule_args.get("n_timestep", 1000))}


class InPrecision(nn.Module):
    """``model(x, t, cond)`` with the weights in ``dtype``: floating inputs (``x`` and the floating
    tensors of ``cond`` but the layout) are cast to ``dtype``, the output back to float32. ``x: (B, C, h, w)`` ->
    ``(B, C_out, h, w)`` float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any] | None = None) -> torch.Tensor:
        if cond:  # layouts stay float32: box edges are rasterised from them
            cond = {k: v.to(self.dtype) if k != "layout" and isinstance(v, torch.Tensor) and v.is_floating_point() else v
                    for k, v in cond.items()}
        return self.model(x.to(self.dtype), t, cond).float()
