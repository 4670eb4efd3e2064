"""``python -m layoutdiffuse evaluate``: bits/dim, digit-FID, digit quality and Layout-MNIST scores of one module."""
from __future__ import annotations

import time
from typing import Any

import torch

from ..data.mnist import mnist_test_images
from ..errors import UserError
from ..sampling import timed_samples
from .bits_per_dim import bits_per_dim


def evaluate_checkpoint(module: Any, nll: bool = False, fid: bool = False, layout: bool = False, digits: bool = False, n: int | None = None,
                        sampler: str | None = None, steps: int | None = None, guidance: float | None = None, seed: int = 0,
                        batch_size: int = 128, data_root: str | None = None, progress: bool = False) -> dict[str, Any]:
    """A JSON-able report of the chosen measures.

    ``nll``: bits/dim on the first ``n`` (256) MNIST-test images. ``fid``: digit-FID of ``n`` (1000)
    samples against MNIST-test. ``layout``: layout accuracy, digit-FID and diversity of a Layout-MNIST
    layout model on ``n`` (500) validation layouts. ``digits``: how many of ``n`` (100) samples read
    as digits (:func:`~layoutdiffuse.evaluation.digit_quality.digit_report`; class-conditional
    models also their label accuracy); with the default batch size, ``digits`` with ``n = 100``
    scores exactly the images of ``make demo``'s grid (same seed, same labels). Sampler options
    default to the module's.
    """
    if not (nll or fid or layout or digits):
        raise UserError("nothing to evaluate: choose nll, fid, layout and/or digits")
    if n is not None and n < (2 if fid or layout else 1):
        raise UserError(f"n must be >= {2 if fid or layout else 1} (images), got {n}")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    device = module.device
    size = module.image_shape[-1]
    result: dict[str, Any] = {"device": str(device), "seed": seed}
    if nll:
        count = n or 256
        images = mnist_test_images(size, count, data_root).to(device)
        start = time.perf_counter()
        result["nll"] = {"data": f"MNIST-test[:{count}] at {size}x{size}", **bits_per_dim(module, images, batch_size, seed, progress=progress),
                         "seconds": round(time.perf_counter() - start, 1)}
    if fid:
        from .classifier import load_digit_classifier
        from .fid import digit_fid

        count = n or 1000
        samples, seconds = timed_samples(module, count, sampler, steps, seed, batch_size, guidance=guidance)
        reference = mnist_test_images(size, None, data_root)
        result["fid"] = {"sampler": sampler or module.sampling_args["sampler"], "steps": steps or module.sampling_args.get("steps"),
                         "n": count, "reference": f"MNIST-test ({len(reference)} images) at {size}x{size}",
                         "digit_fid": round(digit_fid(reference, samples, classifier=load_digit_classifier(device=device), device=device), 4),
                         "seconds_per_image": round(seconds / count, 4)}
    if digits:
        from .digit_quality import digit_report

        if module.is_layout_model:
            raise UserError("digits scores samples of an MNIST toy; for a layout model use layout")
        count, classes = n or 100, module.label_classes
        samples, seconds = timed_samples(module, count, sampler, steps, seed, batch_size, guidance=guidance)
        opts = module.sampling_options(sampler=sampler, steps=steps, guidance=guidance)
        result["digits"] = {"sampler": opts["sampler"], "steps": opts.get("steps"), **({"guidance": opts["guidance"]} if classes else {}), "n": count,
                            **digit_report(samples, torch.arange(count) % classes if classes else None),
                            "seconds_per_image": round(seconds / count, 4)}
    if layout:
        from .layout_mnist import evaluate_layout_mnist

        if not module.is_layout_model:
            raise UserError("scoring layouts (--layout) needs a layout model (a UNet with a layout adaptor); this checkpoint has none")
        result["layout"] = evaluate_layout_mnist(module, n or 500, sampler, steps, guidance, data_root, seed, batch_size=min(batch_size, 100))
    return result
