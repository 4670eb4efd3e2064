"""Latent LayoutDiffuse on a Stable-Diffusion-architecture model: training and sampling throughput,
the adapted model side by side with its plain foundation.

    python benchmarks/bench_sd_tiny.py [--arch tiny|sd15] [--batch 4] [--image-size N] [--train-steps 10]
                                       [--sample-steps 20] [--device auto|cpu|cuda] [--checkpointing]

Prints JSON. Random weights of the real architectures (``layoutdiffuse.sd.testing``; ``sd15`` is
Stable Diffusion 1.5 size: 860M-parameter UNet, the SD VAE, a CLIP-L-sized text encoder), so no
download is needed; outputs are meaningless, costs are real.

* Device and precision: CUDA when available in bf16-mixed (autocast, as ``precision: bf16-mixed``
  in the configs), else CPU in float32.
* Training: ``LatentDDPMTraining`` through a Lightning ``Trainer`` (AdamW, EMA 0.9999, condition
  dropout 0.1, VAE encode + text encode inside the step, as in real runs), COCO-like layouts of
  3-8 boxes over 171 classes with captions; images/s over the steps after ``--warmup`` steps.
* Sampling: PLMS with classifier-free guidance 5.0 (both branches in one batch), decoded; images/s.
* ``foundation``: the same module around the plain UNet (no layout attention, no task prompts);
  ``adaptor_overhead`` = foundation images/s / adapted images/s (1.0 = free).
* Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; not measured on CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytorch_lightning as pl  # noqa: E402

from layoutdiffuse.conditions import collate  # noqa: E402
from layoutdiffuse.layout import pad_layouts  # noqa: E402
from layoutdiffuse.autoencoder import Autoencoder  # noqa: E402
from layoutdiffuse.factory import build_module  # noqa: E402
from layoutdiffuse.sd.foundation import Foundation  # noqa: E402
from layoutdiffuse.sd.layout_unet import LayoutDiffusersUNet  # noqa: E402
from layoutdiffuse.sd.testing import SD_ARCHITECTURES, SD_SCHEDULER, build_sd  # noqa: E402
from layoutdiffuse.sd.schedules import diffusion_from_scheduler  # noqa: E402
from layoutdiffuse.training.latent import LatentDDPMTraining  # noqa: E402

CLASSES = 171
CAPTIONS = ["a cat on a sofa", "a street with cars and people", "", "two dogs playing in the grass"]


class PlainTextUNet(nn.Module):
    """The foundation UNet behind the same ``model(x, t, cond)`` interface (layouts ignored)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any] | None = None) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond["context"], return_dict=False)[0]


class RandomLayouts(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        k = int(torch.randint(3, 9, (1,), generator=g))
        wh = 0.1 + 0.4 * torch.rand(k, 2, generator=g)
        xy = torch.rand(k, 2, generator=g) * (1 - wh)
        layout = torch.cat([xy, wh, torch.randint(0, CLASSES, (k, 1), generator=g).float()], 1)
        return {"image": torch.rand(3, self.size, self.size, generator=g) * 2 - 1, "layout": layout, "caption": CAPTIONS[i % len(CAPTIONS)]}


class StepTimer(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self.t0 = warmup, [], 0.0

    def _sync(self, module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._sync(module)
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._sync(module)
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self.t0)


def build(arch: str, adapted: bool, checkpointing: bool, image_size: int) -> LatentDDPMTraining:
    parts = build_sd(arch, seed=0, random_unet=False)
    unet = parts["unet"]
    if adapted:
        model: nn.Module = LayoutDiffusersUNet(unet, {"num_classes": CLASSES, "levels": [1, 2] if arch == "sd15" else [0, 1]})
        if checkpointing:
            model.enable_gradient_checkpointing()
    else:
        model = PlainTextUNet(unet)
        if checkpointing:
            unet.enable_gradient_checkpointing()
    found = Foundation("stable_diffusion", unet, Autoencoder(parts["vae"]), parts["text_encoder"], parts["tokenizer"],
                       diffusion_from_scheduler(SD_SCHEDULER), Path("random"))
    config = {"diffusion": {"training": "LatentDDPMTraining", "optimizer": {"lr": 3e-5}, "ema_decay": 0.9999, "cond_drop_prob": 0.1,
                            "sampling": {"sampler": "plms", "steps": 20, "guidance": 5.0}}, "data": {"image_size": image_size}}
    return build_module(config, model=model, foundation=found)


def measure(args: argparse.Namespace, adapted: bool, device: str) -> dict[str, Any]:
    module = build(args.arch, adapted, args.checkpointing, args.image_size)
    n_images = args.batch * (args.train_steps + args.warmup)
    loader = torch.utils.data.DataLoader(RandomLayouts(n_images, args.image_size), batch_size=args.batch, collate_fn=collate)
    timer = StepTimer(args.warmup)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = pl.Trainer(accelerator=device, devices=1, precision="bf16-mixed" if device == "cuda" else "32-true",
                         max_steps=args.train_steps + args.warmup, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, loader)
    out: dict[str, Any] = {"train_images_per_s": args.batch * len(timer.times) / sum(timer.times),
                           "parameters_M": sum(p.numel() for p in module.model.parameters()) / 1e6}
    if device == "cuda":
        out["train_peak_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    module.to(device)
    ds = RandomLayouts(args.batch, args.image_size)
    cond = {"layout": pad_layouts([ds[i]["layout"] for i in range(args.batch)]).to(device),
            "caption": [ds[i]["caption"] for i in range(args.batch)]}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    for repeat in range(2):  # the first run warms up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            module.sample(args.batch, cond, generator=torch.Generator(device).manual_seed(repeat), steps=args.sample_steps,
                          negative_prompt="blurry")
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out["sample_images_per_s"] = args.batch / times[-1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(SD_ARCHITECTURES), default="tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=None, help="pixels (default: 32 tiny, 512 sd15)")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    args.image_size = args.image_size or (512 if args.arch == "sd15" else 32)
    if args.threads:
        torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)
    adapted = measure(args, True, device)
    foundation = measure(args, False, device)
    result = {
        "arch": args.arch, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "precision": "bf16-mixed" if device == "cuda" else "float32", "batch": args.batch, "image_size": args.image_size,
        "train_steps": args.train_steps, "sample_steps": args.sample_steps, "sampler": "plms", "guidance": 5.0,
        "gradient_checkpointing": args.checkpointing, "adapted": adapted, "foundation": foundation,
        "adaptor_overhead": {"train": foundation["train_images_per_s"] / adapted["train_images_per_s"],
                             "sample": foundation["sample_images_per_s"] / adapted["sample_images_per_s"]},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
