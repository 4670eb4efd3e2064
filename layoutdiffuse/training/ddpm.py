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

import contextlib
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..diffusion import GaussianDiffusion, classifier_free_guidance, conditioned, make_sampler
from ..diffusion.gaussian import ModelFn
from ..diffusion.guidance import check_guidance, class_labels, drop_condition, null_condition
from ..errors import UserError
from .progress import training_fraction


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


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, its previous mode restored however the block ends."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def ema_multi_avg(decay: float, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
    """EMA update ``avg <- decay * avg + (1 - decay) * current`` for ``AveragedModel`` (picklable, so
    ``ddp_spawn`` can ship the module)."""
    torch._foreach_lerp_(averaged, current, 1 - decay)


class DDPMTraining(pl.LightningModule):
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
        self.sampling_args = {"sampler": "ddim", "steps": 50, "clip": True, "guidance": 1.0, **(sampling or {})}
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
    PROCESS_KEYS = {"training": "", "schedule": "", "num_timesteps": 1, "prediction": "", "learn_sigma": False, "beta_start": 0.0, "beta_end": 0.0, "s": 0.0}

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
        process = {k: v for k, v in section.items() if k in cls.PROCESS_KEYS and k != "training"}
        return process, {k: v for k, v in section.items() if k not in cls.PROCESS_KEYS}

    # --- data --------------------------------------------------------------------------------
    def process_batch(self, batch: Any, mode: str = "train") -> dict[str, Any]:
        """Turn a loader batch into ``{"x0": (B, C, H, W), "cond": dict | None}``.

        The base class accepts an image tensor, or a dict with ``image`` and optional condition
        keys (``layout``, ``mask``, ``caption``). Override to adapt another dataset.
        """
        if isinstance(batch, torch.Tensor):
            return {"x0": batch, "cond": None}
        if isinstance(batch, dict) and "image" in batch:
            cond = {k: batch[k] for k in ("layout", "mask", "caption", "context") if k in batch}
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

    # --- the inference interface -----------------------------------------------------------------
    @property
    def sampling_model(self) -> nn.Module:
        """The EMA weights when kept, else the live model."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def is_layout_model(self) -> bool:
        """True when the denoiser reads box layouts (it has a layout adaptor)."""
        return getattr(self.model, "adaptor", None) is not None

    @property
    def is_text_model(self) -> bool:
        """True when the model reads a text prompt (a latent model with a text encoder)."""
        return False

    @property
    def is_latent_model(self) -> bool:
        """True when the diffusion runs in an autoencoder's latent space."""
        return False

    @property
    def label_classes(self) -> int:
        """Classes of a class-conditional model (the ``label`` condition, the MNIST toy); 0 otherwise."""
        return int(getattr(self.model, "num_classes", None) or 0)

    @property
    def label_names(self) -> list[str]:
        """The names of the layout classes (ids as names when none were stored); empty for models without layouts."""
        if not self.is_layout_model:
            return []
        return list(self.class_names) or [str(i) for i in range(self.model.adaptor.num_classes)]

    @property
    def trainer_ref(self) -> pl.Trainer | None:
        """The trainer that fitted this module (``train`` returns the module; its trainer stays reachable)."""
        return self._trainer

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None, strict: bool | None = None,
                             **kwargs: Any) -> "DDPMTraining":
        """A trained module from a layoutdiffuse checkpoint or ``.safetensors`` export, as Lightning users
        expect: :func:`layoutdiffuse.factory.load_checkpoint` (architecture and config come from the file;
        nothing is unpickled). ``map_location``: a device; ``kwargs``: ``device``, ``dtype``. Lightning's
        ``hparams_file`` and ``strict`` do not apply (the file describes itself; loading is always strict)."""
        from ..factory import load_checkpoint  # the one late import up the layers: Lightning puts the loader on the class

        if hparams_file is not None or strict is False:
            raise UserError("load_from_checkpoint: hparams_file and strict=False do not apply; a layoutdiffuse checkpoint describes "
                            "its own model and always loads strictly")
        module = load_checkpoint(checkpoint_path, map_location=map_location, **kwargs)
        if not isinstance(module, cls):
            raise UserError(f"{checkpoint_path} holds a {type(module).__name__}, not a {cls.__name__}")
        return module

    def precision_parts(self) -> list[nn.Module]:
        """The parts that run in the inference precision (the denoiser and its EMA copy)."""
        return [self.model] + ([self.ema] if self.ema is not None else [])

    def to_inference(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "DDPMTraining":
        """Move to ``device``; :meth:`precision_parts` in ``dtype``. The diffusion's coefficients stay float32."""
        self.to(device)
        for part in self.precision_parts():
            part.to(dtype)
        return self

    @property
    def model_dtype(self) -> torch.dtype:
        """The precision the denoiser runs in."""
        return next(self.sampling_model.parameters()).dtype

    def sampling_options(self, **overrides: Any) -> dict[str, Any]:
        """The module's sampling options (``sampling_args``) with the ``overrides`` that are not ``None``."""
        return {**self.sampling_args, **{k: v for k, v in overrides.items() if v is not None}}

    def sampling_conditions(self, n: int, cond: dict[str, Any] | None, guidance: float,
                            negative_prompt: str | Sequence[str] | None = None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """``(cond, null)`` the denoiser sees for ``n`` samples: a class-conditional model given no ``cond``
        draws image ``i`` of class ``i % label_classes``; ``null`` is the unguided branch (``None`` when
        ``guidance`` is 1)."""
        if negative_prompt is not None:
            raise UserError("negative_prompt needs a text foundation (this model has no text encoder)")
        if cond is None and self.label_classes:
            cond = {k: v.to(self.device) for k, v in class_labels(n, self.label_classes).items()}
        return cond, (null_condition(cond) if cond is not None and guidance != 1 else None)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """A finished sample ``(n, C, H, W)`` -> images in [-1, 1]."""
        return x.clamp(-1, 1)

    def prepare_sampling(self, n: int, cond: dict[str, Any] | None = None, use_ema: bool = True,
                         negative_prompt: str | Sequence[str] | None = None, **overrides: Any) -> SamplingPlan:
        """What every sampling caller needs for ``n`` samples conditioned on ``cond``: the sampler, the
        guided model function, the decode step (:class:`SamplingPlan`).

        ``overrides`` replace the module's sampling options (``None`` keeps the module's): ``sampler``
        (a registered name), ``steps``, ``guidance`` (classifier-free scale), ``clip``, ``eta``, ...
        The model function takes and returns float32 (the sampler's arithmetic, the guidance
        combination and multistep history stay float32); the denoiser runs in its own precision.
        """
        opts = self.sampling_options(**overrides)
        name, guidance = opts.pop("sampler"), check_guidance(opts.pop("guidance"))
        model = self.sampling_model if use_ema else self.model
        cond, null = self.sampling_conditions(n, cond, guidance, negative_prompt)
        run = in_precision(model, self.model_dtype, self.device)
        if null is None:
            model_fn = conditioned(run, cond)
        else:
            model_fn = classifier_free_guidance(run, cond, null, guidance, pred_channels=self.image_shape[0])
        return SamplingPlan(make_sampler(name, self.diffusion, **opts), model_fn, model, (n, *self.image_shape), self.decode)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        use_ema: bool = True,
        decode: bool = True,
        **overrides: Any,
    ) -> torch.Tensor:
        """Draw ``n`` images ``(n, C, H, W)`` in [-1, 1] (``decode=False``: the raw samples, latents for
        a latent model). ``overrides``: as :meth:`prepare_sampling` (``sampler``, ``steps``, ``guidance``,
        ``negative_prompt``, ...). A class-conditional model given no ``cond`` draws image ``i`` of class
        ``i % label_classes``."""
        plan = self.prepare_sampling(n, cond, use_ema, **overrides)
        with evaluating(plan.model):
            x = plan.sampler.sample(plan.model_fn, plan.shape, generator=generator, progress=progress, device=self.device)
        return plan.decode(x) if decode else x


@dataclass
class SamplingPlan:
    """What :meth:`DDPMTraining.prepare_sampling` returns: ``sampler`` (a :class:`~layoutdiffuse.diffusion.samplers.Sampler`),
    ``model_fn(x_t, t)`` (float32 in and out, guidance included), ``model`` (the denoiser, to put in
    eval mode), ``shape`` ``(n, C, H, W)`` of the samples, ``decode`` (samples -> images in [-1, 1])."""

    sampler: Any
    model_fn: ModelFn
    model: nn.Module
    shape: tuple[int, ...]
    decode: Callable[[torch.Tensor], torch.Tensor]


def in_precision(model: nn.Module, dtype: torch.dtype, device: torch.device) -> Callable[..., torch.Tensor]:
    """``model(x, t, cond)`` run in ``dtype`` (under autocast, so float32 inputs such as timestep
    embeddings and box coordinates meet the weights' precision), its output returned as float32."""
    if dtype == torch.float32:
        return model

    def run(x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any] | None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return model(x.to(dtype), t, cond).float()

    return run
