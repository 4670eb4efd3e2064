"""Training and sampling throughput of a config's model: images/s, parameters, peak memory.

    python benchmarks/bench_mnist.py [--config configs/mnist.json] [--steps 20] [--batch 64]
    python benchmarks/bench_mnist.py --config configs/layout_mnist_scratch.json --batch 32

The training step runs on one real batch of the config's dataset (so layout models see real
layouts: Layout-MNIST canvases of 1-3 digits), with the module's own loss; sampling uses the
batch's conditions (DDIM, ``--sample-steps``). ``--batch`` overrides the config's batch size.

Also reports the minor page faults per training step.

Prints JSON. Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the process's
peak resident set size (``ru_maxrss``, which includes the Python/torch runtime).
"""
import argparse
import json
import platform
import resource
import time

import torch

from layoutdiffuse.config import load_config
from layoutdiffuse.experiment import build_datasets, build_loaders, build_module


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/mnist.json")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sample-n", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=50)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = load_config(args.config)
    config["data"]["batch_size"] = args.batch
    if "adapt" in config:
        raise SystemExit(f"{args.config} adapts a foundation checkpoint; benchmark the same architecture "
                         "from scratch instead (e.g. configs/layout_mnist_scratch.json)")
    module = build_module(config).to(device)
    model = module.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = module.process_batch(next(iter(build_loaders(config, build_datasets(config))["train"])))
    x = batch["x0"].to(device)
    cond = {k: v.to(device) for k, v in batch["cond"].items()} if batch["cond"] else None
    timesteps = module.diffusion.num_timesteps

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        t = torch.randint(0, timesteps, (args.batch,), device=device)
        loss = module.compute_losses(x, t, cond, torch.randn_like(x))["loss"].mean()
        loss.backward()
        opt.step()

    for _ in range(3):
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.steps):
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_time = time.perf_counter() - start
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
    start = time.perf_counter()
    sample_cond = None if cond is None else {k: v[:1].expand(args.sample_n, *v.shape[1:]) for k, v in cond.items()}
    module.sample(args.sample_n, cond=sample_cond, sampler="ddim", steps=args.sample_steps, generator=torch.Generator(device).manual_seed(0))
    sample_time = time.perf_counter() - start
    print(json.dumps({
        "config": args.config,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "train_images_per_s": round(args.steps * args.batch / train_time, 1),
        "train_batch": args.batch,
        "minor_page_faults_per_train_step": round(faults),
        "objects_per_canvas": round(float((cond["layout"][..., 4] >= 0).sum(1).float().mean()), 2) if cond and "layout" in cond else None,
        "sample_images_per_s_ddim": round(args.sample_n / sample_time, 2),
        "sample_steps": args.sample_steps,
        "peak_memory_MB": round(peak_memory_mb(device), 1),
    }, indent=1))


if __name__ == "__main__":
    main()
