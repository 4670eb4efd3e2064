"""MNIST toy throughput: training images/s, sampling images/s, parameters, peak memory.

    python benchmarks/bench_mnist.py [--config configs/mnist.json] [--steps 20] [--batch 64]

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
from layoutdiffuse.experiment import build_module


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
    module = build_module(load_config(args.config)).to(device)
    model = module.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, *module.image_shape, device=device)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = module.compute_losses(x, torch.randint(0, 1000, (args.batch,), device=device), None, torch.randn_like(x))["loss"].mean()
        loss.backward()
        opt.step()

    for _ in range(3):
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    module.sample(args.sample_n, sampler="ddim", steps=args.sample_steps, generator=torch.Generator(device).manual_seed(0))
    sample_time = time.perf_counter() - start
    print(json.dumps({
        "config": args.config,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "train_images_per_s": round(args.steps * args.batch / train_time, 1),
        "train_batch": args.batch,
        "sample_images_per_s_ddim": round(args.sample_n / sample_time, 2),
        "sample_steps": args.sample_steps,
        "peak_memory_MB": round(peak_memory_mb(device), 1),
    }, indent=1))


if __name__ == "__main__":
    main()
