"""Validate the Layout-MNIST detection score: real canvases (its ceiling) and synthetic doubled digits. Prints JSON.

    python benchmarks/bench_detector.py [--n 1000] [--per-family 200] [--seed 0] [--out FILE]

* ``real``: the first ``n`` real *validation* canvases (MNIST-test digits, the training layout
  distribution): COCO AP / AP50 / AP75 of :class:`~layoutdiffuse.evaluation.detection.DigitDetector`
  against their layouts, and ``exact50``, the share of canvases detected exactly as laid out (every box
  found with its class at IoU >= 0.5, no other detection scoring >= ``EXACT_MIN_SCORE``);
  ``real_one_label_per_box``: the same with each box reported with its likeliest class only;
* ``real_families``: real digits of random classes pasted into the boxes of each hand-drawn family
  (``benchmarks/bench_hand_drawn.py``), the same measures;
* ``doubles``: the same layouts, each box filled by *two* real digits of its class squeezed side by
  side (each half the box's width) -- what a model that draws "88" for an 8 produces. A canvas is
  **rejected** when it is not detected exactly as laid out; ``rejected`` is that share (goal >= 0.9;
  ``all`` pools every doubled canvas), and AP50 shows what the doubles cost;
* ``overlapped_doubles``: the families' boxes, each holding two digits of its class two thirds of the
  box wide and overlapping by a third (a model's doubles are often drawn a few pixels apart), the same
  measures.

``--seed 0`` draws the sets the detector's settings were chosen on; any other seed draws a held-out
set (other layouts, other digits: the dataset's seed and every generator's seed move by
``10000 * seed``). ``--families`` and ``--skip-val`` measure a part while iterating.
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


def doubled_canvases(val, layouts: torch.Tensor, g: torch.Generator, overlap: bool = False) -> torch.Tensor:
    """Each box of ``layouts (n, N, 5)`` filled by two real digits of its class, side by side (each half the box's
    width) or, with ``overlap``, each two thirds of it, overlapping by a third: ``(n, 1, S, S)`` in [-1, 1]."""
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
            if overlap:
                w = max(1, round(2 * W / 3))
                boxes += [[X, Y, w, H], [X + W - w, Y, w, H]]
            else:
                boxes += [[X, Y, W // 2, H], [X + W // 2, Y, W - W // 2, H]]
        out.append(val.render(np.array(digits), np.array(boxes))[0].mul(2).sub(1))
    return torch.stack(out)[:, None]


def validation_sets(n: int, per_family: int, seed: int = 0, families: list[str] | None = None, root: str | None = None,
                    with_val: bool = True) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """``{"real": {name: (images, layouts)}, "doubles": {...}}``: ``val_layouts`` (``n`` validation canvases) and
    ``per_family`` canvases of each hand-drawn family; ``seed`` 0 is the tuning set, others held out."""
    shift = 10000 * seed
    val = DATASETS.get("layout_mnist")(split="val", root=root, image_size=32, length=max(n, 1), seed=seed)
    sets = {"real": {}, "doubles": {}, "overlapped_doubles": {}}
    if with_val:
        batch = val.collate([val[i] for i in range(n)])
        sets["real"]["val_layouts"] = (batch["image"], batch["layout"])
        sets["doubles"]["val_layouts"] = (doubled_canvases(val, batch["layout"], torch.Generator().manual_seed(7 + shift)), batch["layout"])
    for k, name in enumerate(FAMILIES):
        if families is not None and name not in families:
            continue
        layouts = family_layouts(FAMILIES[name], per_family, torch.Generator().manual_seed(2000 + k + shift))
        sets["real"][name] = (real_canvases(val, layouts, torch.Generator().manual_seed(3000 + k + shift)), layouts)
        sets["doubles"][name] = (doubled_canvases(val, layouts, torch.Generator().manual_seed(4000 + k + shift)), layouts)
        sets["overlapped_doubles"][name] = (doubled_canvases(val, layouts, torch.Generator().manual_seed(5000 + k + shift), overlap=True), layouts)
    return sets


def score(detector: DigitDetector, images: torch.Tensor, layouts: torch.Tensor) -> tuple[dict[str, float], list[dict[str, torch.Tensor]]]:
    """AP / AP50 / AP75 / exact50 of the detector on ``images (n, 1, S, S)`` against ``layouts (n, N, 5)``, and its detections."""
    preds = detector(images)
    targets = layout_targets(layouts, tuple(images.shape[-2:]))
    return {k: round(v, 4) for k, v in {**mean_average_precision(preds, targets), "exact50": exact_fraction(preds, targets)}.items()}, preds


def validate(detector: DigitDetector, sets: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, object]:
    """The benchmark's JSON body for :func:`validation_sets`: real canvases, real families, doubles (with ``rejected``)."""
    result: dict[str, object] = {}
    if "val_layouts" in sets["real"]:
        images, layouts = sets["real"]["val_layouts"]
        start = time.perf_counter()
        result["real"] = {"n": len(images), **score(detector, images, layouts)[0]}
        result["seconds_per_canvas"] = round((time.perf_counter() - start) / len(images), 4)
    for kind in ("doubles", "overlapped_doubles"):
        doubles, exact = {}, []
        for name, (images, layouts) in sets[kind].items():
            s = score(detector, images, layouts)[0]
            doubles[name] = {"n": len(images), **s, "rejected": round(1 - s["exact50"], 4)}
            exact.append((len(images), s["exact50"]))
        total = sum(n for n, _ in exact)
        doubles["all"] = {"n": total, "rejected": round(1 - sum(n * e for n, e in exact) / total, 4)}
        result[kind] = doubles
    result["real_families"] = {name: score(detector, *pair)[0] for name, pair in sets["real"].items() if name != "val_layouts"}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="real validation canvases")
    p.add_argument("--per-family", type=int, default=200, help="canvases per hand-drawn family (real and doubled)")
    p.add_argument("--seed", type=int, default=0, help="0: the tuning set; other seeds: held-out sets")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated hand-drawn families")
    p.add_argument("--skip-val", action="store_true", help="leave out the validation layouts (families only)")
    p.add_argument("--root", default=None)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    families = args.families.split(",")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; choose from: {', '.join(FAMILIES)}")
    detector = DigitDetector()
    sets = validation_sets(args.n, args.per_family, args.seed, families, args.root, with_val=not args.skip_val)
    result = {"detector": detector.describe(), "threads": torch.get_num_threads(), "seed": args.seed,
              "per_family": args.per_family, **validate(detector, sets)}
    if "val_layouts" in sets["real"]:  # the same boxes reported with their likeliest class only
        one = DigitDetector(locator=detector.locator, classifier=detector.classifier, labels_per_box=1)
        result["real_one_label_per_box"] = score(one, *sets["real"]["val_layouts"])[0]
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
