"""Timestep samplers for training: which ``t`` each example gets, and its importance weight.

    sampler = make_timestep_sampler("loss-second-moment", diffusion.num_timesteps)
    t, w = sampler.sample(batch_size, device, generator)      # t: (B,) long, w: (B,) float
    loss = (losses["loss"] * w).mean()
    sampler.update(t, losses["loss"].detach())                 # loss-aware samplers learn here

Weights are ``1 / (T p(t))``, so ``E_t[w(t) L_t] = mean_t L_t`` whatever ``p`` is (unbiased).

**DDP.** Every rank must hold the same history, or ranks draw from different ``p`` and resume
diverges: all-gather ``(t, losses)`` across ranks first and pass the gathered tensors to
:meth:`update` (``DDIMTraining`` does this with ``LightningModule.all_gather``).

**Resume.** :meth:`state_dict` holds plain tensors only (``torch.load(weights_only=True)`` loads it).
"""
from __future__ import annotations

import torch

from ..registry import Registry
from ..errors import UserError

TIMESTEP_SAMPLERS: Registry[type] = Registry("timestep sampler")


class TimestepSampler:
    """Base class: subclasses give :meth:`weights` (unnormalised ``p(t)``, float64 ``(T,)``)."""

    def __init__(self, num_timesteps: int):
        if num_timesteps < 1:
            raise UserError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.num_timesteps = num_timesteps

    def weights(self) -> torch.Tensor:
        raise NotImplementedError

    def probabilities(self) -> torch.Tensor:
        """``p(t)``: float64 ``(T,)`` summing to 1."""
        w = self.weights()
        return w / w.sum()

    def sample(self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``t ~ p`` : ``(t (B,) long, importance weights 1 / (T p(t)) (B,) float32)`` on ``device``.

        The draw happens on the generator's device (so a seeded generator reproduces it).
        """
        p = self.probabilities()
        draw_device = generator.device if generator is not None else torch.device("cpu")
        t = torch.multinomial(p.to(draw_device), batch_size, replacement=True, generator=generator).cpu()
        w = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), w.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example ``losses (N,)`` at timesteps ``t (N,)`` (all ranks' worth under DDP)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise KeyError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


@TIMESTEP_SAMPLERS.register("uniform")
class UniformSampler(TimestepSampler):
    """``p(t) = 1 / T``; all importance weights are 1."""

    def weights(self) -> torch.Tensor:
        return torch.ones(self.num_timesteps, dtype=torch.float64)


@TIMESTEP_SAMPLERS.register("loss-second-moment")
class LossSecondMomentResampler(TimestepSampler):
    """Improved DDPM eq. 18: ``p(t) ∝ sqrt(E[L_t^2])`` over the last ``history_per_term`` losses at
    each ``t``, mixed with ``uniform_prob`` of the uniform distribution; uniform until every
    timestep has a full history.

    Args:
        num_timesteps: T.
        history_per_term: losses remembered per timestep (paper: 10).
        uniform_prob: weight of the uniform mixture (paper: 0.001).
    """

    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if history_per_term < 1:
            raise UserError(f"history_per_term must be >= 1, got {history_per_term}")
        if not 0 <= uniform_prob <= 1:
            raise UserError(f"uniform_prob must be in [0, 1], got {uniform_prob}")
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.loss_history = torch.zeros(num_timesteps, history_per_term, dtype=torch.float64)
        self.loss_counts = torch.zeros(num_timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history_per_term).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up():
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        w = self.loss_history.pow(2).mean(1).sqrt()
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append ``losses (N,)`` to the histories of ``t (N,)`` in order, dropping the oldest when full."""
        t, losses = t.reshape(-1).tolist(), losses.detach().reshape(-1).double().cpu()
        if len(t) != len(losses):
            raise UserError(f"t and losses must have the same length, got {len(t)} and {len(losses)}")
        for step, loss in zip(t, losses):
            if self.loss_counts[step] == self.history_per_term:
                self.loss_history[step, :-1] = self.loss_history[step, 1:].clone()
                self.loss_history[step, -1] = loss
            else:
                self.loss_history[step, self.loss_counts[step]] = loss
                self.loss_counts[step] += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"loss_history": self.loss_history.clone(), "loss_counts": self.loss_counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = {"loss_history": tuple(self.loss_history.shape), "loss_counts": tuple(self.loss_counts.shape)}
        if set(state) != set(expected):
            raise KeyError(f"{type(self).__name__} state needs keys {sorted(expected)}, got {sorted(state)}")
        for key, shape in expected.items():
            if tuple(state[key].shape) != shape:
                raise UserError(f"{key}: expected shape {shape} (num_timesteps, history_per_term), got {tuple(state[key].shape)}")
        self.loss_history = state["loss_history"].detach().to("cpu", torch.float64).clone()
        self.loss_counts = state["loss_counts"].detach().to("cpu", torch.long).clone()


def make_timestep_sampler(name: str, num_timesteps: int, **options) -> TimestepSampler:
    """A registered timestep sampler (``uniform``, ``loss-second-moment``) by name."""
    return TIMESTEP_SAMPLERS.get(name)(num_timesteps, **options)
