"""Command line: ``python -m layoutdiffuse {train,sample,edit,evaluate} ...``.

User errors (a bad config, a missing file, a bad layout) print one clear line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any
from .errors import UserError

log = logging.getLogger("layoutdiffuse")


def cmd_train(args: argparse.Namespace) -> None:
    from .config import load_config, set_override, validate
    from .experiment import experiment_dir, train

    config = load_config(args.config)
    for assignment in args.set or []:
        config = set_override(config, assignment)
    validate(config)
    log.info("training %s -> %s", config["expt_name"], experiment_dir(config))
    module = train(config, resume=args.resume)
    out = experiment_dir(config)
    log.info("done: checkpoints in %s, sample grids in %s", out / "checkpoints", out / "images")


def cmd_sample(args: argparse.Namespace) -> None:
    import time

    from .sampling import load_model, sample
    from .visualize import save_grid

    module = load_model(args.ckpt)
    start = time.perf_counter()
    images, layouts = sample(args.layout, n=args.n, ckpt=module, sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=args.seed, progress=True)
    seconds = time.perf_counter() - start
    path = save_grid(images, args.out, layouts=layouts, class_names=module.class_names or None)
    log.info("wrote %d samples to %s (%.1f s)", args.n, path, seconds)


def cmd_edit(args: argparse.Namespace) -> None:
    from .editing import edit_file

    paths = edit_file(args.image, args.layout, args.new_layout, args.out, n=args.n, grid=args.grid, ckpt=args.ckpt, sampler=args.sampler,
                      steps=args.steps, guidance=args.guidance, resample=args.resample, seed=args.seed, progress=True)
    log.info("wrote %s", ", ".join(map(str, paths)))


# --- evaluate: bits/dim on MNIST-test and digit-FID of samples (also used by benchmarks/ and notebooks/) ---
def mnist_test_images(image_size: int = 32, n: int | None = None, root: str | None = None, start: int = 0) -> "torch.Tensor":
    """MNIST-test images ``(n, 1, S, S)`` in [-1, 1] on the 256-level grid, preprocessed as for training
    (images ``start .. start + n``; all of them when ``n`` is None). Never downloads."""
    import torch

    from .data.mnist import mnist

    ds = mnist(train=False, root=root, download=False, image_size=image_size)
    stop = len(ds) if n is None else start + n
    if not 0 <= start < stop <= len(ds):
        raise UserError(f"MNIST-test has {len(ds)} images; asked for images {start}..{stop}")
    # the dataset's own transform, on the whole uint8 stack at once (same values as item by item)
    return ds.transform(ds.data[start:stop, None]).as_subclass(torch.Tensor)


def bits_per_dim(module: Any, images: "torch.Tensor", batch_size: int = 128, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """The variational bound ``L_0 + ... + L_T`` of ``images (N, C, H, W)`` (256-level grid) in bits/dim.

    Uses :func:`layoutdiffuse.diffusion.calc_bpd_loop` with the module's sampling (EMA) weights on the
    full training chain. A fixed-variance (DDPM) model is evaluated with its ``fixed_small`` reverse
    variance, the posterior variance beta~_t -- exactly a learned variance whose ``v`` channels are
    -1 (improved DDPM eq. 15), which is how it is fed to the same bound.
    Returns the mean and standard error over images and the bound's decomposition.
    """
    import torch

    from .diffusion import GaussianDiffusion, calc_bpd_loop

    diffusion, model = module.diffusion, module.sampling_model
    model.eval()
    if diffusion.learn_sigma:
        chain, variance = diffusion, "learned"
        model_fn = lambda x, t: model(x, t, None)  # noqa: E731
    else:
        chain, variance = GaussianDiffusion(prediction=diffusion.prediction, learn_sigma=True, betas=diffusion.betas64).to(images.device), "fixed_small"
        model_fn = lambda x, t: (lambda out: torch.cat([out, -torch.ones_like(out)], 1))(model(x, t, None))  # noqa: E731
    g = torch.Generator(device=images.device).manual_seed(seed)
    totals, priors, decoders = [], [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out = calc_bpd_loop(chain, model_fn, images[i : i + batch_size], generator=g, progress=progress)
            totals.append(out["total_bpd"].cpu())
            priors.append(out["prior_bpd"].cpu())
            decoders.append(out["vb"][:, 0].cpu())
    total, prior, decoder = torch.cat(totals).double(), torch.cat(priors).double(), torch.cat(decoders).double()
    n = len(total)
    return {
        "bits_per_dim": round(total.mean().item(), 4),
        "bits_per_dim_stderr": round(total.std().item() / math.sqrt(n), 4) if n > 1 else None,
        "decoder_L0_bpd": round(decoder.mean().item(), 4),
        "prior_LT_bpd": round(prior.mean().item(), 6),
        "variance": variance,
        "num_timesteps": diffusion.num_timesteps,
        "n": n,
    }


def sample_images(module: Any, n: int, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                  batch_size: int = 250) -> tuple["torch.Tensor", float]:
    """``n`` samples ``(n, C, H, W)`` in [-1, 1] drawn in batches from one seeded generator, and the wall
    seconds spent sampling. ``sampler``/``steps`` default to the module's sampling settings."""
    import torch

    opts = {k: v for k, v in dict(sampler=sampler, steps=steps).items() if v is not None}
    g = torch.Generator(device=module.device).manual_seed(seed)
    chunks, start = [], time.perf_counter()
    for i in range(0, n, batch_size):
        chunks.append(module.sample(min(batch_size, n - i), generator=g, **opts).cpu())
    if module.device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(chunks), time.perf_counter() - start


def cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from .experiment import load_checkpoint

    if not (args.nll or args.fid or args.layout):
        raise UserError("nothing to evaluate: pass --nll (bits/dim on MNIST-test), --fid (digit-FID of samples vs MNIST-test) "
                         "and/or --layout (layout accuracy, digit-FID and diversity of a Layout-MNIST layout model)")
    if args.n is not None and args.n < (2 if args.fid or args.layout else 1):
        raise UserError(f"--n must be >= {2 if args.fid or args.layout else 1} (images), got {args.n}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = load_checkpoint(args.ckpt, map_location=device).to(device)
    size = module.image_shape[-1]
    result: dict[str, Any] = {"ckpt": str(args.ckpt), "device": str(device), "seed": args.seed}
    if args.nll:
        n = args.n or 256
        images = mnist_test_images(size, n, args.data_root).to(device)
        start = time.perf_counter()
        result["nll"] = {"data": f"MNIST-test[:{n}] at {size}x{size}", **bits_per_dim(module, images, args.batch_size, args.seed, progress=args.progress),
                         "seconds": round(time.perf_counter() - start, 1)}
    if args.fid:
        from .evaluation import digit_fid, load_digit_classifier

        n = args.n or 1000
        samples, seconds = sample_images(module, n, args.sampler, args.steps, args.seed, args.batch_size)
        reference = mnist_test_images(size, None, args.data_root)
        classifier = load_digit_classifier(device=device)
        result["fid"] = {"sampler": args.sampler or module.sampling_args["sampler"], "steps": args.steps or module.sampling_args.get("steps"),
                         "n": n, "reference": f"MNIST-test ({len(reference)} images) at {size}x{size}",
                         "digit_fid": round(digit_fid(reference, samples, classifier=classifier, device=device), 4),
                         "seconds_per_image": round(seconds / n, 4)}
    if args.layout:
        from .evaluation.layout_mnist import evaluate_layout_mnist

        if getattr(module.model, "adaptor", None) is None:
            raise UserError(f"--layout needs a layout model (a UNet with a layout adaptor); {args.ckpt} has none")
        result["layout"] = evaluate_layout_mnist(module, args.n or 500, args.sampler, args.steps, args.guidance, args.data_root,
                                                 args.seed, batch_size=min(args.batch_size, 100))
    sys.stdout.write(json.dumps(result, indent=1) + "\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m layoutdiffuse", description="Layout-to-image diffusion: train, sample, edit, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an experiment from a JSON config")
    t.add_argument("-c", "--config", required=True, help="JSON config, e.g. configs/mnist.json")
    t.add_argument("--resume", help="checkpoint to resume from, or 'last' for <expt_dir>/<expt_name>/checkpoints/last.ckpt")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. --set trainer_args.max_steps=200 (repeatable)")
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("sample", help="sample a grid for a layout (default model: the shipped Layout-MNIST LayoutDiffuse)")
    s.add_argument("--ckpt", help="checkpoint (.ckpt) or weights export (.safetensors); default: the shipped Layout-MNIST model")
    s.add_argument("--layout", help='layout JSON file: [{"label": "7", "box": [x, y, w, h]}, ...] (normalised); omit for the empty layout')
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--sampler", help="ancestral | ddim | plms | dpm++ | dpm++sde")
    s.add_argument("--steps", type=int)
    s.add_argument("--guidance", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png", help="PNG grid, each sample with its layout drawn over it")
    s.set_defaults(func=cmd_sample)
    d = sub.add_parser("edit", help="edit an image by its layout: re-generate only the objects that changed (masked sampling)")
    d.add_argument("--image", required=True, help="the image to edit (PNG), of the model's size")
    d.add_argument("--layout", required=True, help="its layout file (JSON, as for sample --layout)")
    d.add_argument("--new-layout", required=True, help="the edited layout file: objects moved, resized, re-labelled, added or removed")
    d.add_argument("--ckpt", help="checkpoint or weights export; default: the shipped Layout-MNIST model")
    d.add_argument("--n", type=int, default=1, help="number of edited versions (n > 1 writes OUT_000.png, ...)")
    d.add_argument("--sampler", help="ancestral | ddim | plms | dpm++ | dpm++sde")
    d.add_argument("--steps", type=int)
    d.add_argument("--guidance", type=float)
    d.add_argument("--resample", type=int, default=0, help="extra RePaint passes per step (0 = none)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="edited.png", help="the edited image (PNG, the model's size)")
    d.add_argument("--grid", help="also write a picture of the original and the edits with their layouts drawn")
    d.set_defaults(func=cmd_edit)
    e = sub.add_parser("evaluate", help="bits/dim on MNIST-test (--nll), digit-FID of samples vs MNIST-test (--fid), "
                       "Layout-MNIST layout accuracy / digit-FID / diversity (--layout); prints JSON")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--nll", action="store_true", help="bits/dim (the variational bound) of the first --n MNIST-test images")
    e.add_argument("--fid", action="store_true", help="digit-FID of --n samples against all of MNIST-test")
    e.add_argument("--layout", action="store_true", help="layout accuracy (box crops read by the crop judge), digit-FID vs real "
                   "canvases and diversity of --n Layout-MNIST validation layouts (layout models)")
    e.add_argument("--n", type=int, help="images: default 256 for --nll, 1000 for --fid, 500 layouts for --layout")
    e.add_argument("--sampler", help="for --fid/--layout: ancestral | ddim | plms | dpm++ | dpm++sde (default: the checkpoint's)")
    e.add_argument("--steps", type=int, help="for --fid/--layout: sampling steps (default: the checkpoint's)")
    e.add_argument("--guidance", type=float, help="for --layout: classifier-free guidance scale (default: the checkpoint's)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=250)
    e.add_argument("--data-root", help="data root holding MNIST/raw (default: $LAYOUTDIFFUSE_DATA, else ~/data)")
    e.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    e.add_argument("--progress", action="store_true", help="show a progress bar for --nll")
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    try:
        from .malloc import retain_freed_memory

        retain_freed_memory()  # CPU steps reuse freed memory instead of faulting in fresh pages
        args.func(args)
    except UserError as err:  # anything else is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
