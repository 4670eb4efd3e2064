"""Train the digit locator of :mod:`.detection` on real Layout-MNIST *train* canvases.

    python -m layoutdiffuse.evaluation.train_detector --root $LAYOUTDIFFUSE_DATA \\
        --out layoutdiffuse/evaluation/weights/layout_mnist32_detector.safetensors

Training canvases (MNIST-train digits only), a third each: the dataset's own distribution (1-3
digits, longer side 35-60 % of the canvas), a wide one (0-4 digits, 25-95 % log-uniform, so a digit
filling the canvas and an 8 px digit are both seen; both allow the dataset's 30 % overlap), and
*touching rows* (:func:`touching_rows`: 1-4 digits squeezed side by side, 0-1 px apart or 1 px
overlapping, half of the rows one class repeated), so that two narrow digits that touch are two
centres -- a model that draws "88" into an 8's box draws such a row.
Each canvas is lightly perturbed (grey background offset, Gaussian noise, contrast), as generated
canvases are. Loss: CenterNet's (Zhou et al. 2019) penalty-reduced focal loss on a Gaussian heat
map around each box centre (sigma = box side / 8) plus L1 on the centre offset and log box size at
the centre pixel. The record (AP of real *validation* canvases, time, settings) is stored beside
the weights and in their metadata.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..files import save_safetensors, save_text
from .detection import WEIGHTS, DigitDetector, DigitLocator, layout_targets, mean_average_precision

log = logging.getLogger(__name__)
#: the two training distributions (LayoutMNIST keyword arguments)
DISTRIBUTIONS = ({}, {"min_digits": 0, "max_digits": 4, "digit_scale": (0.25, 0.95), "scale_spacing": "log"})
#: range of the factor on a digit's own ink aspect (w / h) in :func:`touching_rows` (1: unsqueezed)
SQUEEZE = (0.35, 1.2)


def canvases(split: str, n: int, root: str | None = None, seed: int = 0, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real Layout-MNIST canvases ``(n, 1, 32, 32)`` in [-1, 1] and their layouts ``(n, N, 5)``."""
    from ..data.layout_mnist import LayoutMNIST

    ds = LayoutMNIST(root=root, split=split, canvas_size=32, length=n, seed=seed, **kwargs)
    batch = ds.collate([ds[i] for i in range(n)])
    return batch["image"], batch["layout"]


def touching_rows(split: str, n: int, root: str | None = None, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` canvases ``(n, 1, S, S)`` in [-1, 1] each holding one row of 1-4 real digits side by side and their
    layouts ``(n, 4, 5)`` (-1 rows pad): row height 8-30 px, each digit's width its own ink aspect times a
    squeeze in :data:`SQUEEZE` (log-uniform; all shrunk together when the row would leave the canvas),
    neighbours 1 px apart, touching or overlapping by 1 px; in half of the rows every digit has one class."""
    from ..data.layout_mnist import MIN_DIGIT_PX, LayoutMNIST

    ds = LayoutMNIST(root=root, split=split, canvas_size=size, length=1, seed=seed)
    by_class = [torch.nonzero(ds.labels == c).flatten() for c in range(10)]
    g = torch.Generator().manual_seed(seed)
    images, layouts = torch.zeros(n, 1, size, size), torch.full((n, 4, 5), -1.0)
    for i in range(n):
        k = int(torch.randint(1, 5, (), generator=g))
        h = int(torch.randint(MIN_DIGIT_PX, 31, (), generator=g))
        same = bool(torch.rand((), generator=g) < 0.5)
        classes = torch.full((k,), int(torch.randint(0, 10, (), generator=g))) if same else torch.randint(0, 10, (k,), generator=g)
        digits = [int(by_class[c][torch.randint(len(by_class[c]), (), generator=g)]) for c in classes.tolist()]
        ink = ds.ink[digits].float()
        aspect = (ink[:, 2] - ink[:, 0]) / (ink[:, 3] - ink[:, 1])
        widths = h * aspect * torch.exp(math.log(SQUEEZE[0]) + math.log(SQUEEZE[1] / SQUEEZE[0]) * torch.rand(k, generator=g))
        gaps = torch.randint(-1, 2, (k,), generator=g)
        gaps[0] = 0
        room = size - int(gaps.sum())
        widths = (widths * min(1.0, room / float(widths.sum()))).round().clamp_min(2).long()
        xs = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), widths[:-1]]) + gaps, 0)
        x0 = int(torch.randint(0, max(size - int(xs[-1] + widths[-1]), 0) + 1, (), generator=g))
        y0 = int(torch.randint(0, size - h + 1, (), generator=g))
        boxes = torch.stack([(xs + x0).clamp(max=size - 2), torch.full((k,), y0), widths, torch.full((k,), h)], 1)
        boxes[:, 2] = torch.minimum(boxes[:, 2], size - boxes[:, 0])
        canvas, _ = ds.render(np.array(digits), boxes.numpy())
        images[i, 0] = canvas * 2 - 1
        layouts[i, :k] = torch.cat([boxes.float() / size, classes[:, None].float()], 1)
    return images, layouts


def targets(layout: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Training targets ``(B, 5, S, S)`` of ``layout: (B, N, 5)``: heat (Gaussian, 1 at each centre pixel),
    offset and log size (at centre pixels only; elsewhere 0), see :class:`.detection.DigitLocator`."""
    out = torch.zeros(layout.shape[0], 5, size, size)
    grid = torch.arange(size).float()
    for b, t in enumerate(layout_targets(layout, (size, size))):
        for x0, y0, x1, y1 in t["boxes"].tolist():
            cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
            i, j = min(int(cx), size - 1), min(int(cy), size - 1)
            gx = torch.exp(-((grid + 0.5 - cx) ** 2) / (2 * max(w / 8, 0.6) ** 2))
            gy = torch.exp(-((grid + 0.5 - cy) ** 2) / (2 * max(h / 8, 0.6) ** 2))
            out[b, 0] = torch.maximum(out[b, 0], gy[:, None] * gx[None, :])
            out[b, 0, j, i] = 1.0
            out[b, 1:, j, i] = torch.tensor([cx - i, cy - j, math.log(w), math.log(h)])
    return out


def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet loss of locator output ``pred: (B, 5, H, W)`` against :func:`targets` ``(B, 5, H, W)``."""
    p = pred[:, 0].sigmoid().clamp(1e-4, 1 - 1e-4)
    y = target[:, 0]
    pos = (y == 1).float()
    n = pos.sum().clamp_min(1)
    focal = -(pos * (1 - p) ** 2 * p.log() + (1 - pos) * (1 - y) ** 4 * p**2 * (1 - p).log()).sum() / n
    reg = (F.l1_loss(pred[:, 1:], target[:, 1:], reduction="none") * pos[:, None]).sum() / n
    return focal + reg


def perturb(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Grey background offset, contrast and Gaussian noise on ``x: (B, 1, H, W)`` in [-1, 1]."""
    b = x.shape[0]
    x01 = (x + 1) / 2
    contrast = 0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=g)
    offset = 0.1 * torch.rand(b, 1, 1, 1, generator=g)
    noise = 0.05 * torch.rand(b, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return ((x01 * contrast + offset * (1 - x01) + noise).clamp(0, 1)) * 2 - 1


def train_locator(root: str | None = None, n_train: int = 40000, steps: int = 3000, batch_size: int = 64, lr: float = 3e-3,
                  width: int = 16, seed: int = 0, n_val: int = 1000, progress: bool = True) -> tuple[DigitLocator, dict[str, Any]]:
    """Train a :class:`DigitLocator`; returns ``(model in eval mode, info)`` with the AP of real validation canvases."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    parts = [canvases("train", n_train // 3, root, seed + k, **kw) for k, kw in enumerate(DISTRIBUTIONS)]
    parts.append(touching_rows("train", n_train // 3, root, seed + len(DISTRIBUTIONS)))
    width_n = max(p[1].shape[1] for p in parts)
    images = torch.cat([p[0] for p in parts])
    layouts = torch.cat([F.pad(p[1], (0, 0, 0, width_n - p[1].shape[1]), value=-1.0) for p in parts])
    target = targets(layouts)
    data_seconds = time.perf_counter() - start
    model = DigitLocator(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in tqdm(range(steps), desc="digit locator", disable=not progress):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        x = perturb(images[idx], g)
        value = loss(model(x), target[idx])
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        if step % 500 == 0:
            log.info("step %d loss %.4f", step, value.item())
    model.eval().requires_grad_(False)
    seconds = time.perf_counter() - start
    val_x, val_layout = canvases("val", n_val, root, seed)
    preds = DigitDetector(locator=model)(val_x)
    ap = mean_average_precision(preds, layout_targets(val_layout, (32, 32)))
    info = {"width": width, "val_ap": round(ap["ap"], 4), "val_ap50": round(ap["ap50"], 4), "val_ap75": round(ap["ap75"], 4),
            "val_canvases": n_val, "train_canvases": len(images), "distributions": [dict(d) for d in DISTRIBUTIONS] + ["touching_rows"],
            "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "data_seconds": round(data_seconds, 1),
            "train_seconds": round(seconds - data_seconds, 1), "threads": torch.get_num_threads(), "torch": torch.__version__}
    return model, info


def save_locator(model: DigitLocator, path: str | Path, info: dict[str, Any]) -> None:
    """fp32 safetensors with ``info`` in the metadata and a ``.json`` beside it."""
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = save_safetensors(state, path, metadata={"info": json.dumps(info)})
    save_text(json.dumps(info, indent=2) + "\n", path.with_suffix(".json"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m layoutdiffuse.evaluation.train_detector", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None)
    p.add_argument("--out", default=str(WEIGHTS))
    p.add_argument("--n-train", type=int, default=40000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, info = train_locator(args.root, args.n_train, args.steps, args.batch_size, width=args.width)
    info["command"] = p.prog + " " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    save_locator(model, args.out, info)
    log.info("%s", json.dumps(info))


if __name__ == "__main__":
    main()
