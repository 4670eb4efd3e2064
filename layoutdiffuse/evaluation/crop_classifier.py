"""A digit classifier for *box crops of Layout-MNIST canvases* (the layout-accuracy judge).

The MNIST classifier of :mod:`.classifier` sees 28 px digits; a box of a 32 px canvas holds an
11-19 px digit, sometimes touched by a neighbour, and upsampling it blurs it: on real validation
canvases that classifier reads only ~78 % of the boxes correctly. This module fine-tunes it on crops
of real Layout-MNIST *train* canvases (``crop_boxes`` with the same margin/square settings used at
evaluation), so layout accuracy measures the generator, not the judge. Its accuracy on crops of real
*validation* canvases (the ceiling of the metric) is recorded next to the weights.

    python -m layoutdiffuse.evaluation.crop_classifier --root $LAYOUTDIFFUSE_DATA \\
        --out layoutdiffuse/evaluation/weights/layout_mnist32_crops.safetensors
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .classifier import evaluate_classifier, fit_classifier, load_digit_classifier, random_affine, save_digit_classifier
from .layout_accuracy import crop_boxes

log = logging.getLogger(__name__)
WEIGHTS = Path(__file__).parent / "weights" / "layout_mnist32_crops.safetensors"
#: crop settings the judge was trained with; use the same when measuring layout accuracy
CROP = {"margin": 0.1, "square": True}


def layout_mnist_crops(split: str, n: int, canvas_size: int = 32, root: str | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops ``(K, 1, 28, 28)`` and labels ``(K,)`` of the boxes of ``n`` real Layout-MNIST canvases."""
    from ..data.layout_mnist import LayoutMNIST

    ds = LayoutMNIST(root=root, split=split, canvas_size=canvas_size, length=n, seed=seed)
    batch = ds.collate([ds[i] for i in range(n)])
    crops, _, labels = crop_boxes(batch["image"], batch["layout"], **CROP)
    return crops, labels


def load_crop_classifier(path: str | Path | None = None, device: torch.device | str | None = None):
    """The Layout-MNIST crop judge (safetensors)."""
    return load_digit_classifier(path or WEIGHTS, device)


def train_crop_classifier(root: str | None = None, canvas_size: int = 32, n_train: int = 20000, n_val: int = 2000, epochs: int = 3,
                          batch_size: int = 128, lr: float = 1e-3, seed: int = 0, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Fine-tune the shipped MNIST classifier on crops of real train canvases; returns ``(model, info)``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = layout_mnist_crops("train", n_train, canvas_size, root, seed)
    x_val, y_val = layout_mnist_crops("val", n_val, canvas_size, root, seed)
    model = load_digit_classifier()
    for p in model.parameters():
        p.requires_grad_(True)
    before = evaluate_classifier(model, x_val, y_val)
    start = time.perf_counter()
    fit_classifier(model, x_train, y_train, epochs, batch_size, lr, 5e-4, gen, desc="crop classifier", progress=progress,
                   augment=lambda x, g: random_affine(x, degrees=6.0, scale=(0.9, 1.1), aspect=0.1, generator=g))
    info = {
        "val_crop_accuracy": evaluate_classifier(model, x_val, y_val),
        "val_crop_accuracy_before_finetuning": before,
        "val_crops": len(y_val), "train_crops": len(y_train), "canvas_size": canvas_size, "crop": CROP,
        "epochs": epochs, "lr": lr, "seed": seed, "train_seconds": round(time.perf_counter() - start, 1),
    }
    return model, info


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m layoutdiffuse.evaluation.crop_classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None)
    p.add_argument("--out", default=str(WEIGHTS))
    p.add_argument("--canvas-size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, info = train_crop_classifier(args.root, args.canvas_size, args.n_train, epochs=args.epochs)
    info["command"] = p.prog + " " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    save_digit_classifier(model, args.out, info)
    log.info("%s", json.dumps(info))


if __name__ == "__main__":
    main()
