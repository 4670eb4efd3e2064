"""Samplers behind one small interface, swappable by name.

    sampler = make_sampler("ddim", diffusion, steps=50, eta=0.0)
    images = sampler.sample(model_fn, (16, 1, 32, 32), generator=g, progress=True,
                            callback=lambda step, t, x_t, x0: ...)  # optional, after every step

``model_fn(x_t, t) -> raw model output`` with integer timesteps of the *original* chain
``t: (B,)`` in ``[0, T)``. Conditioning and classifier-free guidance are folded into
``model_fn`` (see :mod:`layoutdiffuse.diffusion.guidance`), so samplers know nothing about
layouts or datasets.

A sampler object holds only its settings: what one trajectory remembers (the previous predictions
of a multistep sampler, the last x0 prediction) lives in a :class:`Run` made for that trajectory, so
one sampler may draw several trajectories at once, interleaved or nested.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..registry import Registry
from .gaussian import GaussianDiffusion, ModelFn, extract
from ..errors import UserError

SAMPLERS: Registry[type] = Registry("sampler")

#: ``callback(step, t, x_t, x0_pred)`` after each step: ``step`` counts from 0, ``t`` the (int) timestep
#: the step started from, ``x_t: (B, C, H, W)`` the sample there, ``x0_pred: (B, C, H, W)`` the model's
#: x0 prediction at ``t`` (clipped when the sampler clips)
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class Run:
    """The state of one sampling trajectory: ``history`` the last model predictions a multistep
    sampler keeps (most recent first), ``x0`` the x0 prediction of the last step. :meth:`Sampler.sample`
    makes one per call; a caller that drives :meth:`Sampler.step` itself makes one per trajectory."""

    history: list[torch.Tensor] = field(default_factory=list)
    x0: torch.Tensor | None = None


def spaced_timesteps(num_timesteps: int, steps: int) -> torch.Tensor:
    """``steps`` increasing integer timesteps evenly spread over ``[0, T)``, always including 0 and T-1
    (one step: just ``T - 1``)."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= num_timesteps:
        raise UserError(f"steps must be an integer in [1, {num_timesteps}] (the model's number of timesteps), got {steps!r}")
    steps = int(steps)
    if steps == 1:
        return torch.tensor([num_timesteps - 1])
    return torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long().unique()


class Sampler:
    """Base class: holds the diffusion, the step count and options; ``sample`` draws images.

    Args:
        diffusion: the process the model was trained with.
        steps: number of model evaluations (``None`` = every timestep).
        clip: clamp predicted x0 to [-1, 1] at each step (pixel-space models).
    """

    def __init__(self, diffusion: GaussianDiffusion, steps: int | None = None, clip: bool = False):
        self.diffusion = diffusion
        self.steps = diffusion.num_timesteps if steps is None else steps
        self.timesteps = spaced_timesteps(diffusion.num_timesteps, self.steps)
        self.clip = clip

    def init_noise(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)

    def noise_like(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
        callback: Callback | None = None,
    ) -> torch.Tensor:
        """Draw ``shape`` samples; returns x0 ``(B, C, H, W)``. ``callback``: see :data:`Callback`."""
        device = torch.device(device) if device is not None else self.diffusion.betas.device
        x = self.init_noise(shape, generator, device) if x_T is None else x_T
        steps = list(range(len(self.timesteps) - 1, -1, -1))
        run = Run()
        for step, i in enumerate(tqdm(steps, desc=f"{type(self).__name__} ({self.steps} steps)", disable=not progress, leave=False)):
            x_t, x = x, self.step(model_fn, x, i, generator, run)
            if callback is not None:
                callback(step, int(self.timesteps[i]), x_t, run.x0)
        return x

    def step(self, model_fn: ModelFn, x: torch.Tensor, i: int, generator: torch.Generator | None, run: Run | None = None) -> torch.Tensor:
        """From ``x`` at ``self.timesteps[i]`` to the previous kept timestep (or to x0 when ``i == 0``),
        as the next step of the trajectory ``run`` (``None``: the first step of a new one)."""
        return self.take_step(model_fn, x, i, generator, Run() if run is None else run)

    def take_step(self, model_fn: ModelFn, x: torch.Tensor, i: int, generator: torch.Generator | None, run: Run) -> torch.Tensor:
        """:meth:`step` of each sampler; sets ``run.x0`` (and a multistep sampler's ``run.history``)."""
        raise NotImplementedError

    def t_batch(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), int(self.timesteps[i]), device=x.device, dtype=torch.long)


@SAMPLERS.register("ancestral")
class AncestralSampler(Sampler):
    """DDPM ancestral sampling ``x_{t-1} ~ p(x_{t-1} | x_t)`` on the (possibly respaced) chain.

    ``variance``: ``fixed_small`` (posterior beta~_t), ``fixed_large`` (beta_t, with beta~_1 at
    the first step, as in DDPM), or ``learned`` (improved DDPM, from the model's variance channels).
    With fewer steps than T the chain is respaced (improved DDPM), which is exact for the
    fixed-small and learned variances.
    """

    VARIANCES = ("fixed_small", "fixed_large", "learned")

    def __init__(self, diffusion: GaussianDiffusion, steps: int | None = None, clip: bool = False, variance: str | None = None):
        super().__init__(diffusion, steps, clip)
        variance = variance or ("learned" if diffusion.learn_sigma else "fixed_small")
        if variance not in self.VARIANCES:
            raise UserError(f"unknown variance '{variance}'; choose one of: {', '.join(self.VARIANCES)}")
        if variance == "learned" and not diffusion.learn_sigma:
            raise UserError("variance 'learned' needs a model trained with learn_sigma=True")
        self.variance = variance
        self.chain = diffusion if self.steps == diffusion.num_timesteps else diffusion.respaced(self.timesteps)

    def take_step(self, model_fn: ModelFn, x: torch.Tensor, i: int, generator: torch.Generator | None, run: Run) -> torch.Tensor:
        chain = self.chain.to(x.device)
        j = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)  # index on the respaced chain
        out = model_fn(x, self.t_batch(i, x))
        x0, _ = chain.predict(out, x, j, clip=self.clip)
        run.x0 = x0
        mean, _, log_var = chain.q_posterior(x0, x, j)
        if self.variance == "learned":
            log_var = chain.learned_log_variance(chain.split(out)[1], j)
        elif self.variance == "fixed_large":
            large = torch.cat([chain.posterior_variance[1:2], chain.betas[1:]]).log() if chain.num_timesteps > 1 else chain.betas.log()
            log_var = extract(large, j, x.shape)
        if i == 0:
            return mean
        return mean + torch.exp(0.5 * log_var) * self.noise_like(x, generator)


@SAMPLERS.register("ddim")
class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12): any step subsequence; ``eta = 0`` is deterministic,
    ``eta = 1`` matches DDPM's posterior noise level."""

    def __init__(self, diffusion: GaussianDiffusion, steps: int | None = 50, clip: bool = False, eta: float = 0.0):
        super().__init__(diffusion, steps, clip)
        if eta < 0:
            raise UserError(f"eta must be >= 0, got {eta}")
        self.eta = eta

    def take_step(self, model_fn: ModelFn, x: torch.Tensor, i: int, generator: torch.Generator | None, run: Run) -> torch.Tensor:
        d = self.diffusion
        t = self.t_batch(i, x)
        x0, eps = d.predict(model_fn(x, t), x, t, clip=self.clip)
        run.x0 = x0
        if i == 0:
            return x0
        abar = extract(d.alphas_cumprod, t, x.shape)
        abar_prev = extract(d.alphas_cumprod, self.t_batch(i - 1, x), x.shape)
        sigma = self.eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        x = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if self.eta > 0:
            x = x + sigma * self.noise_like(x, generator)
        return x


def make_sampler(name: str, diffusion: GaussianDiffusion, **options: Any) -> Sampler:
    """A registered sampler by name (``ancestral``, ``ddim``, ...), e.g. ``make_sampler("ddim", d, steps=50)``."""
    cls = SAMPLERS.get(name)
    try:
        return cls(diffusion, **options)
    except TypeError as err:
        raise TypeError(f"sampler '{name}': {err}") from err
