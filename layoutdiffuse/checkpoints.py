"""Checkpoint files: reading, checking, exporting -- never executing code from a file.

* :func:`read_checkpoint` -- a Lightning ``.ckpt`` written by ``train`` (``torch.load(weights_only=True)``).
* :func:`read_weights` -- a ``.safetensors`` export (:func:`export_weights`), read straight onto a
  device in a chosen precision.
* :func:`read_module_file` -- either, with its metadata checked: what
  :func:`layoutdiffuse.factory.load_checkpoint` rebuilds a module from.
* :func:`check_fits` -- the tensors must be exactly the UNet the metadata describes (checked on the
  ``meta`` device, before anything is allocated).
* :func:`sampling_model` -- the sampling (EMA) denoiser of a checkpoint, for fine-tuning and adapting.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode

from .errors import UserError
from .config import check_checkpoint_metadata, check_sampling_section
from .files import check_readable, checkpoint_format, save_safetensors
from .nn import UNet
from .sd.spec import is_foundation_config
from .training.meta import CKPT_KEY, checkpoint_meta

if TYPE_CHECKING:  # annotations only: reading a file for sampling needs no Lightning
    import pytorch_lightning as pl


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (tensors and plain data only) with a clear error."""
    path = check_readable(path, "checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # never echo torch's text: it advises loading the file unsafely
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # not a pickle of objects: damaged, or not a checkpoint at all
            reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
            raise UserError(f"{path} is not a readable checkpoint (corrupted, or not a torch checkpoint)"
                            + (f": {reason.group(1).strip()}" if reason else "")) from None
        what = f" (it references {found.group(1)})"
        raise UserError(f"{path} holds pickled Python objects{what}, not only tensors and plain data; it is refused because "
                        "loading it could run code. Use a checkpoint written by layoutdiffuse, or a .safetensors export") from None
    except Exception as err:
        raise UserError(f"{path} is not a readable checkpoint (corrupted, or not a torch checkpoint): {err or type(err).__name__}") from err
    if not isinstance(ckpt, dict) or CKPT_KEY not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a layoutdiffuse checkpoint (no '{CKPT_KEY}' entry); train one with `python -m layoutdiffuse train -c CONFIG`")
    return ckpt


def read_weights(path: Path, map_location: str | torch.device = "cpu", dtype: torch.dtype | None = torch.float32) -> dict[str, Any]:
    """A ``.safetensors`` export as a checkpoint dict (``state_dict`` under ``ema.module.``), each
    tensor read straight onto ``map_location``, floating-point ones in ``dtype`` (``None``: as stored)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = (f.metadata() or {}).get(CKPT_KEY)
            state = {f"ema.module.{k}": cast(f.get_tensor(k), dtype) for k in f.keys()}
    except Exception as err:
        raise UserError(f"{path} is not a readable safetensors file: {err}") from err
    if meta is None:
        raise UserError(f"{path} is not a layoutdiffuse export (no '{CKPT_KEY}' metadata)")
    try:
        meta = json.loads(meta)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: its '{CKPT_KEY}' metadata is not valid JSON ({err})") from None
    return {CKPT_KEY: meta, "state_dict": state}


def cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``tensor`` in ``dtype`` when it is floating point; integer tensors (counters, ids) and ``dtype=None`` unchanged."""
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def read_module_file(path: str | Path, map_location: str | torch.device = "cpu", dtype: torch.dtype | None = torch.float32) -> dict[str, Any]:
    """A trained module's file (``.ckpt`` or ``.safetensors`` export) as a checkpoint dict whose
    metadata holds ``config``, ``model`` and ``image_shape``; floating-point tensors in ``dtype``
    (``None``: as stored)."""
    path = check_readable(path, "checkpoint")
    if checkpoint_format(path) == "safetensors":  # by content: an export named .ckpt (or nothing) reads too
        ckpt = read_weights(path, map_location, dtype)
    else:
        ckpt = read_checkpoint(path, map_location)
        ckpt["state_dict"] = {k: cast(v, dtype) for k, v in ckpt["state_dict"].items()}
    try:
        check_checkpoint_metadata(ckpt[CKPT_KEY])  # types and every size bounded, before anything is built
    except UserError as err:
        raise UserError(f"checkpoint {path}: its '{CKPT_KEY}' metadata is damaged or foreign: {err}") from None
    return ckpt


def sampling_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights used for sampling (EMA when present) from a module state dict, as a UNet state dict."""
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in state_dict) else "model."
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def describe(architecture: dict[str, Any]) -> str:
    if "unet_class" in architecture:
        unet = architecture.get("unet") if isinstance(architecture.get("unet"), dict) else {}
        return f"{architecture['unet_class']}(" + ", ".join(f"{k}={unet[k]}" for k in ("block_out_channels", "layers_per_block") if k in unet) + ", layout adaptor)"
    keys = ("base_channel", "channel_mult", "num_res_blocks", "attn_levels", "num_heads")
    return "UNet(" + ", ".join(f"{k}={architecture[k]}" for k in keys if k in architecture) + (", layout adaptor)" if architecture.get("layout") else ")")


def check_fits(path: Path, architecture: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
    """The checkpoint's sampling tensors must be exactly the UNet its metadata describes: same keys,
    same shapes. The UNet is built on the ``meta`` device (no memory), so an architecture announcing
    huge tensors is refused before anything is allocated."""
    if not isinstance(architecture, dict):
        raise UserError(f"checkpoint {path}: its model description must be an object, got {type(architecture).__name__}")
    adaptor_log = logging.getLogger("layoutdiffuse.nn.adaptor")  # a shape-only probe is not a model being built: no log line
    try:
        with torch.device("meta"), MetaWithoutRandomInit(), contextlib.ExitStack() as stack:
            stack.callback(setattr, adaptor_log, "disabled", adaptor_log.disabled)
            adaptor_log.disabled = True
            probe = model_from_architecture(architecture)
    except UserError as err:
        raise UserError(f"checkpoint {path} describes an invalid model: {err}") from None
    except (TypeError, KeyError, ValueError) as err:
        raise UserError(f"checkpoint {path} describes a model this version cannot build: {str(err)[:200]}") from None
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in sampling_state_dict(state_dict).items() if not k.startswith("n_averaged")}
    problems = [f"{k}: {list(have[k])} in the file, {list(want[k])} in the model" for k in want if k in have and have[k] != want[k]]
    problems += [f"missing {k}" for k in want if k not in have] + [f"unexpected {k}" for k in have if k not in want]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} keys in all)" if len(problems) > 4 else "")
        raise UserError(f"checkpoint {path} does not fit the model it describes, {describe(architecture)}: {shown}")


class MetaWithoutRandomInit(TorchFunctionMode):
    """Inside the block, tensors made on the ``meta`` device are not drawn at random: ``normal_``
    initialisers leave a meta tensor as it is and ``torch.randn`` on the meta device gives an empty one
    (meta tensors hold no values; torch's meta versions of these import ``torch._dynamo`` and sympy,
    about two seconds of a command's start-up on a small machine). Tensors elsewhere are drawn as usual."""

    NORMAL_INITS = (torch.Tensor.normal_, torch.nn.init.normal_, torch.nn.init.trunc_normal_)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.NORMAL_INITS:
            tensor = args[0] if args else kwargs["tensor"]  # Tensor.normal_(self, ...) or init.normal_(tensor=..., ...)
            if tensor.is_meta:
                return tensor
        elif func is torch.randn and torch.device(kwargs.get("device") or torch.get_default_device()).type == "meta":
            return torch.empty(*args, **{k: v for k, v in kwargs.items() if k != "generator"})
        return func(*args, **kwargs)


def is_plain_unet(meta: dict[str, Any]) -> bool:
    """True when the file's denoiser is a :class:`UNet` (checked by :func:`check_fits`), not a
    diffusers layout UNet (a foundation model, or a converted release checkpoint)."""
    return not is_foundation_config(meta["config"]) and not (isinstance(meta["model"], dict) and "unet_class" in meta["model"])


def model_from_architecture(arch: dict[str, Any]) -> torch.nn.Module:
    """The denoiser of a checkpoint's ``model`` entry: a :class:`UNet`, or a diffusers layout UNet
    (``unet_class`` set: e.g. a converted release checkpoint without its foundation)."""
    if "unet_class" in arch:
        from .sd.layout_unet import LayoutDiffusersUNet

        return LayoutDiffusersUNet.from_config(arch)
    return UNet(**arch)


def sampling_model(path: str | Path) -> torch.nn.Module:
    """The sampling (EMA) denoiser of a trained module's file, in train mode and float32: what
    ``init_ckpt`` (fine-tuning) and ``adapt.foundation_ckpt`` (adapting) start from."""
    ckpt = read_module_file(path)
    meta = ckpt[CKPT_KEY]
    if is_plain_unet(meta):
        check_fits(Path(path), meta["model"], ckpt["state_dict"])
    model = model_from_architecture(meta["model"])
    state = {k: v for k, v in sampling_state_dict(ckpt["state_dict"]).items() if not k.startswith("n_averaged")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"checkpoint {path} does not fit the model it describes: {str(err).splitlines()[-1].strip()}") from None
    return model.train()


def module_state(module: pl.LightningModule, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A file's state dict as ``module``'s: a weights export (EMA weights only) fills the live model
    too, and the EMA counter, or drops the EMA entries for a module without EMA."""
    if any(k.startswith("model.") for k in state):
        return state
    state = {**state, **{"model." + k[len("ema.module."):]: v for k, v in state.items()}}
    if module.ema is not None:
        return {**state, "ema.n_averaged": torch.tensor(1, device=next(iter(state.values())).device)}
    return {k: v for k, v in state.items() if not k.startswith("ema.module.")}


def export_weights(module: pl.LightningModule, path: str | Path, half: bool = True, sampling: dict[str, Any] | None = None) -> Path:
    """Write the sampling weights (EMA when kept) and the metadata as one small ``.safetensors`` file.

    ``sampling``: sampler settings (``sampler``, ``steps``, ``guidance``, ...) that become the file's
    defaults in place of the training config's ``diffusion.sampling`` (a sampler chosen after training,
    on samples of the trained model); checked as that config section is."""
    meta = checkpoint_meta(module)
    if sampling:
        check_sampling_section(sampling, "sampling")
        config = copy.deepcopy(meta["config"])
        diffusion = config.setdefault("diffusion", {})
        diffusion["sampling"] = {**diffusion.get("sampling", {}), **sampling}
        meta = {**meta, "config": config}
    state = {k: (v.half() if half and v.is_floating_point() else v.float() if v.is_floating_point() else v).contiguous().cpu()
             for k, v in module.sampling_model.state_dict().items() if not k.startswith("n_averaged")}
    return save_safetensors(state, path, metadata={CKPT_KEY: json.dumps(meta)})
