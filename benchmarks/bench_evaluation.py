"""Evaluation kernels side by side with their obvious alternatives, in one process, same inputs.

    python benchmarks/bench_evaluation.py [--repeats 5] [--threads 2] [--dims 128,512]

Prints JSON (CPU):

* ``crop``: :func:`crop_boxes` (one ``roi_align`` over all boxes) vs a per-box Python loop of
  slice + ``F.interpolate(bilinear, antialias=True)`` -- the way one would write it by hand --
  for B=64 canvases of 128x128 with 8 boxes each (sizes 0.1-0.5 of the side). Reports the
  median times and their ratio (the two are not the same resampling rule -- the loop snaps boxes
  to whole pixels -- so only the time is compared; equality with a naive loop of the *same* rule
  is tested in tests/test_evaluation.py).
* ``frechet``: :func:`frechet_distance` (eigh of ``S1^(1/2) S2 S1^(1/2)``) vs ``scipy.linalg.sqrtm``
  of ``S1 S2`` and vs torchmetrics' ``eigvals(S1 S2)``, for D=128 (digit-FID) and D=512 by
  default (``--dims 128,2048`` for Inception size: minutes on 2 cores), with the relative
  difference of the values.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layoutdiffuse.layout import validity  # noqa: E402
from layoutdiffuse.evaluation import crop_boxes, frechet_distance  # noqa: E402


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def loop_crops(images, layout, size=28):
    h, w = images.shape[-2:]
    out = []
    for b, n in zip(*validity(layout).nonzero(as_tuple=True)):
        x, y, bw, bh = layout[b, n, :4].tolist()
        x0, y0 = int(x * w), int(y * h)
        x1, y1 = max(x0 + 1, round((x + bw) * w)), max(y0 + 1, round((y + bh) * h))
        out.append(F.interpolate(images[b : b + 1, :, y0:y1, x0:x1], size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out)


def bench_crop(repeats):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 128, 128, generator=g) * 2 - 1
    wh = torch.rand(64, 8, 2, generator=g) * 0.4 + 0.1
    xy = torch.rand(64, 8, 2, generator=g) * (1 - wh)
    layout = torch.cat([xy, wh, torch.randint(0, 10, (64, 8, 1), generator=g).float()], dim=-1)
    t_fast, (fast, _, _) = timed(lambda: crop_boxes(images, layout), repeats)
    t_loop, slow = timed(lambda: loop_crops(images, layout), repeats)
    assert fast.shape == slow.shape
    return {"boxes": int(fast.shape[0]), "roi_align_s": t_fast, "loop_s": t_loop, "loop_over_roi_align": t_loop / t_fast}


def bench_frechet(repeats, dims):
    import numpy as np
    from scipy import linalg
    from torchmetrics.image.fid import _compute_fid

    rows = []
    for d in dims:
        g = torch.Generator().manual_seed(d)
        f1 = torch.randn(2 * d, d, generator=g, dtype=torch.float64)
        f2 = torch.randn(2 * d, d, generator=g, dtype=torch.float64) * 1.1 + 0.1
        mu1, mu2, s1, s2 = f1.mean(0), f2.mean(0), torch.cov(f1.T), torch.cov(f2.T)
        t_ours, ours = timed(lambda: frechet_distance(mu1, s1, mu2, s2), repeats)

        def scipy_fid():
            covmean = linalg.sqrtm(s1.numpy() @ s2.numpy())
            return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * np.trace(covmean).real)

        t_scipy, ref = timed(scipy_fid, repeats)
        t_tm, tm = timed(lambda: float(_compute_fid(mu1, s1, mu2, s2)), repeats)
        rows.append({"dim": d, "ours_s": t_ours, "scipy_sqrtm_s": t_scipy, "torchmetrics_s": t_tm,
                     "scipy_over_ours": t_scipy / t_ours, "torchmetrics_over_ours": t_tm / t_ours,
                     "rel_diff_vs_scipy": abs(ours - ref) / abs(ref), "rel_diff_vs_torchmetrics": abs(ours - tm) / abs(tm)})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dims", default="128,512", help="feature dimensions for the Fréchet distance, comma-separated")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "torch": torch.__version__, "crop": bench_crop(args.repeats), "frechet": bench_frechet(args.repeats, [int(d) for d in args.dims.split(",")])}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
