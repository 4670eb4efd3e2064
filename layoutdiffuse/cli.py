"""Command line: ``python -m layoutdiffuse {train,sample,evaluate} ...``.

User errors (a bad config, a missing file, a bad layout) print one clear line and exit 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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
    import torch

    from .experiment import load_checkpoint
    from .visualize import save_grid

    module = load_checkpoint(args.ckpt)
    g = torch.Generator().manual_seed(args.seed)
    opts = {k: v for k, v in dict(sampler=args.sampler, steps=args.steps, guidance=args.guidance).items() if v is not None}
    images = module.sample(args.n, generator=g, progress=True, **opts)
    path = save_grid(images, args.out)
    log.info("wrote %d samples to %s", args.n, path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m layoutdiffuse", description="Layout-to-image diffusion: train, sample, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an experiment from a JSON config")
    t.add_argument("-c", "--config", required=True, help="JSON config, e.g. configs/mnist.json")
    t.add_argument("--resume", help="checkpoint to resume from, or 'last' for <expt_dir>/<expt_name>/checkpoints/last.ckpt")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. --set trainer_args.max_steps=200 (repeatable)")
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("sample", help="sample a grid from a checkpoint")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--sampler", help="ancestral | ddim | plms | dpm++")
    s.add_argument("--steps", type=int)
    s.add_argument("--guidance", type=float)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png")
    s.set_defaults(func=cmd_sample)
    return p


USER_ERRORS = (FileNotFoundError, ValueError, KeyError, TypeError)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
