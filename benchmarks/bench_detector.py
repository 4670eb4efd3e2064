"""Validate the Layout-MNIST detection score: real canvases (its ceiling) and synthetic doubled digits. Prints JSON.

    python benchmarks/bench_detector.py [--n 1000] [--per-family 200] [--out FILE]

* ``real``: the first ``n`` real *validation* canvases (MNIST-test digits, the training layout
  distribution): COCO AP / AP50 / AP75 of :class:`~layoutdiffuse.evaluation.detection.DigitDetector`
  against their layouts, and ``exact50``, the share of canvases detected exactly as laid out (every box
  found with its class at IoU >= 0.5, no other detection scoring >= ``EXACT_MIN_SCORE``, 0.3);
* ``real_families``: real digits of random classes pasted into the boxes of each hand-drawn family
  (``benchmarks/bench_hand_drawn.py``), the same measures;
* ``doubles``: the same layouts, each box filled by *two* real digits of its class squeezed side by
  side (each half the box's width) -- what a model that draws "88" for an 8 produces. A canvas is
  **rejected** when it is not detected exactly as laid out; ``rejected`` is that share (goal >= 0.9),
  and AP50 shows what the doubles cost.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_hand_drawn import FAMILIES, family_layouts, real_canvases  # noqa: E402

from layoutdiffuse.data.registry import DATASETS  # noqa: E402
from layoutdiffuse.evaluation.detection import DigitDetector, exact_fraction, layout_targets, mean_average_precision  # noqa: E402


def doubled_canvases(val, layouts: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each box of ``layouts (n, N, 5)`` filled by two real digits of its class, side by side: ``(n, 1, S, S)`` in [-1, 1]."""
    size = val.canvas_size
    by_class = [torch.nonzero(val.labels == c).flatten() for c in range(10)]
    out = []
    for layout in layouts:
        digits, boxes = [], []
        for x, y, w, h, c in layout.tolist():
            if c < 0:
                continue
            X, Y, W, H = (int(round(v * size)) for v in (x, y, w, h))
            for _ in range(2):
                digits.append(int(by_class[int(c)][torch.randint(len(by_class[int(c)]), (), generator=g)]))
            boxes += [[X, Y, W // 2, H], [X + W // 2, Y, W - W // 2, H]]
        out.append(val.render(np.array(digits), np.array(boxes))[0].mul(2).sub(1))
    return torch.stack(out)[:, None]


def score(detector: DigitDetector, images: torch.Tensor, layouts: torch.Tensor) -> dict[str, float]:
    preds = detector(images)
    targets = layout_targets(layouts, tuple(images.shape[-2:]))
    return {k: round(v, 4) for k, v in {**mean_average_precision(preds, targets), "exact50": exact_fraction(preds, targets)}.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="real validation canvases")
    p.add_argument("--per-family", type=int, default=200, help="canvases per hand-drawn family (real and doubled)")
    p.add_argument("--root", default=None)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    detector = DigitDetector()
    val = DATASETS.get("layout_mnist")(split="val", root=args.root, image_size=32, length=args.n)
    batch = val.collate([val[i] for i in range(args.n)])
    start = time.perf_counter()
    result = {"detector": detector.describe(), "threads": torch.get_num_threads(), "real": {"n": args.n, **score(detector, batch["image"], batch["layout"])}}
    result["seconds_per_canvas"] = round((time.perf_counter() - start) / args.n, 4)
    doubles = doubled_canvases(val, batch["layout"], torch.Generator().manual_seed(7))
    s = score(detector, doubles, batch["layout"])
    result["doubles"] = {"val_layouts": {"n": args.n, **s, "rejected": round(1 - s["exact50"], 4)}}
    result["real_families"] = {}
    for k, (name, boxes) in enumerate(FAMILIES.items()):
        layouts = family_layouts(boxes, args.per_family, torch.Generator().manual_seed(2000 + k))
        result["real_families"][name] = score(detector, real_canvases(val, layouts, torch.Generator().manual_seed(3000 + k)), layouts)
        s = score(detector, doubled_canvases(val, layouts, torch.Generator().manual_seed(4000 + k)), layouts)
        result["doubles"][name] = {**s, "rejected": round(1 - s["exact50"], 4)}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
