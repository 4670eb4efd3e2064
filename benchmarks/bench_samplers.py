"""Samplers side by side on one trained toy model: digit-FID vs MNIST-test and wall time per image.

    python benchmarks/bench_samplers.py [CKPT] [--n 1000] [--steps 10 20 25 50] [--samplers ddim plms dpm++ dpm++sde]

``CKPT`` defaults to ``experiments/mnist/checkpoints/last.ckpt``. Every sampler draws the same ``--n``
images from the same seed (``--seed``), in batches of ``--batch-size``:

* the reference: ancestral sampling on the full 1000-step chain (with the learned variance for an
  improved-DDPM checkpoint, ``fixed_small`` otherwise);
* ``ddim``, ``plms``, ``dpm++`` and ``dpm++sde`` at each of ``--steps``, and the ancestral sampler respaced to the
  same step counts (improved DDPM's fast sampler; exact respacing for the learned and the
  ``fixed_small`` variance): the stochastic peer of the deterministic ones.

digit-FID: the shipped digit classifier's pooled features (:func:`layoutdiffuse.evaluation.digit_fid`)
of the samples against all 10,000 MNIST-test images at the model's resolution. For scale, two
real-vs-real floors: the issue's two disjoint halves of MNIST-test (5,000 vs 5,000), and ``--n``
MNIST-*train* images against the same MNIST-test reference (the floor at this very ``N``; mean and
std over ``--floor-repeats`` random draws, which is also the sampling noise of an FID at this N).

The goal (issue): DPM-Solver++ (``dpm++`` or its SDE form ``dpm++sde``) or PLMS at <= 25 steps
within 10 % of the 1000-step ancestral FID;
``goal`` in the JSON says whether it is met. Prints JSON (progress lines go to stderr).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys

import torch

from layoutdiffuse.data.mnist import mnist_test_images  # noqa: E402
from layoutdiffuse.sampling import timed_samples  # noqa: E402
from layoutdiffuse.evaluation import FeatureFID, load_digit_classifier

log = logging.getLogger("bench_samplers")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mnist_train_images(image_size: int, n: int, generator: torch.Generator, root: str | None = None) -> torch.Tensor:
    """``n`` random MNIST-train images ``(n, 1, S, S)`` in [-1, 1], preprocessed as for training."""
    from layoutdiffuse.data.mnist import mnist

    ds = mnist(train=True, root=root, download=False, image_size=image_size)
    idx = torch.randperm(len(ds), generator=generator)[:n]
    return ds.transform(ds.data[idx][:, None]).as_subclass(torch.Tensor)


#: the issue's fast samplers: DPM-Solver++ (the ODE solver and its SDE twin) and PLMS
FAST_SAMPLERS = ("dpm++", "dpm++sde", "plms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt", nargs="?", default="experiments/mnist/checkpoints/last.ckpt")
    p.add_argument("--n", type=int, default=1000, help="images per sampler (same seed for all)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 25, 50])
    p.add_argument("--samplers", nargs="+", default=["ddim", "plms", "dpm++", "dpm++sde"])
    p.add_argument("--reference-steps", type=int, default=1000, help="ancestral steps of the reference (0 skips it)")
    p.add_argument("--no-respaced-ancestral", action="store_true", help="skip the respaced ancestral runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--floor-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--data-root", help="data root holding MNIST/raw (default: $LAYOUTDIFFUSE_DATA)")
    p.add_argument("--out", help="also write the JSON here (rewritten after every run, so a long run leaves partial results)")
    p.add_argument("--resume", action="store_true", help="keep the runs already in --out (same ckpt, n, seed, batch size) and do only the others")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)

    from layoutdiffuse.experiment import load_checkpoint

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        module = load_checkpoint(args.ckpt, map_location=device).to(device)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    size = module.image_shape[-1]
    learned = module.diffusion.learn_sigma
    classifier = load_digit_classifier(device=device)
    metric = FeatureFID(classifier.features, device=device)

    # real-vs-real floors, and the MNIST-test reference statistics every sampler is compared with
    test = mnist_test_images(size, None, args.data_root)
    half = len(test) // 2
    metric.update(test[:half], real=True)
    metric.update(test[half:], real=False)
    floor_halves = metric.compute()
    metric.reset(real=True)
    metric.update(test, real=True)
    g = torch.Generator().manual_seed(args.seed)
    floors = []
    for _ in range(args.floor_repeats):
        metric.reset()
        metric.update(mnist_train_images(size, args.n, g, args.data_root), real=False)
        floors.append(metric.compute())
    floor_n = torch.tensor(floors, dtype=torch.float64)

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu: {cpu_name()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores visible"
    result = {
        "ckpt": args.ckpt,
        "model": {"training": module.config.get("diffusion", {}).get("training"), "schedule": module.diffusion.schedule,
                  "learned_variance": learned, "num_timesteps": module.diffusion.num_timesteps, "image_size": size},
        "n": args.n, "seed": args.seed, "batch_size": args.batch_size, "device": device_name,
        "reference": f"MNIST-test, {len(test)} images at {size}x{size}; digit-classifier pooled features ({classifier.num_features}-d)",
        "floor": {"test_half_vs_half": round(floor_halves, 4),
                  "train_n_vs_test": {"mean": round(floor_n.mean().item(), 4), "std": round(floor_n.std().item(), 4) if len(floor_n) > 1 else None, "repeats": len(floor_n)}},
        "runs": [],
    }

    runs: list[tuple[str, int]] = []
    if args.reference_steps:
        runs.append(("ancestral", args.reference_steps))
    for steps in args.steps:
        runs += [(name, steps) for name in args.samplers]
        if not args.no_respaced_ancestral and "ancestral" not in args.samplers and steps < args.reference_steps:
            runs.append(("ancestral", steps))
    done = {}
    if args.resume and args.out and os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)
        if all(previous.get(k) == result[k] for k in ("ckpt", "n", "seed", "batch_size")):
            done = {(r["sampler"], r["steps"]): r for r in previous.get("runs", [])}
            log.info("resuming: %d runs already in %s", len(done), args.out)
    for name, steps in runs:
        if (name, steps) in done:
            result["runs"].append(done[name, steps])
            continue
        images, seconds = timed_samples(module, args.n, name, steps, args.seed, args.batch_size)
        metric.reset()
        metric.update(images, real=False)
        run = {"sampler": name, "steps": steps, "digit_fid": round(metric.compute(), 4), "seconds_per_image": round(seconds / args.n, 4)}
        if name == "ancestral":
            run["variance"] = "learned" if learned else "fixed_small"
            run["respaced"] = steps < module.diffusion.num_timesteps
        result["runs"].append(run)
        log.info("%s", json.dumps(run))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)

    ref = next((r for r in result["runs"] if r["sampler"] == "ancestral" and r["steps"] == args.reference_steps), None)
    if ref is not None:
        fast = [r for r in result["runs"] if r["sampler"] in FAST_SAMPLERS and r["steps"] <= 25]
        best = min(fast, key=lambda r: r["digit_fid"], default=None)
        result["goal"] = {
            "rule": f"one of {', '.join(FAST_SAMPLERS)} at <= 25 steps within 10% of the reference ancestral FID",
            "reference_fid": ref["digit_fid"],
            "best_fast": best,
            "ratio": round(best["digit_fid"] / ref["digit_fid"], 4) if best and ref["digit_fid"] > 0 else None,
            "met": bool(best and best["digit_fid"] <= 1.1 * ref["digit_fid"]),
            "speedup_per_image": round(ref["seconds_per_image"] / best["seconds_per_image"], 1) if best else None,
            "best_deterministic_le_25_steps": min((r for r in fast if r["sampler"] != "dpm++sde"), key=lambda r: r["digit_fid"], default=None),
            "best_any_sampler_le_25_steps": min((r for r in result["runs"] if r["steps"] <= 25), key=lambda r: r["digit_fid"], default=None),
        }
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
