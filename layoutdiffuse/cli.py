"""Command line: ``python -m layoutdiffuse {train,sample,edit,evaluate,convert-release} ...``.

User errors (a bad config, a missing file, a bad layout) print one clear line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

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
    train(config, resume=args.resume)
    out = experiment_dir(config)
    log.info("done: checkpoints in %s, sample grids in %s", out / "checkpoints", out / "images")


#: samples in one grid image (a larger grid would be a multi-gigabyte picture)
MAX_GRID = 1024


def check_output(path: str) -> None:
    """Fail before sampling when ``path`` cannot be written (read-only file system, a file in the way)."""
    import os

    folder = Path(path).resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if Path(path).is_dir():
        raise UserError(f"--out {path} is a folder; give a file name such as {Path(path) / 'samples.png'}")
    if not existing.is_dir():
        raise UserError(f"--out {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {path}: cannot write in {existing} (read-only file system or no permission)")


def cmd_sample(args: argparse.Namespace) -> None:
    import time

    from .diffusion.guidance import check_guidance
    from .sampling import load_model, sample
    from .visualize import grid_columns, save_grid

    if not 1 <= args.n <= MAX_GRID:
        raise UserError(f"--n must be in [1, {MAX_GRID}] (samples in one grid image), got {args.n}; "
                        "for more samples call layoutdiffuse.sample, which draws them in batches")
    if args.guidance is not None:
        check_guidance(args.guidance)
    check_output(args.out)
    module = load_model(args.ckpt)
    start = time.perf_counter()
    images, layouts = sample(args.layout, n=args.n, ckpt=module, sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=args.seed, progress=True,
                              prompt=args.prompt, negative_prompt=args.negative_prompt)
    seconds = time.perf_counter() - start
    path = save_grid(images, args.out, layouts=layouts, class_names=module.class_names or None, nrow=grid_columns(module))
    log.info("wrote %d samples to %s (%.1f s)", args.n, path, seconds)


def cmd_edit(args: argparse.Namespace) -> None:
    from .editing import edit_file

    paths = edit_file(args.image, args.layout, args.new_layout, args.out, n=args.n, grid=args.grid, ckpt=args.ckpt, sampler=args.sampler,
                      steps=args.steps, guidance=args.guidance, resample=args.resample, seed=args.seed, progress=True)
    log.info("wrote %s", ", ".join(map(str, paths)))


def cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from .evaluation.report import evaluate_checkpoint
    from .experiment import load_checkpoint

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not (args.nll or args.fid or args.layout or args.digits):  # before loading anything
        raise UserError("nothing to evaluate: pass --nll (bits/dim on MNIST-test), --fid (digit-FID of samples vs MNIST-test), "
                        "--digits (share of samples read as digits) and/or --layout (layout accuracy, digit-FID and diversity "
                        "of a Layout-MNIST layout model)")
    module = load_checkpoint(args.ckpt, map_location=device).to(device)
    result = evaluate_checkpoint(module, nll=args.nll, fid=args.fid, layout=args.layout, digits=args.digits, n=args.n, sampler=args.sampler,
                                 steps=args.steps, guidance=args.guidance, seed=args.seed, batch_size=args.batch_size,
                                 data_root=args.data_root, progress=args.progress)
    sys.stdout.write(json.dumps({"ckpt": str(args.ckpt), **result}, indent=1) + "\n")


def cmd_convert_release(args: argparse.Namespace) -> None:
    from .release.export import convert_release

    path = convert_release(args.ckpt, args.release_config, args.out, foundation=args.foundation, class_names=args.class_names,
                           guidance=args.guidance)
    log.info("wrote %s; sample it with: python -m layoutdiffuse sample --ckpt %s --layout LAYOUT.json", path, path)


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
    s.add_argument("--prompt", help="caption (models with a text encoder, e.g. converted Stable Diffusion release checkpoints)")
    s.add_argument("--negative-prompt", help="text of the unconditional branch of guidance (default: the empty caption)")
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
    e = sub.add_parser("evaluate", help="bits/dim on MNIST-test (--nll), digit-FID of samples vs MNIST-test (--fid), digit quality (--digits), "
                       "Layout-MNIST layout accuracy / digit-FID / diversity (--layout); prints JSON")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--nll", action="store_true", help="bits/dim (the variational bound) of the first --n MNIST-test images")
    e.add_argument("--fid", action="store_true", help="digit-FID of --n samples against all of MNIST-test")
    e.add_argument("--layout", action="store_true", help="layout accuracy (box crops read by the crop judge), digit-FID vs real "
                   "canvases and diversity of --n Layout-MNIST validation layouts (layout models)")
    e.add_argument("--digits", action="store_true", help="share of --n samples read as digits by the digit classifier (confident, "
                   "and in-distribution), and the label accuracy of class-conditional toys; --n 100 scores make demo's grid")
    e.add_argument("--n", type=int, help="images: default 256 for --nll, 1000 for --fid, 100 for --digits, 500 layouts for --layout")
    e.add_argument("--sampler", help="for --fid/--digits/--layout: ancestral | ddim | plms | dpm++ | dpm++sde (default: the checkpoint's)")
    e.add_argument("--steps", type=int, help="for --fid/--digits/--layout: sampling steps (default: the checkpoint's)")
    e.add_argument("--guidance", type=float, help="for --layout and class-conditional --fid/--digits: classifier-free guidance scale (default: the checkpoint's)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=250)
    e.add_argument("--data-root", help="data root holding MNIST/raw (default: $LAYOUTDIFFUSE_DATA, else ~/data)")
    e.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    e.add_argument("--progress", action="store_true", help="show a progress bar for --nll")
    e.set_defaults(func=cmd_evaluate)
    r = sub.add_parser("convert-release", help="convert a checkpoint of the original LayoutDiffuse release (read without running code "
                       "from it) to a .safetensors file this project loads")
    r.add_argument("ckpt", help="the release's .ckpt (Lightning checkpoint with denoise_fn.* UNet keys)")
    r.add_argument("--release-config", required=True, help="the release's config JSON (or its denoising_model / diffusion parts), "
                   "or a published model's name: cocostuff_SD1_5, cocostuff_SD2_1, cocostuff, vg, celeb_mask")
    r.add_argument("--out", required=True, help="output .safetensors (weights in float32, config inside)")
    r.add_argument("--foundation", help="the foundation's folder (Stable Diffusion diffusers folder, CelebA-HQ LDM); "
                   "without it only the UNet is converted")
    r.add_argument("--class-names", help="layout class names: 'coco-stuff' (the release's COCO id - 1 table) or a JSON list file")
    r.add_argument("--guidance", type=float, help="default guidance scale stored with the model (default: 5 for boxes, 1 for masks)")
    r.set_defaults(func=cmd_convert_release)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:  # anything else is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
