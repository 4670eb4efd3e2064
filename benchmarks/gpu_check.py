"""The GPU check: the full-size Stable Diffusion 2.1 LayoutDiffuse model, random weights, one command.

    python benchmarks/gpu_check.py                       # on a CUDA machine: under 8 minutes on one GPU
    python benchmarks/gpu_check.py --device cpu --tiny   # the same sections at toy widths (tests/test_gpu_check.py)

Writes JSON (``--out``, default ``benchmarks/results/gpu_check.json``; ``--tiny``:
``benchmarks/results/gpu_check_cpu_tiny.json``). Nothing is downloaded: the model is
``cocostuff_SD2_1``'s architecture (SD 2.1-base UNet with the release's layout attention, the SD VAE,
an OpenCLIP-H-sized text encoder) built by :func:`layoutdiffuse.release.random_module.build_random_module`.
Each section runs in its own ``try``: a failure is recorded (``"error"``: its first line) and the
others still run.

* ``sampling``: ``--samples`` (8) images at 512 px, ``--steps`` (20) PLMS steps, guidance 5 (both
  branches in one batch), decoded, in float16 and bfloat16 (UNet and text encoder in that precision,
  the sampler's arithmetic in float32, the VAE in float32 as its ``force_upcast`` says): seconds per
  image after a warm-up run, peak GPU memory (``torch.cuda.max_memory_allocated``).
* ``training``: one step at ``--train-batch`` (4) with gradient checkpointing in bf16-mixed
  (float32 weights, bfloat16 autocast; VAE encode and text encode inside the step, as in real
  runs), AdamW; for the adaptor alone (``freeze_backbone``) and for every weight (``all``):
  seconds of the second step, peak memory.
* ``layout_attention``: the vectorised block vs the per-object loop vs the floor (the block with
  no objects) at the published models' layout levels (``benchmarks/bench_layout_attention.py``).
* ``compile``: ``torch.compile`` of the adapted UNet (``--compile-backend``, inductor by default):
  seconds per UNet evaluation (batch 2, float16 on CUDA, float32 on the CPU) eager vs compiled after
  the compile, the compile time and the largest relative output difference, or the error that
  stopped it. The layout-attention blocks break the graph (their size buckets are read on the host,
  ``Tensor.item()``), so the UNet compiles as several graphs.
* ``exactness``: the release fixtures (``../shared/release``: ``NAME.io.safetensors``, the release
  code's own UNet outputs) evaluated by the converted models in float32, float16 and bfloat16 on
  the device: relative error ``max|eps - eps_release| / max|eps_release|``.

On the CPU (``--device cpu``) memory is the process's peak RSS (``VmHWM``) instead, and float16
sections run if torch supports them there (their error is recorded otherwise).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from layoutdiffuse.layout import pad_layouts  # noqa: E402
from layoutdiffuse.release.random_module import build_random_module  # noqa: E402
from layoutdiffuse.sd.random_foundation import InPrecision  # noqa: E402

NAME = "cocostuff_SD2_1"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FAMILIES = ("sd_layout", "ldm_text_layout", "celeb_mask")
RELEASE_CANDIDATES = [ROOT.parent / "shared" / "release", ROOT / "shared" / "release", Path("/work/shared/release")]
CAPTIONS = ["a beach, person, sand, sea", "a street with cars and people", "", "two dogs playing in the grass"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:  # Linux: peak RSS (VmHWM) := current RSS
            f.write("5")


def peak_gib(device: torch.device) -> float:
    """Peak GPU memory allocated since :func:`reset_peak` (CUDA), else the peak RSS of the process."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return round(_rss_kib("VmHWM") / 2**20, 3)


def section(out: dict, key: str, fn: Callable[[], Any]) -> None:
    """``out[key] = fn()``, or the error's first line (and where it happened) when it fails."""
    t0 = time.perf_counter()
    try:
        out[key] = fn()
    except Exception as err:  # a check that fails is a result: record it, run the others
        out[key] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                    "where": traceback.format_exc().strip().splitlines()[-3].strip()}
    if isinstance(out[key], dict):
        out[key]["section_s"] = round(time.perf_counter() - t0, 1)


def random_layouts(n: int, seed: int = 0, classes: int = 181) -> torch.Tensor:
    """``n`` COCO-like layouts of 3-8 boxes, ``(n, 8, 5)`` padded."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        k = int(torch.randint(3, 9, (1,), generator=g))
        wh = 0.1 + 0.4 * torch.rand(k, 2, generator=g)
        xy = torch.rand(k, 2, generator=g) * (1 - wh)
        items.append(torch.cat([xy, wh, torch.randint(0, classes, (k, 1), generator=g).float()], 1))
    return pad_layouts(items)


def conditions(n: int, device: torch.device) -> dict[str, Any]:
    return {"layout": random_layouts(n).to(device), "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]}


# --- sections ------------------------------------------------------------------------------------

def check_sampling(module: Any, device: torch.device, samples: int, steps: int) -> dict[str, Any]:
    unet, text = module.model, module.text_encoder
    out: dict[str, Any] = {"samples": samples, "steps": steps, "sampler": "plms", "guidance": module.sampling_args["guidance"],
                           "image_size": module.image_shape[-1] * module.autoencoder.downsample_factor,
                           "vae": "float32 (force_upcast)" if module.autoencoder.upcast else "model dtype"}
    for name in ("float16", "bfloat16"):
        dtype = DTYPES[name]
        try:
            module.model = InPrecision(unet, dtype)
            module.text_encoder = text.to(dtype)
            module.sample(1, conditions(1, device), steps=2, generator=torch.Generator(device).manual_seed(0))  # warm-up
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            images = module.sample(samples, conditions(samples, device), steps=steps, generator=torch.Generator(device).manual_seed(1))
            sync(device)
            seconds = time.perf_counter() - t0
            out[name] = {"s_per_image": round(seconds / samples, 4), "total_s": round(seconds, 2), "peak_memory_GiB": peak_gib(device),
                         "finite": bool(torch.isfinite(images).all()), "shape": list(images.shape)}
        except Exception as err:
            out[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    module.model, module.text_encoder = unet.float(), text.float()
    return out


def train_step(module: Any, batch: dict[str, Any], mode: str, device: torch.device, steps: int = 2) -> dict[str, Any]:
    """``steps`` training steps of ``module`` on ``batch`` (``optimizer.train`` = ``mode``: ``freeze_backbone``
    or ``all``), bf16 autocast with float32 weights, AdamW; the last step is timed, memory peaks over all."""
    model = module.model
    module.train()
    module.optimizer_args["train"] = mode
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    times = []
    reset_peak(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here
        for _ in range(steps):
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = module.shared_step(batch, "train")["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            times.append(time.perf_counter() - t0)
    module.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out = {"step_s": round(times[-1], 3), "peak_memory_GiB": peak_gib(device), "trainable_parameters": trainable,
           "loss_finite": bool(torch.isfinite(loss)), "precision": "bf16 autocast, float32 weights", "optimizer": "AdamW", "mode": mode}
    if steps > 1:
        out["first_step_s"] = round(times[0], 3)
    return out


def check_training(module: Any, device: torch.device, batch: int) -> dict[str, Any]:
    size = module.image_shape[-1] * module.autoencoder.downsample_factor
    g = torch.Generator().manual_seed(0)
    data = {"image": (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device), **conditions(batch, device)}
    module.model.enable_gradient_checkpointing()
    out: dict[str, Any] = {"batch": batch, "image_size": size, "precision": "bf16-mixed",
                           "gradient_checkpointing": bool(module.model.unet.is_gradient_checkpointing)}
    for mode in ("freeze_backbone", "all"):
        out[mode] = train_step(module, data, mode, device)
    module.model.disable_gradient_checkpointing()
    return out


def check_layout_attention(device: torch.device, tiny: bool, repeats: int) -> dict[str, Any]:
    import bench_layout_attention as bench

    levels = ((32, 8), (64, 4)) if tiny else bench.REAL_LEVELS
    batch, objects = (2, (3,)) if tiny else (bench.REAL_BATCH, bench.REAL_OBJECTS)
    rows = [bench.compare(size, ch, batch, n, device.type, repeats, memory=device.type == "cuda")
            for ch, size in levels for n in objects]
    return {"results": rows, "repeats": repeats, "batch": batch}


def check_compile(module: Any, device: torch.device, dtype: torch.dtype, repeats: int, backend: str) -> dict[str, Any]:
    model = InPrecision(module.model, dtype).eval()
    n = 2
    x = torch.randn(n, *module.image_shape, device=device)
    t = torch.full((n,), 500, device=device, dtype=torch.long)
    with torch.no_grad():
        cond = module.encode_condition(conditions(n, device), n)

    def timed(fn: Callable) -> float:
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                fn(x, t, cond)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        return best

    with torch.no_grad():
        eager_out = model(x, t, cond)
    eager = timed(model)
    out: dict[str, Any] = {"dtype": str(dtype).replace("torch.", ""), "batch": n, "backend": backend, "eager_s": round(eager, 4)}
    try:
        import torch._dynamo as dynamo

        dynamo.reset()
        compiled = torch.compile(model, backend=backend)
        t0 = time.perf_counter()
        with torch.no_grad():
            compiled_out = compiled(x, t, cond)
        sync(device)
        out["compile_s"] = round(time.perf_counter() - t0, 1)
        out["compiled_s"] = round(timed(compiled), 4)
        out["speedup"] = round(eager / out["compiled_s"], 3)
        out["max_rel_diff"] = float((compiled_out - eager_out).abs().max() / eager_out.abs().max())
    except Exception as err:
        out["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    module.model.float()  # InPrecision cast the module's own UNet
    return out


def release_dir(given: str | None) -> Path | None:
    for p in ([Path(given)] if given else RELEASE_CANDIDATES):
        if (p / "README.md").is_file() and (p / "sd_layout.io.safetensors").is_file():
            return p
    return None


def check_exactness(device: torch.device, folder: Path | None) -> dict[str, Any]:
    """Relative eps error of the converted release fixtures per precision (see the module docstring)."""
    from safetensors.torch import load_file

    from layoutdiffuse.release import load_release_unet, read_release_config

    if folder is None:
        return {"error": "release fixtures not found (../shared/release beside the repository, or --release-dir)"}
    out: dict[str, Any] = {"fixtures": str(folder), "measure": "max|eps - eps_release| / max|eps_release| over the 4 items"}
    for family in FAMILIES:
        base = load_release_unet(folder / f"{family}.ckpt", read_release_config(folder / f"{family}.json"))
        io = load_file(str(folder / f"{family}.io.safetensors"))
        cond = {"mask": io["mask"]} if "mask" in io else {"layout": io["layout"], "context": io["text"]}
        cond = {k: v.to(device) for k, v in cond.items()}
        row = {}
        for name, dtype in DTYPES.items():
            try:
                model = InPrecision(copy.deepcopy(base), dtype).to(device)
                with torch.no_grad():
                    eps = model(io["x"].to(device), io["t"].to(device), cond).cpu()
                row[name] = float((eps - io["eps"]).abs().max() / io["eps"].abs().max())
            except Exception as err:
                row[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        out[family] = row
    return out


# --- main ------------------------------------------------------------------------------------------

def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {name}: CUDA is not available on this machine (devices here: cpu); use --device cpu --tiny")
    return torch.device(name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = device_of(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "check": "gpu_check", "model": NAME + (" (tiny widths)" if args.tiny else " (full size, random weights)"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
        "memory_method": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of the process (VmHWM)",
        "load_average_before": os.getloadavg()}
    t0 = time.perf_counter()
    module = build_random_module(NAME, tiny=args.tiny, seed=0).to(device)
    result["build_s"] = round(time.perf_counter() - t0, 1)
    result["unet_parameters"] = sum(p.numel() for p in module.model.parameters())
    section(result, "exactness", lambda: check_exactness(device, release_dir(args.release_dir)))
    section(result, "sampling", lambda: check_sampling(module, device, args.samples, args.steps))
    section(result, "training", lambda: check_training(module, device, args.train_batch))
    section(result, "layout_attention", lambda: check_layout_attention(device, args.tiny, args.repeats))
    if args.compile:
        dtype = torch.float32 if device.type == "cpu" else torch.float16
        section(result, "compile", lambda: check_compile(module, device, dtype, args.repeats, args.compile_backend))
    else:
        result["compile"] = {"skipped": "--no-compile"}
    result["load_average_after"] = os.getloadavg()
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cuda, cuda:N or cpu")
    p.add_argument("--tiny", action="store_true", help="toy widths (for the CPU and the test)")
    p.add_argument("--samples", type=int, default=None, help="images per sampling run (default 8; --tiny 2)")
    p.add_argument("--steps", type=int, default=None, help="PLMS steps (default 20; --tiny 2)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default 4; --tiny 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of the layout-attention and compile checks")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile check")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (inductor; 'eager' checks graph capture only, "
                                                                 "in seconds where inductor's C++ build takes minutes on a small CPU)")
    p.add_argument("--release-dir", default=None, help="the release fixtures (default: ../shared/release)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_check.json, --tiny gpu_check_cpu_tiny.json)")
    a = p.parse_args(argv)
    a.samples = a.samples or (2 if a.tiny else 8)
    a.steps = a.steps or (2 if a.tiny else 20)
    a.train_batch = a.train_batch or (2 if a.tiny else 4)
    a.out = Path(a.out or ROOT / "benchmarks" / "results" / ("gpu_check_cpu_tiny.json" if a.tiny else "gpu_check.json"))
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
