"""Evaluate a Layout-MNIST layout model: layout accuracy, digit-FID (with the real-vs-real floor),
diversity, and the wall time of a 16-image grid. Prints JSON.

    python benchmarks/eval_layout_mnist.py --ckpt layoutdiffuse/weights/layout_mnist.safetensors \\
        --n 500 --sampler dpm++ --steps 25 --guidance 2

* layout accuracy: every box of a generated canvas is cropped (margin 0.1, square) and read by the
  Layout-MNIST crop judge (``layoutdiffuse.evaluation.crop_classifier``); its accuracy on the same
  crops of *real* validation canvases is printed as the ceiling;
* digit-FID: generated canvases vs real validation canvases of other indices; the floor is the FID
  between two disjoint sets of real validation canvases of the same size;
* diversity: mean pairwise digit-LPIPS of 8 samples of each of 8 layouts.
"""
import argparse
import json
import time

import torch

from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.evaluation import diversity, digit_fid, layout_accuracy
from layoutdiffuse.evaluation.crop_classifier import CROP, load_crop_classifier
from layoutdiffuse.sampling import load_model


def generate(module, layouts, args, seed, batch=100):
    out = []
    for i in range(0, len(layouts), batch):
        g = torch.Generator().manual_seed(seed + i)
        cond = {"layout": layouts[i : i + batch]}
        out.append(module.sample(len(cond["layout"]), cond=cond, generator=g, sampler=args.sampler, steps=args.steps, guidance=args.guidance))
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default=None, help="default: the shipped model")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--sampler", default="dpm++")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--root", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    module = load_model(args.ckpt)
    size = module.image_shape[-1]
    val = DATASETS.get("layout_mnist")(split="val", root=args.root, image_size=size, length=3 * args.n)
    batch = val.collate([val[i] for i in range(3 * args.n)])
    layouts, real_a, real_b = batch["layout"][: args.n], batch["image"][args.n : 2 * args.n], batch["image"][2 * args.n :]
    judge = load_crop_classifier()

    start = time.perf_counter()
    fake = generate(module, layouts, args, seed=0)
    gen_seconds = time.perf_counter() - start
    acc = layout_accuracy(fake, layouts, judge, **CROP)
    ceiling = layout_accuracy(batch["image"][: args.n], layouts, judge, **CROP)

    div_layouts = layouts[:8].repeat_interleave(8, 0)
    samples = generate(module, div_layouts, args, seed=10_000).reshape(8, 8, *fake.shape[1:])

    grid_layout = layouts[:1].expand(16, -1, -1)
    start = time.perf_counter()
    module.sample(16, cond={"layout": grid_layout}, generator=torch.Generator().manual_seed(1), sampler=args.sampler, steps=args.steps, guidance=args.guidance)
    grid_seconds = time.perf_counter() - start

    print(json.dumps({
        "ckpt": args.ckpt or "shipped", "n": args.n, "sampler": args.sampler, "steps": args.steps, "guidance": args.guidance,
        "layout_accuracy": round(acc.accuracy, 4), "boxes": acc.count,
        "layout_accuracy_real_canvases": round(ceiling.accuracy, 4),
        "per_class_accuracy": [round(float(v), 3) for v in acc.per_class],
        "digit_fid": round(digit_fid(fake, real_a), 3), "digit_fid_real_vs_real": round(digit_fid(real_b, real_a), 3),
        "diversity_lpips": round(diversity(samples), 4),
        "seconds_per_image": round(gen_seconds / args.n, 3),
        "seconds_16_image_grid": round(grid_seconds, 2),
        "threads": torch.get_num_threads(),
    }, indent=1))


if __name__ == "__main__":
    main()
