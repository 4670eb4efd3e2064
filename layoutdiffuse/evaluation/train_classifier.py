"""Train the MNIST digit classifier of :mod:`layoutdiffuse.evaluation.classifier` and write its weights.

    python -m layoutdiffuse.evaluation.train_classifier --root $LAYOUTDIFFUSE_DATA \\
        --out layoutdiffuse/evaluation/weights/digit_classifier.safetensors

Writes fp16 safetensors plus a ``.json`` record (test accuracy, wall time, this command).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys

from .classifier import WEIGHTS, save_digit_classifier, train_digit_classifier

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None, prog: str = "python -m layoutdiffuse.evaluation.train_classifier") -> None:
    """``python -m layoutdiffuse.evaluation.train_classifier --root DATA --out FILE.safetensors`` (trains, evaluates, writes)."""
    p = argparse.ArgumentParser(prog=prog, description="Train the MNIST digit classifier used by layoutdiffuse.evaluation.")
    p.add_argument("--root", default=None, help="data root holding MNIST/raw (default $LAYOUTDIFFUSE_DATA or ~/data)")
    p.add_argument("--out", default=str(WEIGHTS), help="safetensors file to write (a .json record is written beside it)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (quick checks)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, info = train_digit_classifier(args.root, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                         device=args.device, threads=args.threads, limit=args.limit)
    argv = sys.argv[1:] if argv is None else argv
    info["command"] = f"{prog} " + " ".join(shlex.quote(a) for a in argv)
    save_digit_classifier(model.cpu(), args.out, info)
    log.info("test accuracy %.4f in %.0f s; wrote %s", info["test_accuracy"], info["train_seconds"], args.out)


if __name__ == "__main__":
    main()
