"""Scoring a Layout-MNIST layout model: layout accuracy, digit-FID and diversity in one call.

Used by ``python -m layoutdiffuse evaluate --layout``, ``benchmarks/eval_layout_mnist.py`` and
``benchmarks/adapt_vs_scratch.py``, so every reported number comes from the same protocol:

* the first ``n`` validation canvases of Layout-MNIST (MNIST-test digits) give the layouts;
* **layout accuracy**: every box of a generated canvas is cropped (:data:`CROP`) and read by the
  Layout-MNIST crop judge; the judge's accuracy on the same crops of the *real* canvases is the
  ceiling;
* **detection** (the "YOLO score"): COCO AP / AP50 / AP75 of the digit detector
  (:mod:`.detection`) on the generated canvases against the layouts, and ``exact50`` (share of
  canvases detected exactly as laid out); unlike layout accuracy it counts a doubled digit or ink
  outside the boxes; the same on the real canvases is its ceiling;
* **digit-FID**: generated canvases vs the real canvases ``n .. 2n``; the floor is the FID between
  canvases ``n .. 2n`` and ``2n .. 3n`` (two disjoint real sets of the same size);
* **diversity**: mean pairwise digit-LPIPS of ``diversity_samples`` samples of each of the first
  ``diversity_layouts`` layouts (0 layouts: skipped).
"""
from __future__ import annotations

import time
from typing import Any

import torch

from ..sampling import sample_batched
from .crop_classifier import CROP, load_crop_classifier
from .detection import DigitDetector, detection_score
from .diversity import diversity
from .fid import digit_fid
from .layout_accuracy import layout_accuracy
from ..errors import UserError


def generate(module: Any, layouts: torch.Tensor, seed: int = 0, batch_size: int = 100, **sampling: Any) -> torch.Tensor:
    """Samples ``(B, C, H, W)`` in [-1, 1] for ``layouts: (B, N, 5)``: :func:`layoutdiffuse.sampling.sample_batched`."""
    return sample_batched(module, len(layouts), layouts, seed=seed, batch_size=batch_size, **sampling)


def evaluate_layout_mnist(module: Any, n: int = 500, sampler: str | None = None, steps: int | None = None,
                          guidance: float | None = None, root: str | None = None, seed: int = 0,
                          diversity_layouts: int = 8, diversity_samples: int = 8, batch_size: int = 100) -> dict[str, Any]:
    """Score ``module`` (a layout model for Layout-MNIST canvases) on ``n`` validation layouts; a JSON-able dict.

    ``sampler``/``steps``/``guidance`` default to the module's sampling settings (the dict reports
    the values used). ``root`` holds ``MNIST/raw`` (default: ``$LAYOUTDIFFUSE_DATA``).
    """
    from ..data.registry import DATASETS

    if n < 2:
        raise UserError(f"n must be >= 2 layouts (FID needs two images per set), got {n}")
    if diversity_layouts and diversity_samples < 2:
        raise UserError(f"diversity_samples must be >= 2, got {diversity_samples}")
    used = {**module.sampling_args, **{k: v for k, v in dict(sampler=sampler, steps=steps, guidance=guidance).items() if v is not None}}
    opts = {k: used.get(k) for k in ("sampler", "steps", "guidance")}
    size = module.image_shape[-1]
    val = DATASETS.get("layout_mnist")(split="val", root=root, image_size=size, length=3 * n)
    batch = val.collate([val[i] for i in range(3 * n)])
    layouts, real_a, real_b = batch["layout"][:n], batch["image"][n : 2 * n], batch["image"][2 * n :]
    judge = load_crop_classifier()
    detector = DigitDetector(classifier=judge)

    start = time.perf_counter()
    fake = generate(module, layouts, seed, batch_size, **opts)
    seconds = time.perf_counter() - start
    acc = layout_accuracy(fake, layouts, judge, **CROP)
    ceiling = layout_accuracy(batch["image"][:n], layouts, judge, **CROP)
    result: dict[str, Any] = {
        "n": n, **opts, "seed": seed,
        "layout_accuracy": round(acc.accuracy, 4), "boxes": acc.count,
        "layout_accuracy_real_canvases": round(ceiling.accuracy, 4),
        "per_class_accuracy": [round(float(v), 3) for v in acc.per_class],
        "detection": {k: round(v, 4) for k, v in detection_score(fake, layouts, detector).items()},
        "detection_real_canvases": {k: round(v, 4) for k, v in detection_score(batch["image"][:n], layouts, detector).items()},
        "digit_fid": round(digit_fid(fake, real_a), 3),
        "digit_fid_real_vs_real": round(digit_fid(real_b, real_a), 3),
        "seconds_per_image": round(seconds / n, 4),
    }
    if diversity_layouts:
        repeated = layouts[:diversity_layouts].repeat_interleave(diversity_samples, 0)
        samples = generate(module, repeated, seed + 10_000, batch_size, **opts)
        result["diversity_lpips"] = round(diversity(samples.reshape(-1, diversity_samples, *fake.shape[1:])), 4)
    return result
