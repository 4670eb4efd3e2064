"""Evaluate a Layout-MNIST layout model and time a 16-image grid. Prints JSON.

    python benchmarks/eval_layout_mnist.py [--ckpt layoutdiffuse/weights/layout_mnist.safetensors] \\
        [--n 500] [--sampler dpm++] [--steps 25] [--guidance 4]

The scores (layout accuracy and detection AP / AP50 / AP75, each with its real-canvas ceiling, digit-FID with the real-vs-real floor,
diversity) are those of ``python -m layoutdiffuse evaluate --layout`` (protocol in
:mod:`layoutdiffuse.evaluation.layout_mnist`); this script adds the wall time of one 16-image grid
for the first layout, and the thread count. Defaults: the shipped model and its sampling settings.
"""
import argparse
import json
import time

import torch

from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.evaluation.layout_mnist import evaluate_layout_mnist, generate
from layoutdiffuse.sampling import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="default: the shipped model")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--sampler")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--root", default=None, help="data root holding MNIST/raw (default: $LAYOUTDIFFUSE_DATA)")
    args = p.parse_args()
    module = load_model(args.ckpt)
    result = {"ckpt": args.ckpt or "shipped",
              **evaluate_layout_mnist(module, args.n, args.sampler, args.steps, args.guidance, root=args.root)}
    val = DATASETS.get("layout_mnist")(split="val", root=args.root, image_size=module.image_shape[-1], length=1)
    layout = val.collate([val[0]])["layout"].expand(16, -1, -1)
    start = time.perf_counter()
    generate(module, layout, seed=1, batch_size=16, sampler=result["sampler"], steps=result["steps"], guidance=result["guidance"])
    result["seconds_16_image_grid"] = round(time.perf_counter() - start, 2)
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
