"""Where a model runs and in which precision: the one resolver behind every ``device`` / ``dtype``
option (``load_checkpoint``, ``load_model``, ``sample``, ``edit``, the CLI's ``--device`` / ``--dtype``).

* device: ``auto`` (the GPU when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
* dtype: ``auto``, ``float32``, ``float16``, ``bfloat16``. ``auto`` is half precision for latent
  (Stable Diffusion / LDM) models on CUDA -- bfloat16 where the GPU supports it, else float16 -- and
  float32 everywhere else (pixel models are small; the CPU and MPS run float32). ``float16`` on the
  CPU is refused (no fast kernels: the shipped model's 25-step grid did not finish in 7x its float32
  time); ``bfloat16`` runs there.

Only the denoiser (and the frozen text encoder) run in the chosen precision; the sampler's arithmetic
stays float32 (:meth:`~layoutdiffuse.training.ddpm.DDPMTraining.prepare_sampling`) and the autoencoder
decodes as its config says (``force_upcast``).
"""
from __future__ import annotations

import torch

from .errors import UserError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def available_devices() -> list[str]:
    """The devices this machine has, e.g. ``["cpu", "cuda:0"]``."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` (or a ``torch.device``) -> a device this machine has."""
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    if not isinstance(device, str):
        raise UserError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    try:
        found = torch.device(device)
    except RuntimeError:
        found = None
    if found is None or found.type not in ("cpu", "cuda", "mps") or (found.type != "cuda" and found.index not in (None, 0)):
        raise UserError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    has = available_devices()
    if found.type == "cuda" and (not torch.cuda.is_available() or (found.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device {device!r} is not available: this machine has {', '.join(has)}")
    if found.type == "mps" and "mps" not in has:
        raise UserError(f"device {device!r} is not available: this machine has {', '.join(has)}")
    return found


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, latent: bool = False) -> torch.dtype:
    """``auto`` | ``float32`` | ``float16`` | ``bfloat16`` (or a ``torch.dtype``) for a model on
    ``device``; ``latent``: a latent (Stable Diffusion / LDM) model, which ``auto`` runs in half
    precision on CUDA."""
    if dtype is None or dtype == "auto":
        if device.type == "cuda" and latent:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of: auto, {', '.join(DTYPES)}")
    if dtype == "float16" and device.type == "cpu":  # measured: the shipped model's 25-step grid took > 7x its float32 time
        raise UserError("dtype float16 on the CPU is refused (the CPU has no fast float16 kernels); use bfloat16 or float32")
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16; use float16 or float32")
    return DTYPES[dtype]


def resolve(device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto",
            latent: bool = False) -> tuple[torch.device, torch.dtype]:
    """:func:`resolve_device` then :func:`resolve_dtype`."""
    found = resolve_device(device)
    return found, resolve_dtype(dtype, found, latent)
