"""Which MNIST-toy settings give the best digits in the demo's budget on the slow machine?

    python benchmarks/sweep_mnist.py --speed              # relative training speed of each architecture
    python benchmarks/sweep_mnist.py --trial NAME         # train + score one trial (see TRIALS)
    python benchmarks/sweep_mnist.py --summary            # collect the trials into one JSON

**The budget, not the machine, is what counts.** ``make demo`` trains for
``trainer_args.max_time`` (TRAIN_SECONDS); the slow machine of issue 16 trains
``configs/mnist.json``'s original architecture (32x32, base width 32) at SLOW_IMAGES_PER_S
images/s with 2 threads. Each trial therefore trains on the number of images the slow machine
would train *for that trial's architecture* in TRAIN_SECONDS: ``SLOW_IMAGES_PER_S * TRAIN_SECONDS
* speed(architecture) / speed(reference)``, the speed ratio measured here by ``--speed``
(alternating rounds in one process, so load from other jobs hits all architectures alike). The
learning rate follows the budget (cosine over the fraction used, as in the demo), so a trial run
by steps here is the demo run by time there. ``--budget-fraction`` scales the budget down (for a
machine too loaded to train the full budget in time; the result records the fraction).

Each trained model is scored with several samplers, with and without its EMA weights (no
retraining): the share of N_SAMPLES samples the digit classifier reads with probability >= 0.9
(:func:`layoutdiffuse.evaluation.digit_quality.confident_fraction`, samples resized to 28x28)
and digit-FID against N_REAL MNIST-test images (28x28, classifier features). Trials run single
threaded (``torch.set_num_threads(1)``); results go to ``benchmarks/results/sweep_mnist/``.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from layoutdiffuse.config import load_config
from layoutdiffuse.evaluation.classifier import load_digit_classifier, mnist_tensors
from layoutdiffuse.evaluation.digit_quality import at_28, confident_fraction, digit_fraction, digit_report
from layoutdiffuse.evaluation.fid import digit_fid
from layoutdiffuse.experiment import build_module, export_weights, train
from layoutdiffuse.visualize import save_grid

RESULTS = Path(__file__).parent / "results" / "sweep_mnist"
SLOW_IMAGES_PER_S = 32.0  # issue 16: configs/mnist.json (base 32, 32x32) with 2 threads on the slow machine
TRAIN_SECONDS = 480.0  # the demo's trainer_args.max_time (8 minutes)
N_SAMPLES, N_REAL = 100, 1000  # 100 = the demo grid (10 per class for class-conditional models)

#: the architecture whose slow-machine speed is known (configs/mnist.json before the sweep)
REFERENCE = {"image_size": 32, "model": {"base_channel": 32, "channel_mult": [1, 2, 2], "attn_levels": [2]}}

#: trials: overrides of configs/mnist.json (model, image size, diffusion, optimisation)
TRIALS: dict[str, dict[str, Any]] = {
    "ref32_eps_b64": {"image_size": 32, "model": {}, "batch": 64, "diffusion": {"prediction": "eps", "schedule": "linear", "loss_weighting": "uniform", "ema_decay": 0.995},
                      "lr": 1e-3, "warmup": 100},
    "r32_eps_b32": {"image_size": 32, "model": {}, "batch": 32, "diffusion": {"prediction": "eps", "schedule": "linear", "loss_weighting": "uniform", "ema_decay": 0.99},
                    "lr": 2e-3, "warmup": 50},
    "r28_v_minsnr_b32": {"image_size": 28, "model": {}, "batch": 32, "diffusion": {"prediction": "v", "schedule": "linear", "loss_weighting": "min_snr", "ema_decay": 0.99},
                         "lr": 2e-3, "warmup": 50},
    "r28_w24_v_minsnr_b32": {"image_size": 28, "model": {"base_channel": 24}, "batch": 32,
                             "diffusion": {"prediction": "v", "schedule": "linear", "loss_weighting": "min_snr", "ema_decay": 0.99}, "lr": 2e-3, "warmup": 50},
}
#: class-conditional trials: a label embedding (``num_classes``), labels dropped for 10 % of the
#: images so one model also predicts unconditionally (classifier-free guidance)
TRIALS.update({
    "c28_w24_v_minsnr_b32": {"image_size": 28, "model": {"base_channel": 24, "num_classes": 10}, "batch": 32,
                             "diffusion": {"prediction": "v", "schedule": "linear", "loss_weighting": "min_snr", "ema_decay": 0.99,
                                           "cond_drop_prob": 0.1}, "lr": 2e-3, "warmup": 50},
    "c28_w32_v_minsnr_b32": {"image_size": 28, "model": {"base_channel": 32, "num_classes": 10}, "batch": 32,
                             "diffusion": {"prediction": "v", "schedule": "linear", "loss_weighting": "min_snr", "ema_decay": 0.99,
                                           "cond_drop_prob": 0.1}, "lr": 2e-3, "warmup": 50},
    "c28_w24_v_minsnr_b16": {"image_size": 28, "model": {"base_channel": 24, "num_classes": 10}, "batch": 16,
                             "diffusion": {"prediction": "v", "schedule": "linear", "loss_weighting": "min_snr", "ema_decay": 0.995,
                                           "cond_drop_prob": 0.1}, "lr": 2e-3, "warmup": 100},
    "c28_w16_v_minsnr_b32": {"image_size": 28, "model": {"base_channel": 16, "num_classes": 10}, "batch": 32,
                             "diffusion": {"prediction": "v", "schedule": "linear", "loss_weighting": "min_snr", "ema_decay": 0.99,
                                           "cond_drop_prob": 0.1}, "lr": 2e-3, "warmup": 50},
})
#: (sampler options, EMA weights?) scored on every trained model
SAMPLERS = [({"sampler": "dpm++", "steps": 20}, True), ({"sampler": "dpm++", "steps": 20}, False), ({"sampler": "ddim", "steps": 20}, True),
            ({"sampler": "ancestral", "steps": 50}, True)]
#: class-conditional models: the same at guidance 3, plus scans of the guidance scale and of the
#: stochastic samplers' step counts (1 = the conditional model alone)
CLASS_SAMPLERS = [(dict(opts, guidance=3.0), ema) for opts, ema in SAMPLERS] + [
    ({"sampler": "dpm++", "steps": 20, "guidance": g}, True) for g in (1.0, 2.0, 5.0)] + [
    ({"sampler": "ancestral", "steps": 50, "guidance": g}, True) for g in (2.0, 4.0)] + [
    ({"sampler": "ancestral", "steps": k, "guidance": 3.0}, True) for k in (25, 100)] + [
    ({"sampler": "dpm++sde", "steps": k, "guidance": 3.0}, True) for k in (20, 50)]


def architecture(spec: dict[str, Any]) -> tuple[int, str]:
    """(image size, model JSON) of a trial; the label embedding costs nothing measurable, so it is left out."""
    model = {k: v for k, v in {**REFERENCE["model"], **spec.get("model", {})}.items() if k != "num_classes"}
    return spec["image_size"], json.dumps(model, sort_keys=True)


def trial_config(name: str, spec: dict[str, Any], steps: int, out: Path) -> dict[str, Any]:
    config = copy.deepcopy(load_config("configs/mnist.json"))
    config.update(expt_name=name, expt_dir=str(out))
    config["denoising_model"].pop("num_classes", None)  # each trial says whether it is class-conditional
    config["diffusion"].pop("cond_drop_prob", None)
    config["diffusion"]["sampling"].pop("guidance", None)
    config["denoising_model"].update({**REFERENCE["model"], **spec.get("model", {})})
    config["data"].update(image_size=spec["image_size"], batch_size=spec.get("batch", 64), num_workers=0)
    diffusion = config["diffusion"]
    diffusion.update(spec.get("diffusion", {}))
    diffusion["optimizer"] = {"lr": spec.get("lr", 1e-3), "weight_decay": 0.0}
    diffusion["lr_scheduler"] = {"name": "cosine", "warmup_steps": spec.get("warmup", 100)}  # follows max_steps here, max_time in the demo
    config["trainer_args"] = {"max_steps": steps, "accelerator": "cpu", "devices": 1, "limit_val_batches": 0, "log_every_n_steps": 20, "enable_progress_bar": False}
    config["callbacks"] = {"checkpoint": {"every_n_train_steps": 0, "save_last": False, "save_top_k": 0}}
    return config


def measure_speed(rounds: int = 3, steps: int = 3, batch: int = 32) -> dict[str, Any]:
    """Training images/s of every trial architecture, in alternating rounds (one process, one thread)."""
    archs = {architecture(REFERENCE): REFERENCE, **{architecture(s): s for s in TRIALS.values()}}
    modules, data = {}, {}
    for key, spec in archs.items():
        config = trial_config("speed", {**spec, "batch": batch}, 1, Path("/tmp"))
        modules[key] = build_module(config)
        data[key] = torch.rand(batch, 1, spec["image_size"], spec["image_size"]) * 2 - 1
    seconds = {key: 0.0 for key in archs}
    for r in range(rounds + 1):  # round 0 warms up
        for key, module in modules.items():
            opt = torch.optim.AdamW(module.model.parameters(), lr=1e-4)
            start = time.perf_counter()
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                t = torch.randint(0, module.diffusion.num_timesteps, (batch,))
                module.compute_losses(data[key], t, None, torch.randn_like(data[key]))["loss"].mean().backward()
                opt.step()
            if r:
                seconds[key] += time.perf_counter() - start
    ref = seconds[architecture(REFERENCE)]
    return {"rounds": rounds, "steps_per_round": steps, "batch": batch, "threads": torch.get_num_threads(),
            "architectures": [{"image_size": k[0], "model": json.loads(k[1]), "images_per_s_here": round(rounds * steps * batch / s, 2),
                               "speed_vs_reference": round(ref / s, 3)} for k, s in seconds.items()]}


def speed_ratio(spec: dict[str, Any]) -> float:
    speed = json.loads((RESULTS / "speed.json").read_text())
    for arch in speed["architectures"]:
        if (arch["image_size"], json.dumps(arch["model"], sort_keys=True)) == architecture(spec):
            return arch["speed_vs_reference"]
    raise SystemExit(f"no speed measured for {architecture(spec)}: run --speed first")


def score(module: Any, real: torch.Tensor, classifier: torch.nn.Module, name: str, out: Path) -> list[dict[str, Any]]:
    """Every entry of SAMPLERS (CLASS_SAMPLERS for class-conditional models) scored on N_SAMPLES
    samples; class-conditional samples also get ``label_accuracy`` (the classifier reads the class asked for)."""
    rows = []
    classes = module.label_classes or None
    for opts, ema in CLASS_SAMPLERS if classes else SAMPLERS:
        start = time.perf_counter()
        images = module.sample(N_SAMPLES, generator=torch.Generator().manual_seed(0), use_ema=ema, **opts)
        seconds = time.perf_counter() - start
        labels = torch.arange(N_SAMPLES) % classes if classes else None
        rows.append({**opts, "ema": ema, **digit_report(images, labels, classifier=classifier),
                     "digit_fid": round(digit_fid(real, at_28(images), classifier=classifier), 2), "sample_seconds": round(seconds, 1)})
        tag = f"_g{opts['guidance']:g}" if "guidance" in opts else ""
        save_grid(images, out / f"{name}_{opts['sampler']}{opts['steps']}_{'ema' if ema else 'live'}{tag}.png", nrow=classes)
        logging.info("%s %s", name, rows[-1])
    return rows


def run_trial(name: str, budget_fraction: float = 1.0) -> dict[str, Any]:
    spec = TRIALS[name]
    ratio = speed_ratio(spec)
    images = SLOW_IMAGES_PER_S * TRAIN_SECONDS * ratio * budget_fraction
    steps = int(images // spec.get("batch", 64))
    out = Path("/tmp/sweep_mnist")
    config = trial_config(name, spec, steps, out)
    start = time.perf_counter()
    module = train(config)
    train_seconds = time.perf_counter() - start
    export_weights(module, out / f"{name}.safetensors", half=False)  # to score more samplers later without retraining
    classifier = load_digit_classifier()
    real = mnist_tensors(False)[0][:N_REAL]
    return {
        "trial": name, "spec": spec, "speed_vs_reference": ratio, "budget_fraction": budget_fraction, "slow_machine_images": round(images), "steps": steps,
        "train_seconds_here": round(train_seconds, 1), "images_per_s_here": round(steps * spec.get("batch", 64) / train_seconds, 2),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} thread, shared with other jobs",
        "real_confident_fraction": round(confident_fraction(real, classifier=classifier), 4),  # the ceiling: real digits
        "real_digit_fraction": round(digit_fraction(real, classifier=classifier), 4),
        "samples": score(module, real, classifier, name, out),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--speed", action="store_true")
    p.add_argument("--trial", choices=sorted(TRIALS))
    p.add_argument("--summary", action="store_true")
    p.add_argument("--budget-fraction", type=float, default=1.0, help="train on this fraction of the slow machine's images (1 = the demo's budget)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.speed:
        result, path = measure_speed(), RESULTS / "speed.json"
    elif args.trial:
        result, path = run_trial(args.trial, args.budget_fraction), RESULTS / f"{args.trial}.json"
    elif args.summary:
        trials = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("*.json")) if f.stem in TRIALS]
        best = max(((t["trial"], s) for t in trials for s in t["samples"]), key=lambda ts: (ts[1]["digit_fraction"], -ts[1]["digit_fid"]))
        result = {"budget": {"slow_images_per_s": SLOW_IMAGES_PER_S, "train_seconds": TRAIN_SECONDS, "n_samples": N_SAMPLES, "n_real": N_REAL},
                  "speed": json.loads((RESULTS / "speed.json").read_text()), "trials": trials, "best": {"trial": best[0], **best[1]}}
        path = RESULTS.parent / "sweep_mnist.json"
    else:
        p.error("give --speed, --trial NAME or --summary")
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result if not args.summary else result["best"], indent=1))


if __name__ == "__main__":
    main()
