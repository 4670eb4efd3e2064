"""Progress of a training run: how much of its budget is used, a step bar, an ETA and log lines.

A run is limited by ``trainer_args.max_steps``, ``trainer_args.max_time`` (Lightning's
:class:`~pytorch_lightning.callbacks.Timer`), or both; it ends with whichever comes first.

* :func:`training_fraction` -- the fraction of that budget used so far (what the budget-following
  cosine learning rate decays over);
* :class:`StepProgressBar` -- the terminal bar: steps (of ``max_steps`` when set), loss, time left,
  never an epoch count (Lightning's own bar shows ``Epoch 0/-2`` for step- or time-limited runs);
* :class:`ProgressLog` -- log lines: the plan at the start, an ETA from the first steps' speed,
  then (when output is not a terminal) one line every ``every_s`` seconds, and a summary.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar, Timer

log = logging.getLogger(__name__)


def budget_timer(trainer: pl.Trainer | None) -> Timer | None:
    """The trainer's ``max_time`` timer, or None when the run has no time limit."""
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, Timer) and callback.time_remaining("train") is not None:
            return callback
    return None


def time_budget(trainer: pl.Trainer | None) -> tuple[float, float] | None:
    """``(seconds trained, seconds allowed)`` of the ``max_time`` budget, or None without one."""
    timer = budget_timer(trainer)
    if timer is None:
        return None
    elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
    return elapsed, elapsed + remaining


def training_fraction(trainer: pl.Trainer | None) -> float:
    """Fraction in [0, 1] of the run's budget used: ``max(global_step / max_steps, elapsed / max_time)``
    over the limits that are set (0 when there is no trainer or no limit)."""
    if trainer is None:
        return 0.0
    fractions = []
    if trainer.max_steps is not None and trainer.max_steps > 0:
        fractions.append(trainer.global_step / trainer.max_steps)
    budget = time_budget(trainer)
    if budget is not None and budget[1] > 0:
        fractions.append(budget[0] / budget[1])
    return min(1.0, max(fractions, default=0.0))


def seconds_left(trainer: pl.Trainer, steps_per_s: float | None) -> float | None:
    """Seconds until the first limit ends the run: ``max_time``'s remainder, or the remaining
    ``max_steps`` at ``steps_per_s``; None when neither is known."""
    candidates = []
    budget = time_budget(trainer)
    if budget is not None:
        candidates.append(max(0.0, budget[1] - budget[0]))
    if trainer.max_steps is not None and trainer.max_steps > 0 and steps_per_s:
        candidates.append(max(0, trainer.max_steps - trainer.global_step) / steps_per_s)
    return min(candidates) if candidates else None


def format_seconds(seconds: float | None) -> str:
    """``3725.2 -> '1:02:05'``, ``65 -> '1:05'``; ``'?'`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def interactive() -> bool:
    """True when a person watches the output live: a terminal, or a Jupyter kernel's cell."""
    if sys.stderr.isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def step_limited(trainer: pl.Trainer) -> bool:
    return (trainer.max_steps is not None and trainer.max_steps > 0) or budget_timer(trainer) is not None


def batch_size(batch: Any) -> int:
    """Images in a loader batch: the first dimension of its first tensor (0 if it has none)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else []
    return next((n for n in map(batch_size, items) if n), 0)


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar counting optimizer steps over the whole run (``max_steps`` as total when
    set), with the loss and the time left; epoch-limited runs keep Lightning's per-epoch bar."""

    def __init__(self, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.start: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.start, self.start_step = time.monotonic(), trainer.global_step
        if step_limited(trainer):
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None)
            bar.n = bar.initial = trainer.global_step
            bar.set_description("train (steps)")

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not step_limited(trainer):
            super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not step_limited(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, step = self.train_progress_bar, trainer.global_step
        if bar is None or bar.disable or (step % self.refresh_rate and step != trainer.max_steps):
            return
        elapsed = time.monotonic() - self.start
        rate = (step - self.start_step) / elapsed if elapsed > 0 else None
        bar.n = step
        bar.set_postfix({**self.get_metrics(trainer, pl_module), "left": format_seconds(seconds_left(trainer, rate))}, refresh=True)


class ProgressLog(pl.Callback):
    """Log lines of a training run (logger ``layoutdiffuse.training.progress``, level INFO).

    * at the start: the limits (``max_steps``, ``max_time``);
    * after ``eta_after`` steps (timed from the end of the first step, so start-up is excluded):
      the measured speed and the ETA of the first limit to end the run;
    * with ``periodic`` (output not a terminal): ``step, loss, speed, elapsed, left`` every
      ``every_s`` seconds;
    * at the end: steps, images, time and what stopped the run.

    ``clock`` is injectable for tests.
    """

    def __init__(self, eta_after: int = 5, every_s: float = 30.0, periodic: bool = True, clock: Callable[[], float] = time.monotonic):
        self.eta_after, self.every_s, self.periodic, self.clock = eta_after, every_s, periodic, clock
        self.images_per_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start, self.first, self.eta_logged, self.last_line = self.clock(), None, False, None
        self.last_step_end = self.start
        self.start_step = trainer.global_step
        budget = time_budget(trainer)
        limits = [f"{trainer.max_steps} steps"] if trainer.max_steps and trainer.max_steps > 0 else []
        limits += [f"{format_seconds(budget[1])} of training (max_time)"] if budget else []
        log.info("training until %s%s", " or ".join(limits) or "the last epoch", ", whichever comes first" if len(limits) > 1 else "")

    def speed(self, now: float, step: int) -> float | None:
        """Steps per second since the end of the first step."""
        t0, s0 = self.first
        return (step - s0) / (now - t0) if now > t0 and step > s0 else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now, step = self.clock(), trainer.global_step
        self.images_per_step, self.last_step_end = batch_size(batch) * trainer.world_size, now
        if self.first is None:
            self.first = (now, step)
            return
        rate = self.speed(now, step)
        if not self.eta_logged and step - self.first[1] >= self.eta_after and rate:
            self.eta_logged, self.last_line = True, now
            left = seconds_left(trainer, rate)
            finish = time.strftime("%H:%M:%S", time.localtime(time.time() + left)) if left is not None else "?"
            steps = step + int(left * rate) if left is not None else None
            log.info("speed %.2f steps/s (%.0f images/s) over steps %d-%d: ETA %s left, training ends at about %s (~%s steps)",
                     rate, rate * self.images_per_step, self.first[1], step, format_seconds(left), finish, steps if steps is not None else "?")
        elif self.periodic and self.eta_logged and now - self.last_line >= self.every_s:
            self.last_line = now
            self.log_line(trainer, step, now, rate)

    def log_line(self, trainer: pl.Trainer, step: int, now: float, rate: float | None) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        log.info("step %d%s | loss %s | %.2f steps/s (%.0f images/s) | %s elapsed, %s left", step, total,
                 f"{float(loss):.4f}" if loss is not None else "?", rate or 0.0, (rate or 0.0) * self.images_per_step,
                 format_seconds(now - self.start), format_seconds(seconds_left(trainer, rate)))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.global_step - self.start_step
        budget = time_budget(trainer)
        if trainer.max_steps and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            reason = "max_steps reached"
        elif budget is not None and budget[0] >= budget[1]:
            reason = "time budget (max_time) used"
        else:
            reason = "stopped"
        trained = (self.last_step_end if steps else self.start) - self.start  # up to the last step's end (final grids excluded)
        log.info("trained %d steps (%d images) in %s: %s", steps, steps * self.images_per_step, format_seconds(trained), reason)
