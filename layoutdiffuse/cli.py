"""Command line: ``layoutdiffuse {train,sample,edit,evaluate,convert-release} ...`` (or ``python -m layoutdiffuse``).

User errors (a bad config, a missing file, a bad layout) print one clear line and exit 2.

Each command first checks its arguments and the files it names (``check_*``: no torch, no
Lightning, a fraction of a second), then imports only what it needs and runs (``cmd_*``). The
arguments of each command are declared by their own ``add_*_args`` function.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import MissingFileError, UserError
from .shipped import checkpoint_path

log = logging.getLogger("layoutdiffuse")

PROG = "layoutdiffuse"
#: samples in one grid image (a larger grid would be a multi-gigabyte picture)
MAX_GRID = 1024


# --- checks that need no heavy import ------------------------------------------------------------------

def require_file(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """``path`` must be an existing regular file (not a folder, FIFO or device); one line otherwise."""
    from .files import check_readable

    try:
        return check_readable(path, what)
    except MissingFileError as err:
        raise MissingFileError(f"{err}{hint}") from None


def check_output(path: str, flag: str = "--out", image: bool = True) -> None:
    """Fail before sampling when ``path`` cannot be written (read-only file system, a file in the way,
    a FIFO or device node, an unknown image suffix)."""
    from .files import check_output_path

    check_output_path(path, flag, image=image)


def check_folder(path: str, flag: str) -> None:
    """``path`` is a folder to write into (made if missing): not a file, and writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder (made if missing)")
    check_output(str(p / "x"), flag, image=False)


def sampler_names() -> list[str]:
    """The registered samplers (imports the diffusion package, so torch)."""
    from .diffusion import SAMPLERS

    return SAMPLERS.names()


def check_sampling_args(args: argparse.Namespace) -> None:
    """``--seed``, ``--steps`` and ``--ckpt`` of a command that samples (no heavy import)."""
    from .schema import check_sampling_options  # the one set of checks of sample's and edit's numbers (no torch)

    check_sampling_options(seed=args.seed, steps=args.steps)
    if args.ckpt is not None:
        require_file(checkpoint_path(args.ckpt), "checkpoint")


def check_sampling_options(args: argparse.Namespace) -> None:
    """``--sampler`` and ``--guidance`` against the registry and the guidance rules (imports torch: run after the file checks)."""
    if args.sampler is not None:
        from .diffusion import SAMPLERS

        SAMPLERS.get(args.sampler)  # "unknown sampler 'x'; choose one of: ..."
    if args.guidance is not None:
        from .diffusion.guidance import check_guidance

        check_guidance(args.guidance)


# --- train -------------------------------------------------------------------------------------------------

def add_train_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("-c", "--config", required=True, help="JSON config, e.g. configs/mnist.json")
    t.add_argument("--resume", help="checkpoint to resume from, or 'last' for <expt_dir>/<expt_name>/checkpoints/last.ckpt")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. --set trainer_args.max_steps=200 (repeatable)")
    t.add_argument("--overwrite", action="store_true", help="start over in an experiment folder that holds an earlier run's checkpoints "
                   "(they are removed)")


def cmd_train(args: argparse.Namespace) -> None:
    from .config import load_config, set_override, validate

    config = load_config(args.config)
    for assignment in args.set or []:
        config = set_override(config, assignment)
    validate(config)
    if args.resume and args.resume != "last":
        require_file(args.resume, "--resume checkpoint")
    from .experiment import experiment_dir, train

    log.info("training %s -> %s", config["expt_name"], experiment_dir(config))
    train(config, resume=args.resume, overwrite=args.overwrite)
    out = experiment_dir(config)
    log.info("done: checkpoints in %s, sample grids in %s", out / "checkpoints", out / "images")


# --- sample ------------------------------------------------------------------------------------------------

def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one) | cpu | cuda | cuda:N | mps (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto (half precision for latent models on CUDA, else float32) | float32 | float16 | "
                   "bfloat16 (default: auto)")


def add_sampling_args(p: argparse.ArgumentParser, for_what: str = "") -> None:
    """``--sampler``, ``--steps``, ``--guidance``, ``--seed``: shared by every command that samples."""
    p.add_argument("--sampler", help=f"{for_what}sampler: {{samplers}} (default: the model's own, stored in the checkpoint)")
    p.add_argument("--steps", type=int, help=f"{for_what}sampling steps (default: the model's own, stored in the checkpoint)")
    p.add_argument("--guidance", type=float, help=f"{for_what}classifier-free guidance scale: 1 = none, larger follows the condition "
                   "more closely (default: the model's own, stored in the checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed and options give the same images (default: 0)")


def add_sample_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--ckpt", help="checkpoint (.ckpt), weights export (.safetensors) or a shipped model's name: layout-mnist (the "
                   "default), layout-mnist-color (a phrase per box)")
    s.add_argument("--layout", help='layout JSON file: [{"label": "7", "box": [x, y, w, h]}, ...] (normalised; for a phrase model '
                   '{"text": "a red seven", "box": [...]}); omit for the empty layout')
    s.add_argument("--mask", help="mask layout for mask models (e.g. converted celeb_mask): a PNG of part ids, one 8-bit channel, "
                   "value = part class (0-18 for CelebAMask-HQ), 255 = no condition; omit for the empty mask")
    s.add_argument("--n", type=int, default=16, help=f"number of samples, 1 to {MAX_GRID} (default: 16)")
    add_sampling_args(s)
    s.add_argument("--prompt", help="caption (models with a text encoder, e.g. converted Stable Diffusion release checkpoints)")
    s.add_argument("--negative-prompt", help="text of the unconditional branch of guidance (default: the empty caption)")
    s.add_argument("--out", default="samples.png", help="PNG grid, each sample with its layout drawn over it (default: samples.png)")
    s.add_argument("--save-images", metavar="DIR", help="also write each sample as it is, at the model's size, to DIR/sample_000.png, ... "
                   "with its layout file DIR/sample_000.json beside it (the input of `edit`)")
    s.add_argument("--batch-size", type=int, default=64, help="images per model call; lower it on an out-of-memory (default: 64)")
    add_device_options(s)


def check_sample(args: argparse.Namespace) -> None:
    if not 1 <= args.n <= MAX_GRID:
        raise UserError(f"--n must be in [1, {MAX_GRID}] (samples in one grid image), got {args.n}; "
                        "for more samples call layoutdiffuse.sample, which draws them in batches")
    check_sampling_args(args)
    if args.layout is not None and args.mask is not None:
        raise UserError("give --layout (box layouts) or --mask (mask layouts), not both: a model reads one kind")
    if args.layout is not None:
        require_file(args.layout, "layout file")
    if args.mask is not None:
        require_file(args.mask, "mask file")
    check_output(args.out)
    if args.save_images is not None:
        check_folder(args.save_images, "--save-images")


def cmd_sample(args: argparse.Namespace) -> None:
    import time

    check_sampling_options(args)
    from .sampling import layout_and_names, load_model, sample  # no Lightning: the model loads only to sample

    module = load_model(args.ckpt, args.device, args.dtype)
    names = module.class_names or None
    if module.is_phrase_model:  # the layouts sampled index the layout file's phrases
        names = layout_and_names(module, args.layout)[1]
    start = time.perf_counter()
    images, layouts = sample(args.layout, n=args.n, ckpt=module, sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=args.seed,
                             progress=True, prompt=args.prompt, negative_prompt=args.negative_prompt, mask=args.mask,
                             batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    from .visualize import grid_columns, save_grid  # torchvision: imported once the samples are drawn
    path = save_grid(images, args.out, layouts=layouts, class_names=names, nrow=grid_columns(module))
    log.info("wrote %d samples to %s (%.1f s)", args.n, path, seconds)
    if args.save_images is not None:
        if layouts is not None and not names:
            names = [str(i) for i in range(module.model.adaptor.num_classes)]
        folder = save_samples(images, layouts, args.save_images, names, text=module.is_phrase_model)
        size = "x".join(map(str, images.shape[-2:]))
        if layouts is None:
            log.info("wrote the %d samples at %s px to %s", len(images), size, folder)
        else:
            log.info("wrote the %d samples at %s px with their layout files to %s (edit one with: %s edit --image %s --layout %s "
                     "--new-layout NEW.json)", len(images), size, folder, PROG, folder / "sample_000.png", folder / "sample_000.json")


def save_samples(images, layouts, folder: str | Path, class_names: list[str] | None, text: bool = False) -> Path:  # noqa: ANN001 (tensors)
    """``images (n, C, H, W)`` in [-1, 1] -> ``folder/sample_000.png, ...`` at their own size; with
    ``layouts (n, N, 5)`` each layout file ``sample_000.json`` beside its image (``text``: the names are phrases)."""
    from .editing import save_image
    from .layout_file import save_layout

    folder = Path(folder)
    for i, image in enumerate(images):
        save_image(image, folder / f"sample_{i:03d}.png")
        if layouts is not None:
            save_layout(layouts[i], folder / f"sample_{i:03d}.json", class_names, text)
    return folder


# --- edit --------------------------------------------------------------------------------------------------

def add_edit_args(d: argparse.ArgumentParser) -> None:
    d.add_argument("--image", required=True, help="the image to edit (PNG) at the model's size, e.g. one written by sample --save-images")
    d.add_argument("--layout", required=True, help="its layout file (JSON, as for sample --layout; sample --save-images writes it)")
    d.add_argument("--new-layout", required=True, help="the edited layout file: objects moved, resized, re-labelled (for a phrase "
                   'model re-phrased: the same box with a new "text"), added or removed')
    d.add_argument("--ckpt", help="checkpoint, weights export or a shipped model's name: layout-mnist (the default), "
                   "layout-mnist-color (a phrase per box)")
    d.add_argument("--n", type=int, default=1, help="number of edited versions; n > 1 writes OUT_000.png, ... (default: 1)")
    add_sampling_args(d)
    d.add_argument("--resample", type=int, default=0, help="extra RePaint passes per step (default: 0 = none)")
    d.add_argument("--out", default="edited.png", help="the edited image (PNG, the model's size; default: edited.png)")
    d.add_argument("--grid", help="also write a picture of the original and the edits with their layouts drawn")
    d.add_argument("--batch-size", type=int, help="edited versions per model call (default: all --n at once)")
    add_device_options(d)


def check_edit(args: argparse.Namespace) -> None:
    from .schema import check_sampling_options

    check_sampling_options(n=args.n, max_n=MAX_GRID, resample=args.resample)
    check_sampling_args(args)
    for path, what in ((args.image, "image"), (args.layout, "layout file"), (args.new_layout, "layout file")):
        require_file(path, what)
    for path, flag in ((args.out, "--out"), (args.grid, "--grid")):
        if path is not None:
            check_output(path, flag)


def cmd_edit(args: argparse.Namespace) -> None:
    check_sampling_options(args)
    from .editing import edit_file

    paths = edit_file(args.image, args.layout, args.new_layout, args.out, n=args.n, grid=args.grid, ckpt=args.ckpt, sampler=args.sampler,
                      steps=args.steps, guidance=args.guidance, resample=args.resample, seed=args.seed, progress=True,
                      device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    log.info("wrote %s", ", ".join(map(str, paths)))


# --- evaluate ----------------------------------------------------------------------------------------------

def add_evaluate_args(e: argparse.ArgumentParser) -> None:
    e.add_argument("--ckpt", required=True)
    e.add_argument("--nll", action="store_true", help="bits/dim (the variational bound) of the first --n MNIST-test images")
    e.add_argument("--fid", action="store_true", help="digit-FID of --n samples against all of MNIST-test")
    e.add_argument("--layout", action="store_true", help="layout accuracy (box crops read by the crop judge), detection AP (digit detector), digit-FID vs real "
                   "canvases and diversity of --n Layout-MNIST validation layouts (layout models)")
    e.add_argument("--digits", action="store_true", help="share of --n samples read as digits by the digit classifier (confident, "
                   "and in-distribution), and the label accuracy of class-conditional toys; --n 100 scores make demo's grid")
    e.add_argument("--n", type=int, help="images: default 256 for --nll, 1000 for --fid, 100 for --digits, 500 layouts for --layout")
    add_sampling_args(e, for_what="for --fid/--digits/--layout: ")
    e.add_argument("--batch-size", type=int, default=250, help="images per model call (default: 250)")
    e.add_argument("--data-root", help="data root holding MNIST/raw (default: $LAYOUTDIFFUSE_DATA, else ~/data)")
    add_device_options(e)
    e.add_argument("--progress", action="store_true", help="show a progress bar for --nll")


def check_evaluate(args: argparse.Namespace) -> None:
    if not (args.nll or args.fid or args.layout or args.digits):
        raise UserError("nothing to evaluate: pass --nll (bits/dim on MNIST-test), --fid (digit-FID of samples vs MNIST-test), "
                        "--digits (share of samples read as digits) and/or --layout (layout accuracy, digit-FID and diversity "
                        "of a Layout-MNIST layout model)")
    check_sampling_args(args)


def cmd_evaluate(args: argparse.Namespace) -> None:
    check_sampling_options(args)
    from .evaluation.report import evaluate_checkpoint
    from .factory import load_checkpoint

    module = load_checkpoint(args.ckpt, device=args.device, dtype=args.dtype)
    result = evaluate_checkpoint(module, nll=args.nll, fid=args.fid, layout=args.layout, digits=args.digits, n=args.n, sampler=args.sampler,
                                 steps=args.steps, guidance=args.guidance, seed=args.seed, batch_size=args.batch_size,
                                 data_root=args.data_root, progress=args.progress)
    sys.stdout.write(json.dumps({"ckpt": str(args.ckpt), **result}, indent=1) + "\n")


# --- convert-release ---------------------------------------------------------------------------------------

def add_convert_release_args(r: argparse.ArgumentParser) -> None:
    r.add_argument("ckpt", help="the release's .ckpt (Lightning checkpoint with denoise_fn.* UNet keys)")
    r.add_argument("--release-config", required=True, help="the release's config JSON (or its denoising_model / diffusion parts), "
                   "or a published model's name: cocostuff_SD1_5, cocostuff_SD2_1, cocostuff, vg, celeb_mask")
    r.add_argument("--out", required=True, help="output .safetensors (weights in float32, config inside)")
    r.add_argument("--foundation", help="the foundation's folder (Stable Diffusion diffusers folder, CelebA-HQ LDM); "
                   "without it only the UNet is converted (a text model then cannot be sampled)")
    r.add_argument("--class-names", help="layout class names: 'coco-stuff' (the release's COCO id - 1 table) or a JSON list file")
    r.add_argument("--guidance", type=float, help="default guidance scale stored with the model (default: 5 for boxes, 1 for masks)")


def check_convert_release(args: argparse.Namespace) -> None:
    require_file(args.ckpt, "release checkpoint")
    if Path(args.release_config).suffix or Path(args.release_config).exists():  # else a published model's name (checked on reading)
        require_file(args.release_config, "release config")
    if Path(args.out).suffix != ".safetensors":
        raise UserError(f"--out must name a .safetensors file, got {args.out}")
    check_output(args.out, image=False)


def cmd_convert_release(args: argparse.Namespace) -> None:
    from .release.config import read_release_config
    from .release.export import convert_release
    from .release.hints import foundation_hint, sampling_hint

    if args.foundation is not None:
        from .sd.foundation import resolve_path

        folder = resolve_path(args.foundation)
        if not folder.exists():
            release = read_release_config(args.release_config)
            raise MissingFileError(f"foundation {folder} does not exist; this model's foundation is {foundation_hint(release['model_args'])}")
    path = convert_release(args.ckpt, args.release_config, args.out, foundation=args.foundation, class_names=args.class_names,
                           guidance=args.guidance)
    again = " ".join([PROG, "convert-release", args.ckpt, "--release-config", args.release_config, "--out", args.out,
                      *(["--class-names", args.class_names] if args.class_names else []), "--foundation", "FOLDER"])
    log.info("wrote %s; %s", path, sampling_hint(args.release_config, path, args.foundation is not None, prog=PROG,
                                                 convert_again=f"convert again: {again}"))


# --- evaluate-protocol ------------------------------------------------------------------------------------

def add_evaluate_protocol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="protocol: layout-mnist, coco-stuff-256, coco-stuff-128, vg-256, release-coco-256, release-vg-256 "
                   "(docs/evaluation.md)")
    p.add_argument("--ckpt", help="checkpoint or weights export; default: the shipped Layout-MNIST model")
    p.add_argument("--out", required=True, help="run folder: images/, run.json, manifest.json, report.json, report.md")
    p.add_argument("--limit", type=int, help="only the first N layouts (quick looks, smoke tests)")
    p.add_argument("--shard", help="i/n: draw only chunk c with c %% n == i, then stop (score with --merge)")
    p.add_argument("--merge", action="store_true", help="draw nothing: check that every shard's images are in --out, then score")
    p.add_argument("--data-root", help="data root (default: $LAYOUTDIFFUSE_DATA, else ~/data)")
    p.add_argument("--sampler", help="sampler: {samplers} (default: the checkpoint's)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the checkpoint's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the checkpoint's)")


def check_evaluate_protocol(args: argparse.Namespace) -> None:
    if args.ckpt is not None:
        require_file(checkpoint_path(args.ckpt), "checkpoint")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")


def cmd_evaluate_protocol(args: argparse.Namespace) -> None:
    from .evaluation.protocol_run import markdown, evaluate_protocol

    report = evaluate_protocol(args.name, args.out, args.ckpt, args.limit, args.shard, args.merge, args.data_root, args.sampler,
                               args.steps, args.guidance)
    if report is not None:
        sys.stdout.write(markdown(report))


# --- convert-layout ----------------------------------------------------------------------------------------

def add_convert_layout_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("layout", help="layout file: this project's, GLIGEN's (diffusers' gligen_phrases + gligen_boxes), InstanceDiffusion's "
                   "or a COCO instances file (the format is read from the content)")
    c.add_argument("--to", required=True, help="output format: layoutdiffuse | gligen | instancediffusion | coco (docs/layout_formats.md)")
    c.add_argument("--out", required=True, help="output JSON file")
    c.add_argument("--image", help="COCO input holding several images: the image (file_name or id) whose annotations are the layout")
    c.add_argument("--width", type=int, help="image width in pixels for --to instancediffusion or coco (default: the input's, when it has one)")
    c.add_argument("--height", type=int, help="image height in pixels, as --width")
    c.add_argument("--caption", help="global caption written (GLIGEN's prompt, InstanceDiffusion's caption; default: the input's)")
    c.add_argument("--clip", action="store_true", help="clip boxes that leave the image to it (each named in a warning) instead of refusing them")


def check_convert_layout(args: argparse.Namespace) -> None:
    from .layout_formats import FORMATS  # no torch

    require_file(args.layout, "layout file")
    if args.to not in FORMATS:
        raise UserError(f"--to must be one of: {', '.join(FORMATS)}; got {args.to!r}")
    check_output(args.out, image=False)


def cmd_convert_layout(args: argparse.Namespace) -> None:
    from .layout_formats import read_layout, write_layout

    read = read_layout(args.layout, image=args.image, clip=args.clip)
    width, height = read.size or (None, None)
    path = write_layout(read.objects, args.out, args.to, caption=read.caption if args.caption is None else args.caption,
                        width=width if args.width is None else args.width, height=height if args.height is None else args.height)
    log.info("wrote %s: %d objects, %s -> %s", path, len(read.objects), read.format, args.to)


# --- the parser --------------------------------------------------------------------------------------------

class HelpFormatter(argparse.HelpFormatter):
    """Fills ``{samplers}`` in help texts from the sampler registry, only when help is shown (it imports torch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action) or ""
        return text.replace("{samplers}", " | ".join(sampler_names())) if "{samplers}" in text else text


#: name -> (help, add its arguments, cheap checks, run)
COMMANDS: dict[str, tuple[str, Callable, Callable | None, Callable]] = {
    "train": ("train an experiment from a JSON config", add_train_args, None, cmd_train),
    "sample": ("sample a grid for a layout or a mask (default model: the shipped Layout-MNIST LayoutDiffuse)", add_sample_args,
               check_sample, cmd_sample),
    "edit": ("edit an image by its layout: re-generate only the objects that changed (masked sampling)", add_edit_args, check_edit,
             cmd_edit),
    "evaluate": ("bits/dim on MNIST-test (--nll), digit-FID of samples vs MNIST-test (--fid), digit quality (--digits), "
                 "Layout-MNIST layout accuracy / digit-FID / diversity (--layout); prints JSON", add_evaluate_args, check_evaluate,
                 cmd_evaluate),
    "convert-release": ("convert a checkpoint of the original LayoutDiffuse release (read without running code from it) to a "
                        ".safetensors file this project loads", add_convert_release_args, check_convert_release, cmd_convert_release),
    "evaluate-protocol": ("sample a pinned evaluation protocol into a folder (resumable, shardable) and score it",
                          add_evaluate_protocol_args, check_evaluate_protocol, cmd_evaluate_protocol),
    "convert-layout": ("convert a layout file between this project's format, GLIGEN, InstanceDiffusion and COCO",
                       add_convert_layout_args, check_convert_layout, cmd_convert_layout),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Layout-to-image diffusion: train, sample, edit, evaluate.",
                                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (text, add_args, check, run) in COMMANDS.items():
        s = sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        add_args(s)
        s.set_defaults(func=run, check=check)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    try:
        if args.check is not None:
            args.check(args)  # arguments and files, before any heavy import
        args.func(args)
    except UserError as err:  # anything else is a bug and keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
