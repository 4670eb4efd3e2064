"""Adaptation vs training from scratch, at toy scale: loss, layout accuracy and digit-FID against steps.

    python benchmarks/adapt_vs_scratch.py \\
        --run adapted=experiments/layout_mnist_1500 --run scratch=experiments/layout_mnist_scratch \\
        [--n 200] [--guidance 4] [--out docs/adapt_vs_scratch.json] [--plot docs/adapt_vs_scratch.png]

Each ``--run LABEL=DIR`` is an experiment directory written by ``python -m layoutdiffuse train``
(``DIR/checkpoints/step_*.ckpt`` and ``DIR/logs/metrics.csv``). Every step checkpoint is scored
with :func:`layoutdiffuse.evaluation.layout_mnist.evaluate_layout_mnist` (the first ``--n``
Layout-MNIST validation layouts, the checkpoint's sampler and steps, guidance ``--guidance``; no
diversity). The JSON is rewritten after every checkpoint and a rerun skips checkpoints already in
it, so an interrupted run resumes. The figure shows the training loss (from ``metrics.csv``,
smoothed over 100 steps) and both scores per run.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import sys
from pathlib import Path

import torch

from layoutdiffuse.evaluation.layout_mnist import evaluate_layout_mnist
from layoutdiffuse.experiment import load_checkpoint

log = logging.getLogger("adapt_vs_scratch")


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = sorted((int(m.group(1)), p) for p in (run_dir / "checkpoints").glob("step_*.ckpt")
                   if (m := re.fullmatch(r"step_(\d+)\.ckpt", p.name)))
    if not found:
        raise FileNotFoundError(f"no step_*.ckpt under {run_dir / 'checkpoints'}")
    return found


def loss_curve(run_dir: Path, window: int = 100) -> tuple[list[int], list[float]]:
    """``(steps, train/loss)`` from the run's CSV log, as a running mean over ``window`` logged steps."""
    rows = []
    with open(run_dir / "logs" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                rows.append((int(row["step"]), float(row["train/loss"])))
    steps, values, smooth = [], [], []
    for step, loss in rows:
        values.append((step, loss))
        recent = [v for s, v in values if s > step - window]
        steps.append(step)
        smooth.append(sum(recent) / len(recent))
    return steps, smooth


def plot(result: dict, runs: dict[str, Path], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, run_dir in runs.items():
        steps, loss = loss_curve(run_dir)
        line, = axes[0].plot(steps, loss, label=label)
        points = sorted((r["step"], r) for r in result["points"] if r["run"] == label)
        xs = [s for s, _ in points]
        axes[1].plot(xs, [100 * r["layout_accuracy"] for _, r in points], "o-", color=line.get_color(), label=label)
        axes[2].plot(xs, [r["digit_fid"] for _, r in points], "o-", color=line.get_color(), label=label)
    ceiling = [r["layout_accuracy_real_canvases"] for r in result["points"]]
    floor = [r["digit_fid_real_vs_real"] for r in result["points"]]
    if ceiling:
        axes[1].axhline(100 * ceiling[0], ls="--", color="gray", label="real canvases")
        axes[2].axhline(floor[0], ls="--", color="gray", label="real vs real")
    for ax, title in zip(axes, ["training loss (running mean, 100 steps)", "layout accuracy (%)", "digit-FID (lower is better)"]):
        ax.set_xlabel("training steps (adapted runs: after the foundation)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    fig.suptitle(f"Layout-MNIST: LayoutDiffuse adaptation vs scratch ({result['n']} validation layouts, "
                 f"guidance {result['guidance']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="LABEL=DIR", help="an experiment directory (repeatable)")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--root", help="data root holding MNIST/raw (default: $LAYOUTDIFFUSE_DATA)")
    p.add_argument("--out", default="adapt_vs_scratch.json")
    p.add_argument("--plot", help="also draw the figure here (PNG)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    runs = {}
    for spec in args.run:
        label, sep, directory = spec.partition("=")
        if not sep or not label or not directory:
            p.error(f"--run must be LABEL=DIR, got {spec!r}")
        runs[label] = Path(directory)
    result = {"n": args.n, "guidance": args.guidance, "threads": torch.get_num_threads(), "points": []}
    if os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)
        if (previous.get("n"), previous.get("guidance")) == (args.n, args.guidance):
            result["points"] = previous["points"]
    done = {(r["run"], r["ckpt"]) for r in result["points"]}
    for label, run_dir in runs.items():
        for step, ckpt in checkpoints(run_dir):
            if (label, str(ckpt)) in done:
                continue
            scores = evaluate_layout_mnist(load_checkpoint(ckpt), args.n, guidance=args.guidance, root=args.root, diversity_layouts=0)
            result["points"].append({"run": label, "step": step, "ckpt": str(ckpt), **scores})
            log.info("%s step %d: layout accuracy %.3f, digit-FID %.2f", label, step, scores["layout_accuracy"], scores["digit_fid"])
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    if args.plot:
        plot(result, runs, args.plot)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
