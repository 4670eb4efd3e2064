"""``DDPMTraining``: the LightningModule that trains a denoising model with a Gaussian diffusion.

The module holds the research logic (loss, optimizer, EMA, sampling); the Lightning ``Trainer``
holds the engineering (devices, DDP, precision, checkpoints). Customise a dataset by overriding
:meth:`DDPMTraining.process_batch`, exactly as in the original release::

    class DDPM_MNIST(DDPMTraining):
        def process_batch(self, y_0, mode='train'):
            return super().process_batch(y_0[0], mode)

Randomness of a training step (timesteps, noise, condition dropout) comes from a generator
seeded by ``(seed, global_step, rank)``, so a resumed run draws exactly what an uninterrupted
run would.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..conditions import CONDITIONS
from ..diffusion import GaussianDiffusion, conditioned
from ..diffusion.guidance import drop_condition
from ..errors import UserError
from .inference import SamplingInterface, evaluating  # noqa: F401 (evaluating: public here too)
from .progress import training_fraction
from .sampling_module import PROCESS_KEYS, SAMPLING_DEFAULTS, split_diffusion


LOSS_WEIGHTINGS = ("uniform", "min_snr")


def min_snr_weights(diffusion: GaussianDiffusion, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights ``(B,)`` of the prediction target's MSE at timesteps ``t: (B,)``.

    With ``SNR_t = abar_t / (1 - abar_t)``, the MSE of each target relates to the x0 error as
    ``|eps - eps_hat|^2 = SNR |x0 - x0_hat|^2`` and ``|v - v_hat|^2 = (SNR + 1) |x0 - x0_hat|^2``, so
    the weight ``min(SNR, gamma) / SNR`` (eps), ``min(SNR, gamma)`` (x0), ``min(SNR, gamma) / (SNR + 1)``
    (v) makes every target's loss ``min(SNR, gamma) |x0 - x0_hat|^2``.
    """
    snr = (diffusion.sqrt_alphas_cumprod[t] / diffusion.sqrt_one_minus_alphas_cumprod[t]) ** 2  # accurate near t = 0
    clamped = snr.clamp(max=gamma)
    return {"eps": clamped / snr, "x0": clamped, "v": clamped / (snr + 1)}[diffusion.prediction]


#: generator offsets of the loss noise per stage (fixed numbers: ``hash(str)`` is salted per process)
MODE_OFFSETS = {"train": 0, "val": 1, "test": 2}


def ema_multi_avg(decay: float, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
    """EMA update ``avg <- decay * avg + (1 - decay) * current`` for ``AveragedModel`` (picklable, so
    ``ddp_spawn`` can ship the module)."""
    torch._foreach_lerp_(averaged, current, 1 - decay)


class DDPMTraining(SamplingInterface, pl.LightningModule):
    """Train ``denoising_model`` as a DDPM.

    Args:
        denoising_model: ``model(x_t, t, cond) -> raw output`` (e.g. :class:`layoutdiffuse.nn.UNet`).
        diffusion: a :class:`GaussianDiffusion` or its keyword arguments.
        image_shape: ``(C, H, W)`` of generated images.
        optimizer: ``{"lr", "weight_decay", "betas", "train", "adaptor_lr"}``; ``train`` is
            ``all`` | ``freeze_backbone`` | ``separate`` for adapted layout models.
        lr_scheduler: ``{"name": "constant" | "warmup" | "cosine", "warmup_steps", "total_steps"}``.
            ``cosine`` without ``total_steps`` follows the trainer's budget: it decays over the
            fraction of ``max_steps`` / ``max_time`` used so far, whichever ends the run first
            (:func:`~layoutdiffuse.training.progress.training_fraction`).
        ema_decay: EMA decay of the weights used for sampling (0 disables EMA).
        loss_weighting: ``uniform`` (L_simple of the prediction target) or ``min_snr`` (Hang et
            al. 2023: every target weighted to ``min(SNR_t, min_snr_gamma) * |x0 - x0_hat|^2``).
        min_snr_gamma: the clamp of ``min_snr``.
        cond_drop_prob: probability of replacing a sample's condition by the null condition
            (classifier-free guidance training).
        sampling: default sampler options ``{"sampler", "steps", "clip", "guidance", ...}``.
        seed: base seed of the per-step generators.
        config: the full experiment config, stored in checkpoints so they rebuild themselves.
        class_names: the names of the layout classes (stored in checkpoints; see :attr:`label_names`).

    The inference interface every caller uses (sampling, editing, the widget, evaluation):
    :attr:`is_layout_model`, :attr:`is_text_model`, :attr:`is_latent_model`, :attr:`label_classes`,
    :attr:`label_names`, :meth:`prepare_sampling`, :meth:`sample`, :meth:`to_inference`.
    """

    def __init__(
        self,
        denoising_model: nn.Module,
        diffusion: GaussianDiffusion | dict[str, Any] | None = None,
        image_shape: tuple[int, int, int] = (1, 32, 32),
        optimizer: dict[str, Any] | None = None,
        lr_scheduler: dict[str, Any] | None = None,
        ema_decay: float = 0.999,
        cond_drop_prob: float = 0.0,
        sampling: dict[str, Any] | None = None,
        seed: int = 0,
        config: dict[str, Any] | None = None,
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        class_names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.model = denoising_model
        self.diffusion = diffusion if isinstance(diffusion, GaussianDiffusion) else GaussianDiffusion(**(diffusion or {}))
        self.image_shape = tuple(image_shape)
        self.optimizer_args = {"lr": 2e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), "train": "all", "adaptor_lr": None, **(optimizer or {})}
        self.lr_scheduler_args = {"name": "constant", "warmup_steps": 0, "total_steps": None, **(lr_scheduler or {})}
        self.sampling_args = {**SAMPLING_DEFAULTS, **(sampling or {})}
        if not 0 <= cond_drop_prob <= 1:
            raise UserError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
        self.cond_drop_prob = cond_drop_prob
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise UserError(f"unknown loss_weighting '{loss_weighting}'; choose one of: {', '.join(LOSS_WEIGHTINGS)}")
        if not min_snr_gamma > 0:
            raise UserError(f"min_snr_gamma must be > 0, got {min_snr_gamma}")
        self.loss_weighting, self.min_snr_gamma = loss_weighting, float(min_snr_gamma)
        self.seed = seed
        self.config = config or {}
        self.class_names: list[str] = list(class_names or [])
        self.ema = AveragedModel(self.model, multi_avg_fn=partial(ema_multi_avg, ema_decay), use_buffers=True) if ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)

    #: keys of the diffusion process allowed in the config's ``diffusion`` section
    PROCESS_KEYS = PROCESS_KEYS

    @classmethod
    def config_keys(cls) -> dict[str, Any]:
        """Allowed keys of the ``diffusion`` config section and example values for type checks.

        Collected along the MRO, so a subclass whose ``__init__`` forwards ``**kwargs`` (e.g.
        ``DDIMTraining``) still accepts the base class's keys (``optimizer``, ``ema_decay``, ...).
        """
        from ..schema import signature_defaults

        skip = ("denoising_model", "diffusion", "image_shape", "seed", "config", "class_names")
        keys: dict[str, Any] = {}
        for klass in reversed([k for k in cls.__mro__ if issubclass(k, DDPMTraining)]):
            keys.update(signature_defaults(klass.__init__, skip=skip))
        return {**cls.PROCESS_KEYS, **keys}

    @classmethod
    def split_config(cls, section: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``diffusion`` config section -> (GaussianDiffusion kwargs, training kwargs)."""
        return split_diffusion(section, cls.PROCESS_KEYS)

    # --- data --------------------------------------------------------------------------------
    def process_batch(self, batch: Any, mode: str = "train") -> dict[str, Any]:
        """Turn a loader batch into ``{"x0": (B, C, H, W), "cond": dict | None}``.

        The base class accepts an image tensor, or a dict with ``image`` and optional condition
        keys (the kinds of :data:`~layoutdiffuse.conditions.CONDITIONS`). Override to adapt another dataset.
        """
        if isinstance(batch, torch.Tensor):
            return {"x0": batch, "cond": None}
        if isinstance(batch, dict) and "image" in batch:
            cond = {k: batch[k] for k in CONDITIONS if k in batch}  # every condition kind the batch holds
            return {"x0": batch["image"], "cond": cond or None}
        raise TypeError(
            f"process_batch got a {type(batch).__name__}; expected an image tensor or a dict with 'image'. "
            "Override process_batch (e.g. `return super().process_batch(batch[0], mode)` for (image, label) pairs)."
        )

    # --- losses ------------------------------------------------------------------------------
    def step_generator(self, offset: int = 0) -> torch.Generator:
        """A generator seeded by ``(seed, global_step, rank, offset)``: reproducible across resume."""
        g = torch.Generator(device=self.device)
        g.manual_seed(hash((self.seed, self.global_step, self.global_rank, offset)) % (2**62))
        return g

    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform timesteps ``(B,)`` and their importance weights ``(B,)`` (all ones)."""
        t = torch.randint(0, self.diffusion.num_timesteps, (batch_size,), generator=generator, device=self.device)
        return t, torch.ones(batch_size, device=self.device)

    def compute_losses(self, x0: torch.Tensor, t: torch.Tensor, cond: dict[str, Any] | None, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example loss terms; ``"loss": (B,)`` is what is optimised (L_simple here)."""
        return self.diffusion.training_losses(conditioned(self.model, cond), x0, t, noise)

    def shared_step(self, batch: Any, mode: str) -> dict[str, Any]:
        inputs = self.process_batch(batch, mode)
        x0, cond = inputs["x0"], inputs.get("cond")
        g = self.step_generator(MODE_OFFSETS[mode])  # a fixed offset: str hashes are salted per process
        if mode == "train" and cond is not None and self.cond_drop_prob > 0:
            cond = drop_condition(cond, self.cond_drop_prob, g)
        t, weights = self.sample_timesteps(x0.shape[0], g)
        noise = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
        losses = self.compute_losses(x0, t, cond, noise)
        if self.loss_weighting == "min_snr":
            weights = weights * min_snr_weights(self.diffusion, t, self.min_snr_gamma)
        loss = (losses["loss"] * weights).mean()
        if mode == "train":
            self.after_losses(t, losses)
        batch_size = x0.shape[0]
        self.log(f"{mode}/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=mode != "train")
        for key, value in losses.items():
            if key not in ("loss", "x_t") and value.ndim == 1:
                self.log(f"{mode}/{key}", value.mean(), batch_size=batch_size, sync_dist=mode != "train")
        return {"loss": loss, "x0": x0.detach(), "cond": cond, "t": t}

    def after_losses(self, t: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        """Hook after the training losses of a step (the improved-DDPM resampler learns here)."""

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self.shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self.shared_step(batch, "test")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update (before any checkpoint of this step is written)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    # --- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        args = self.optimizer_args
        groups = self.parameter_groups()
        opt = torch.optim.AdamW(groups, lr=args["lr"], weight_decay=args["weight_decay"], betas=tuple(args["betas"]))
        sched = self.lr_scheduler_args
        name, warmup, total = sched["name"], int(sched["warmup_steps"]), sched["total_steps"]
        if name == "constant" and not warmup:
            return opt

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if name == "cosine":
                done = (step - warmup) / max(1, total - warmup) if total else training_fraction(self._trainer)  # None before fit: 0
                return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
            return 1.0

        if name not in ("constant", "warmup", "cosine"):
            raise UserError(f"unknown lr_scheduler '{name}'; choose one of: constant, warmup, cosine")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: everything, or (adapted layout models) as ``optimizer.train`` says."""
        args = self.optimizer_args
        if getattr(self.model, "adaptor", None) is None:
            if args["train"] != "all":
                raise UserError(f"optimizer.train '{args['train']}' needs a model with a layout adaptor; use 'all'")
            return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        from ..adapt import param_groups

        return param_groups(self.model, mode=args["train"], lr=args["lr"], adaptor_lr=args["adaptor_lr"])
