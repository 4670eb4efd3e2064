"""Layouts as people draw them: layout accuracy and detection AP of a Layout-MNIST model per layout family. Prints JSON.

    python benchmarks/bench_hand_drawn.py [--ckpt layoutdiffuse/weights/layout_mnist.safetensors] \\
        [--n 32] [--sampler dpm++] [--steps 25] [--guidance 4] [--out FILE] [--grids DIR]

Each family is a fixed set of boxes ``[x, y, w, h]`` (fractions of the canvas) drawn the way a user
of the widget would, unlike the training canvases (1-3 digits, longer side 35-60 % of the canvas):

* ``single_large``: one digit filling most of the canvas;
* ``side_by_side``: two tall digits next to each other;
* ``row_of_3``, ``row_of_4``: digits in a row;
* ``grid_2x2``: a digit in each quadrant;
* ``small``: two small digits (a quarter of the canvas high);
* ``overlapping``: two digits whose boxes overlap by a third;
* ``training_like``: two digits of the training scale, apart (the in-distribution reference).

``n`` samples per family, every sample with its own random classes (seeded by the family, so
``--families small`` draws what the full run draws); the boxes are read by the
Layout-MNIST crop judge (as ``evaluate --layout``). Two ceilings of the metric are reported: the
judge's accuracy on real validation canvases (``real_canvas_ceiling``, the training distribution),
and per family ``real_ceiling``: the judge on real validation digits of the same classes pasted
into the family's own boxes by the dataset's renderer (``LayoutMNIST.render``) -- what a perfect
model could score on that family (a 6x8-pixel "small" digit is hard to read even when real).
``of_ceiling`` is the family's accuracy over its own ``real_ceiling``.

``detection``: the detection score of the samples (:mod:`layoutdiffuse.evaluation.detection`: COCO
AP / AP50 / AP75 of the digit detector's boxes against the family's layout, and ``exact50``, the
share of samples detected exactly as laid out), which a doubled digit ("88" in an 8's box) cannot
fool; ``detection_real`` is the same on the family's real canvases, ``ap50_of_ceiling`` and
``exact50_of_ceiling`` the samples' figures over it. AP ranks detections across images, so extra
detections scoring below the true ones cost it little; exact50 counts every confident one.
``--grids DIR`` writes each family's samples with the confident detections drawn.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.evaluation.crop_classifier import CROP, load_crop_classifier
from layoutdiffuse.evaluation.detection import (EXACT_MIN_SCORE, DigitDetector, detections_as_layout, exact_fraction, layout_targets,
                                                 mean_average_precision)
from layoutdiffuse.evaluation.layout_accuracy import layout_accuracy
from layoutdiffuse.evaluation.layout_mnist import generate
from layoutdiffuse.sampling import load_model
from layoutdiffuse.visualize import save_grid

FAMILIES = {
    "single_large": [[0.06, 0.04, 0.88, 0.92]],
    "side_by_side": [[0.05, 0.15, 0.42, 0.7], [0.53, 0.15, 0.42, 0.7]],
    "row_of_3": [[0.02, 0.28, 0.3, 0.44], [0.35, 0.28, 0.3, 0.44], [0.68, 0.28, 0.3, 0.44]],
    "row_of_4": [[0.01, 0.32, 0.23, 0.36], [0.26, 0.32, 0.23, 0.36], [0.51, 0.32, 0.23, 0.36], [0.76, 0.32, 0.23, 0.36]],
    "grid_2x2": [[0.04, 0.04, 0.42, 0.42], [0.54, 0.04, 0.42, 0.42], [0.04, 0.54, 0.42, 0.42], [0.54, 0.54, 0.42, 0.42]],
    "small": [[0.15, 0.2, 0.18, 0.25], [0.6, 0.55, 0.18, 0.25]],
    "overlapping": [[0.1, 0.15, 0.45, 0.65], [0.4, 0.2, 0.45, 0.65]],
    "training_like": [[0.08, 0.1, 0.3, 0.45], [0.55, 0.45, 0.3, 0.45]],
}


def family_layouts(boxes: list[list[float]], n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` layouts ``(n, N, 5)`` of the family's boxes with random classes."""
    rows = torch.tensor(boxes).expand(n, -1, -1)
    classes = torch.randint(0, 10, (n, len(boxes), 1), generator=g).float()
    return torch.cat([rows, classes], -1)


def real_canvases(val, layouts: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Real digits of each layout's classes, pasted into its boxes by the dataset's renderer: ``(n, 1, S, S)`` in [-1, 1]."""
    size = val.canvas_size
    by_class = [torch.nonzero(val.labels == c).flatten() for c in range(10)]
    canvases = []
    for layout in layouts:  # a benchmark's reference images, not a hot path
        digits = np.array([int(by_class[c][torch.randint(len(by_class[c]), (), generator=g)]) for c in layout[:, 4].long().tolist()])
        boxes = np.rint(layout[:, :4].double().numpy() * size).astype(np.int64)
        canvases.append(val.render(digits, boxes)[0].mul(2).sub(1))
    return torch.stack(canvases)[:, None]


def detection(found: list, layouts: torch.Tensor, size: int) -> dict[str, float]:
    """Detection AP / AP50 / AP75 and exact50 of detections ``found`` against ``layouts (n, N, 5)``."""
    targets = layout_targets(layouts, (size, size))
    return {k: round(v, 4) for k, v in {**mean_average_precision(found, targets), "exact50": exact_fraction(found, targets)}.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="default: the shipped model")
    p.add_argument("--n", type=int, default=32, help="samples per family")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--sampler")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ceiling-canvases", type=int, default=500, help="real validation canvases for the judge's ceiling")
    p.add_argument("--root", default=None)
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--grids", help="folder for one PNG per family: its samples with the detected digits drawn")
    args = p.parse_args()
    names = args.families.split(",")
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; choose from: {', '.join(FAMILIES)}")
    module = load_model(args.ckpt)
    judge = load_crop_classifier()
    detector = DigitDetector()
    used = {**module.sampling_args, **{k: v for k, v in dict(sampler=args.sampler, steps=args.steps, guidance=args.guidance).items() if v is not None}}
    opts = {k: used[k] for k in ("sampler", "steps", "guidance")}
    size = module.image_shape[-1]
    val = DATASETS.get("layout_mnist")(split="val", root=args.root, image_size=size, length=args.ceiling_canvases)
    real = val.collate([val[i] for i in range(args.ceiling_canvases)])
    ceiling = layout_accuracy(real["image"], real["layout"], judge, **CROP).accuracy
    result = {"ckpt": args.ckpt or "shipped", **opts, "n_per_family": args.n, "threads": torch.get_num_threads(),
              "real_canvas_ceiling": round(ceiling, 4), "families": {}}
    for name in names:
        k = list(FAMILIES).index(name)  # the family's seeds do not depend on which families run
        layouts = family_layouts(FAMILIES[name], args.n, torch.Generator().manual_seed(args.seed + k))
        start = time.perf_counter()
        images = generate(module, layouts, seed=args.seed + 100 * k, batch_size=args.n, **opts)
        acc = layout_accuracy(images, layouts, judge, **CROP)
        seconds = time.perf_counter() - start
        real = real_canvases(val, layouts, torch.Generator().manual_seed(args.seed + 1000 + k))
        real_acc = layout_accuracy(real, layouts, judge, **CROP).accuracy
        found = detector(images)
        det, det_real = detection(found, layouts, size), detection(detector(real), layouts, size)
        result["families"][name] = {"boxes": acc.count, "layout_accuracy": round(acc.accuracy, 4), "real_ceiling": round(real_acc, 4),
                                    "of_ceiling": round(acc.accuracy / real_acc, 4), "detection": det, "detection_real": det_real,
                                    "ap50_of_ceiling": round(det["ap50"] / det_real["ap50"], 4),
                                    "exact50_of_ceiling": round(det["exact50"] / det_real["exact50"], 4), "seconds": round(seconds, 1)}
        if args.grids:  # the detections that count in exact50
            confident = [{k: v[d["scores"] >= EXACT_MIN_SCORE] for k, v in d.items()} for d in found]
            save_grid(images, Path(args.grids) / f"{name}.png", detections_as_layout(confident, (size, size)), nrow=8)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
