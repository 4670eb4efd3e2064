"""The inference interface of the training modules: what sampling, editing, the widget and evaluation
ask a module (:class:`SamplingInterface`, mixed into :class:`~layoutdiffuse.training.ddpm.DDPMTraining`),
and the sampling set-up they all use (:meth:`SamplingInterface.prepare_sampling` -> :class:`SamplingPlan`).

Callers outside ``training/`` read these declared properties and never probe a module's parts.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..diffusion import classifier_free_guidance, conditioned, make_sampler
from ..diffusion.gaussian import ModelFn
from ..diffusion.guidance import check_guidance, class_labels, null_condition
from ..errors import UserError

if TYPE_CHECKING:  # annotations only: this module imports without Lightning (a SamplingModule samples without it)
    import pytorch_lightning as pl


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, its previous mode restored however the block ends."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class SamplingInterface:
    """Declared inference attributes and the sampling set-up. Expects of the module: ``model`` and
    ``ema`` (denoiser and its EMA copy or ``None``), ``diffusion``, ``image_shape``, ``sampling_args``,
    ``class_names``, ``device`` (a LightningModule, or a :class:`~layoutdiffuse.training.sampling_module.SamplingModule`)."""

    @property
    def sampling_model(self) -> nn.Module:
        """The EMA weights when kept, else the live model."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def is_layout_model(self) -> bool:
        """True when the denoiser reads box layouts (it has a layout adaptor)."""
        return getattr(self.model, "adaptor", None) is not None

    @property
    def is_mask_model(self) -> bool:
        """True for layout models that read part masks ``(B, H, W)`` instead of boxes (e.g. a converted ``celeb_mask``)."""
        return self.is_layout_model and bool(getattr(self.model.adaptor, "mask", False))

    @property
    def is_phrase_model(self) -> bool:
        """True for layout models whose boxes carry a phrase each (``cond["box_text"]``) instead of a class."""
        return self.is_layout_model and bool(getattr(self.model.adaptor, "reads_text", False))

    @property
    def lacks_text_encoder(self) -> bool:
        """True when the denoiser reads text but the module holds no text encoder (converted without its foundation)."""
        return bool(getattr(self.model, "text", False)) and not self.is_text_model

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
        """The names of the layout classes (ids as names when none were stored); empty for models without
        layouts and for phrase models (their boxes name themselves)."""
        if not self.is_layout_model or self.is_phrase_model:
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
