"""Editing real Layout-MNIST canvases by their layout with a layout model. Prints JSON (and writes --out).

    python benchmarks/bench_editing.py [--ckpt layoutdiffuse/weights/layout_mnist.safetensors] \\
        [--n 200] [--batch 50] [--sampler dpm++] [--steps 25] [--guidance 4] [--resample 0] [--out FILE]

For each kind of edit, ``n`` validation canvases (a different block of canvases per kind) get one
edit of their first object, and :func:`layoutdiffuse.editing.edit_images` re-generates it:

* ``move``: the same box at the candidate position (of 16 random ones on the pixel grid, at least
  a quarter of the canvas away) that overlaps the other boxes least;
* ``relabel``: the same box, another random class;
* ``remove``: the object is deleted (judged: the vacated pixels, outside the remaining boxes, are
  background: their mean ink in [0, 1], against the mean of the real canvases' background);
* ``add``: a new object of a random class in a new box (longer side 35-60 % of the canvas, as in
  training) placed like a move.

Reported per kind: **layout accuracy of the edited object** (its box cropped and read by the
Layout-MNIST crop judge, as in ``evaluate --layout``), the judge's accuracy on the *other* objects
after the edit, the **mean absolute change of pixels outside the edit region** (every pixel outside
the changed boxes; exact 0 is the design, measured here) and inside it, and the time per edit.
The reference is the judge's accuracy on the same objects of the real canvases (the ceiling).
"""
import argparse
import json
import time
from pathlib import Path

import torch

from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.editing import box_mask, edit_images
from layoutdiffuse.evaluation.crop_classifier import CROP, load_crop_classifier
from layoutdiffuse.evaluation.layout_accuracy import layout_accuracy
from layoutdiffuse.layout import PAD
from layoutdiffuse.sampling import load_model

KINDS = ("move", "relabel", "remove", "add")


def place(boxes: torch.Tensor, others: torch.Tensor, g: torch.Generator, size: int, candidates: int = 16) -> torch.Tensor:
    """New positions for ``boxes (B, 4)`` (sizes kept) on the ``size`` pixel grid: of ``candidates``
    random ones at least a quarter of the canvas from the old corner, the one overlapping
    ``others (B, N, 5)`` (valid rows) least. Returns ``(B, 4)``."""
    B = len(boxes)
    w, h = boxes[:, 2:3], boxes[:, 3:4]
    x = torch.floor(torch.rand(B, candidates, generator=g) * ((1 - w) * size + 1)) / size
    y = torch.floor(torch.rand(B, candidates, generator=g) * ((1 - h) * size + 1)) / size
    far = ((x - boxes[:, :1]) ** 2 + (y - boxes[:, 1:2]) ** 2).sqrt() >= 0.25
    ox0, oy0, ow, oh = (others[:, None, :, k] for k in range(4))  # (B, 1, N)
    ix = (torch.minimum(x[..., None] + w[..., None], ox0 + ow) - torch.maximum(x[..., None], ox0)).clamp(min=0)
    iy = (torch.minimum(y[..., None] + h[..., None], oy0 + oh) - torch.maximum(y[..., None], oy0)).clamp(min=0)
    inter = (ix * iy * (others[:, None, :, 4] >= 0)).sum(-1)  # (B, K)
    score = inter + 10.0 * (~far)  # far candidates first, then the least overlap
    best = score.argmin(1)
    pick = lambda t: t.gather(1, best[:, None])  # noqa: E731
    return torch.cat([pick(x), pick(y), w, h], 1)


def make_edit(kind: str, layouts: torch.Tensor, g: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``layouts (B, N, 5)`` -> ``(new layouts (B, N + 1, 5), judged (B, N + 1) bool: the edited object's row)``."""
    B, N, _ = layouts.shape
    new = torch.cat([layouts, torch.zeros(B, 1, 5)], 1)
    new[:, N, 4] = PAD
    judged = torch.zeros(B, N + 1, dtype=torch.bool)
    first, rest = layouts[:, 0], layouts[:, 1:]
    if kind == "move":
        new[:, 0, :4] = place(first[:, :4], rest, g, size)
        judged[:, 0] = True
    elif kind == "relabel":
        new[:, 0, 4] = (first[:, 4] + torch.randint(1, 10, (B,), generator=g)) % 10
        judged[:, 0] = True
    elif kind == "remove":
        new[:, 0, 4] = PAD
    else:  # add
        side = torch.round((0.35 + 0.25 * torch.rand(B, generator=g)) * size) / size
        aspect = 0.55 + 0.3 * torch.rand(B, generator=g)  # digits are taller than wide
        box = torch.stack([torch.zeros(B), torch.zeros(B), torch.round(side * aspect * size) / size, side], 1)
        new[:, N, :4] = place(box, layouts, g, size)
        new[:, N, 4] = torch.randint(0, 10, (B,), generator=g).float()
        judged[:, N] = True
    return new, judged


def only(layouts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``layouts`` with every row not in ``rows (B, N)`` marked padding."""
    out = layouts.clone()
    out[..., 4] = torch.where(rows, out[..., 4], torch.full_like(out[..., 4], PAD))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="default: the shipped model")
    p.add_argument("--n", type=int, default=200, help="edits of each kind")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--sampler")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--resample", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default=None, help="data root holding MNIST/raw (default: $LAYOUTDIFFUSE_DATA)")
    p.add_argument("--out", help="also write the JSON here (rewritten after each kind)")
    args = p.parse_args()
    module = load_model(args.ckpt)
    size = module.image_shape[-1]
    kinds = args.kinds.split(",")
    val = DATASETS.get("layout_mnist")(split="val", root=args.root, image_size=size, length=args.n * len(kinds))
    judge = load_crop_classifier()
    used = module.sampling_options(sampler=args.sampler, steps=args.steps, guidance=args.guidance)
    result = {"ckpt": args.ckpt or "shipped", "n_per_kind": args.n, "sampler": used["sampler"], "steps": used["steps"],
              "guidance": used["guidance"], "resample": args.resample, "threads": torch.get_num_threads(), "kinds": {}}
    for k, kind in enumerate(kinds):
        g = torch.Generator().manual_seed(args.seed + k)
        batch = val.collate([val[i] for i in range(k * args.n, (k + 1) * args.n)])
        images, layouts = batch["image"], batch["layout"]
        new, judged = make_edit(kind, layouts, g, size)
        start = time.perf_counter()
        outs, regions = [], []
        for i in range(0, args.n, args.batch):
            gen = torch.Generator(device=module.device).manual_seed(args.seed + 1000 * k + i)
            out, region = edit_images(module, images[i : i + args.batch], layouts[i : i + args.batch], new[i : i + args.batch],
                                      sampler=used["sampler"], steps=used["steps"], guidance=used["guidance"], resample=args.resample, generator=gen)
            outs.append(out.cpu())
            regions.append(region.cpu())
        seconds = time.perf_counter() - start
        edited, region = torch.cat(outs), torch.cat(regions)
        valid_new = new[..., 4] >= 0
        others = valid_new & ~judged
        diff = (edited - images).abs()
        row = {
            "edits": args.n,
            "mean_abs_change_outside_region": float(diff[~region.expand_as(diff)].mean()),
            "max_abs_change_outside_region": float(diff[~region.expand_as(diff)].max()),
            "mean_abs_change_inside_region": float(diff[region.expand_as(diff)].mean()),
            "region_fraction_of_canvas": round(float(region.float().mean()), 4),
            "other_objects_accuracy": round(layout_accuracy(edited, only(new, others), judge, **CROP).accuracy, 4),
            "other_objects_accuracy_real": round(layout_accuracy(images, only(new, others), judge, **CROP).accuracy, 4),
            "seconds_per_edit": round(seconds / args.n, 3),
        }
        if kind in ("move", "relabel", "add"):
            row["edited_object_accuracy"] = round(layout_accuracy(edited, only(new, judged), judge, **CROP).accuracy, 4)
        if kind in ("move", "relabel"):  # the same digit on the real canvas, at its old box, for reference
            row["edited_object_accuracy_real_canvas_ceiling"] = round(layout_accuracy(images, only(layouts, judged[:, :-1]), judge, **CROP).accuracy, 4)
        if kind == "remove":
            vacated = region & ~box_mask(only(new, valid_new), size, size)
            ink = (edited + 1) / 2
            background = ~box_mask(layouts, size, size)
            row["vacated_mean_ink"] = round(float(ink[vacated.expand_as(ink)].mean()), 4)
            row["vacated_mean_ink_before"] = round(float(((images + 1) / 2)[vacated.expand_as(ink)].mean()), 4)
            row["real_background_mean_ink"] = round(float(((images + 1) / 2)[background.expand_as(ink)].mean()), 4)
        result["kinds"][kind] = row
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
