"""A full-size rehearsal of the five published models on the CPU, random weights, nothing downloaded.

    nice -n 10 python benchmarks/rehearse_full_size.py [--models celeb_mask cocostuff ...] [--work /tmp/rehearse]
    python benchmarks/rehearse_full_size.py --tiny        # the same machinery on the release fixtures' tiny models

For each published model (``cocostuff_SD1_5``, ``cocostuff_SD2_1``, ``cocostuff``, ``vg``,
``celeb_mask``), one after the other, each phase in a subprocess of its own (its peak RSS is its
``VmHWM``, read by itself at the end):

1. ``write``: a release-format checkpoint (``{"state_dict": {"denoise_fn.*": ...}}``) holding every key
   of ``../shared/release/NAME.keys.tsv`` as a random tensor of the listed shape, stored in float16
   (``--ckpt-dtype``; the converter reads any floating dtype), and the foundation as a diffusers
   folder with random float32 weights and a tokenizer made locally
   (:mod:`layoutdiffuse.sd.random_foundation`);
2. ``convert``: ``python -m layoutdiffuse convert-release`` of the two;
3. ``sample_float32`` / ``sample_bfloat16``: ``load_checkpoint`` of the converted file, then one image
   at the model's resolution (a 4-box layout, a caption, the release's guidance, PLMS with 2 steps);
   bfloat16: the UNet and text encoder cast after loading (float32 in and out of the UNet, the
   sampler in float32; the autoencoder stays float32 where its config says ``force_upcast``);
   seconds per sampling step (the sampler's time / 2; the text encoding is inside it), decode seconds;
4. ``train``: one adaptor training step at full size (frozen backbone, AdamW on the adaptor,
   gradient checkpointing on, bf16 autocast with float32 weights), batch 1, VAE and text encoding
   inside the step.

JSON to ``--out`` (default ``benchmarks/results/rehearse_full_size.json``; ``--tiny``: printed only).
Large files live under ``--work`` and are deleted after each model (``--keep`` keeps them).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

MODELS = ("celeb_mask", "cocostuff", "vg", "cocostuff_SD1_5", "cocostuff_SD2_1")  # smallest first
#: the release fixtures' tiny model of each published model's family (``--tiny``)
TINY_FAMILY = {"cocostuff_SD1_5": "sd_layout", "cocostuff_SD2_1": "sd_layout", "cocostuff": "ldm_text_layout",
               "vg": "ldm_text_layout", "celeb_mask": "celeb_mask"}
PHASES = ("write", "convert", "sample_float32", "sample_bfloat16", "train")
RELEASE_CANDIDATES = [ROOT.parent / "shared" / "release", ROOT / "shared" / "release", Path("/work/shared/release")]
STEPS = 2


def release_dir(given: str | None = None) -> Path:
    for p in ([Path(given)] if given else RELEASE_CANDIDATES):
        if (p / "README.md").is_file():
            return p
    sys.exit("release manifests not found: ../shared/release beside the repository (or --release-dir)")


def peak_rss_gib() -> float:
    with open("/proc/self/status") as f:
        return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20, 3)


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- the phases (each runs in its own process) ----------------------------------------------------

def paths(work: Path) -> dict[str, Path]:
    return {"ckpt": work / "release.ckpt", "foundation": work / "foundation", "converted": work / "converted.safetensors",
            "config": work / "release_config.json"}


def phase_write(name: str, work: Path, tiny: bool, release: Path, ckpt_dtype: str) -> dict[str, Any]:
    from layoutdiffuse.release import architecture, read_release_config, read_release_state_dict
    from layoutdiffuse.release.published import release_config
    from layoutdiffuse.sd.random_foundation import read_manifest, release_scheduler, save_foundation, write_release_checkpoint

    p = paths(work)
    work.mkdir(parents=True, exist_ok=True)
    if tiny:  # the fixture's tiny release model: its keys and config; a foundation of its architecture
        family = TINY_FAMILY[name]
        shapes = {k: tuple(v.shape) for k, v in read_release_state_dict(release / f"{family}.ckpt").items()}
        config = json.loads((release / f"{family}.json").read_text())
        arch = architecture(read_release_config(config))
        unet = (arch["unet_class"], arch["unet"])
    else:
        shapes = read_manifest(release / f"{name}.keys.tsv")
        config, unet = release_config(name), None
    p["config"].write_text(json.dumps(config))
    t0 = time.perf_counter()
    write_release_checkpoint(shapes, p["ckpt"], dtype=getattr(torch, ckpt_dtype))
    ckpt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    save_foundation(name, p["foundation"], tiny=tiny, unet=unet, scheduler=release_scheduler(read_release_config(config)["beta_schedule_args"]))
    return {"release_keys": len(shapes), "release_parameters": sum(int(torch.Size(s).numel()) for s in shapes.values()),
            "ckpt_dtype": ckpt_dtype, "ckpt_bytes": size_of(p["ckpt"]), "foundation_bytes": size_of(p["foundation"]),
            "write_ckpt_s": round(ckpt_s, 1), "write_foundation_s": round(time.perf_counter() - t0, 1)}


def phase_convert(name: str, work: Path) -> dict[str, Any]:
    from layoutdiffuse.cli import main

    p = paths(work)
    args = ["convert-release", str(p["ckpt"]), "--release-config", str(p["config"]), "--foundation", str(p["foundation"]),
            "--out", str(p["converted"])]
    if name != "celeb_mask" and json.loads(p["config"].read_text())["denoising_model"]["model_args"]["instance_prompt_args"]["num_classes"] == 181:
        args += ["--class-names", "coco-stuff"]
    if main(args) != 0:
        raise RuntimeError("convert-release failed")
    return {"converted_bytes": size_of(p["converted"])}


def condition(module: Any, n: int) -> dict[str, Any]:
    from gpu_check import CAPTIONS, random_layouts

    if module.model.layout_config["mask"]:
        g = torch.Generator().manual_seed(0)
        size = module.image_shape[-1] * module.autoencoder.downsample_factor
        return {"mask": torch.randint(0, module.model.layout_config["num_classes"], (n, size, size), generator=g)}
    return {"layout": random_layouts(n, classes=module.model.layout_config["num_classes"]), "caption": CAPTIONS[:n]}


def phase_sample(work: Path, dtype_name: str) -> dict[str, Any]:
    from layoutdiffuse.experiment import load_checkpoint
    from layoutdiffuse.sd.random_foundation import InPrecision

    t0 = time.perf_counter()
    module = load_checkpoint(paths(work)["converted"])
    load_s = time.perf_counter() - t0
    cond = condition(module, 1)
    if dtype_name != "float32":
        dtype = getattr(torch, dtype_name)
        module.model = InPrecision(module.model, dtype)
        if module.text_encoder is not None:
            module.text_encoder.to(dtype)
        if not module.autoencoder.upcast:
            module.autoencoder.to(dtype)
    t0 = time.perf_counter()
    z = module.sample(1, cond, steps=STEPS, decode=False, generator=torch.Generator().manual_seed(0))
    sample_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = module.decode_latents(z)
    decode_s = time.perf_counter() - t0
    return {"load_s": round(load_s, 1), "s_per_step": round(sample_s / STEPS, 2), "decode_s": round(decode_s, 1),
            "guidance": module.sampling_args["guidance"], "image": list(images.shape), "finite": bool(torch.isfinite(images).all()),
            "autoencoder_dtype": str(next(module.autoencoder.parameters()).dtype).replace("torch.", "")}


def phase_train(work: Path) -> dict[str, Any]:
    from gpu_check import train_step

    from layoutdiffuse.experiment import load_checkpoint

    module = load_checkpoint(paths(work)["converted"])
    module.model.enable_gradient_checkpointing()
    size = module.image_shape[-1] * module.autoencoder.downsample_factor
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(1, 3, size, size, generator=g) * 2 - 1, **condition(module, 1)}
    out = train_step(module, batch, "freeze_backbone", torch.device("cpu"), steps=1)
    out["gradient_checkpointing"] = bool(module.model.unet.is_gradient_checkpointing)
    out["image_size"] = size
    return out


def run_phase(args: argparse.Namespace) -> None:
    work, name = Path(args.work), args.model
    t0 = time.perf_counter()
    if args.phase == "write":
        out = phase_write(name, work, args.tiny, release_dir(args.release_dir), args.ckpt_dtype)
    elif args.phase == "convert":
        out = phase_convert(name, work)
    elif args.phase.startswith("sample_"):
        out = phase_sample(work, args.phase[len("sample_"):])
    else:
        out = phase_train(work)
    out.update(wall_s=round(time.perf_counter() - t0, 1), peak_rss_GiB=peak_rss_gib())
    print("RESULT " + json.dumps(out))


# --- the driver -------------------------------------------------------------------------------------

def rehearse(name: str, args: argparse.Namespace, result: dict[str, Any], save: Any = None) -> dict[str, Any]:
    """Run the phases of ``name``, filling ``result`` (``save()`` after each phase: partial runs keep their figures)."""
    work = Path(args.work) / name
    try:
        for phase in args.phases:
            cmd = [sys.executable, __file__, "--phase", phase, "--model", name, "--work", str(work), "--ckpt-dtype", args.ckpt_dtype,
                   "--threads", str(args.threads)] + (["--tiny"] if args.tiny else []) + (
                   ["--release-dir", args.release_dir] if args.release_dir else [])
            env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                said = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]  # the CLI's one-line errors
                tail = (said or proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                result[phase] = {"error": tail, "returncode": proc.returncode}
                break
            result[phase] = json.loads(lines[-1][len("RESULT "):])
            print(f"{name} {phase}: {result[phase]}", file=sys.stderr, flush=True)
            if save is not None:
                save()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def parameters_of(name: str) -> dict[str, int]:
    """UNet parameters of the published model (foundation + adaptor), counted on ``meta`` tensors."""
    from layoutdiffuse.release import architecture, build_release_unet, read_release_config

    model = build_release_unet(architecture(read_release_config(name)), device="meta")
    adaptor = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("unet."))
    return {"unet_parameters": sum(p.numel() for p in model.parameters()), "adaptor_parameters": adaptor}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    p.add_argument("--tiny", action="store_true", help="the release fixtures' tiny models (the machinery, in seconds)")
    p.add_argument("--work", default="/tmp/rehearse_full_size", help="folder for the large temporary files")
    p.add_argument("--keep", action="store_true", help="keep the files under --work")
    p.add_argument("--ckpt-dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="storage of the release checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--release-dir", default=None)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/rehearse_full_size.json; --tiny: none)")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.phase:
        run_phase(args)
        return 0
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "rehearsal": "published architectures, random weights: write, convert-release, load, sample (2 PLMS steps), one adaptor "
                     "training step; each phase in its own process", "tiny": args.tiny, "machine": os.uname().nodename,
        "cpu_threads": args.threads, "cpus": os.cpu_count(), "torch": torch.__version__, "load_average_before": os.getloadavg(),
        "models": {}}
    path = Path(args.out) if args.out else (None if args.tiny else ROOT / "benchmarks" / "results" / "rehearse_full_size.json")

    def save() -> None:
        out.update(load_average_after=os.getloadavg(), wall_s=round(time.perf_counter() - t0, 1))
        if path is not None:
            path.write_text(json.dumps(out, indent=2) + "\n")

    for name in args.models:
        out["models"][name] = {} if args.tiny else parameters_of(name)
        rehearse(name, args, out["models"][name], save)
    save()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
