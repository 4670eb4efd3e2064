"""Callbacks, in one place: what a config's ``callbacks`` section may hold (:data:`CALLBACK_KEYS`),
the callbacks built from it (:func:`build_callbacks`), sample grids written to the experiment folder
(and wandb), and the metadata every checkpoint carries (:class:`SaveConfig`)."""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ..visualize import grid_columns, save_grid
from .meta import CKPT_KEY, checkpoint_meta  # noqa: F401 (CKPT_KEY: public here too)

log = logging.getLogger(__name__)

#: allowed keys (with example defaults for type checks) of each ``callbacks`` config section
CALLBACK_KEYS = {
    "checkpoint": {"every_n_train_steps": 1, "every_n_epochs": 1, "save_top_k": 1, "save_last": True},
    "images": {"every_n_train_steps": 1, "n": 1, "sampler": "", "steps": 1, "guidance": 1.0, "eta": 0.0, "clip": True, "seed": 0},
    "wandb": {"enabled": False, "project": "", "mode": "", "entity": None},
}


class SaveConfig(pl.Callback):
    """Stores :func:`checkpoint_meta` (plain data only) in every checkpoint under :data:`CKPT_KEY`."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = checkpoint_meta(pl_module)


def build_callbacks(sections: dict[str, Any], out_dir: Path, class_names: list[str] | None = None) -> list[pl.Callback]:
    """The callbacks of a config's ``callbacks`` sections for an experiment folder ``out_dir``: the
    metadata writer, step checkpoints in ``out_dir/checkpoints`` (``last.ckpt`` also when ``max_time``
    ends a run between two of them) and, when configured, sample grids in
    ``out_dir/images``. (``wandb`` is a logger, built by :func:`layoutdiffuse.experiment.build_trainer`.)"""
    ckpt_args = {"save_last": True, "save_top_k": -1, **sections.get("checkpoint", {})}
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="step_{step:06d}", auto_insert_metric_name=False, **ckpt_args)
    callbacks: list[pl.Callback] = [SaveConfig(), checkpoint, LastCheckpointAtEnd(checkpoint), SaveOnSignal(out_dir / "checkpoints")]
    images = dict(sections.get("images", {}))
    if images:
        callbacks.append(ImageLogger(out_dir / "images", class_names=class_names, **images))
    return callbacks


class ImageLogger(pl.Callback):
    """Every ``every_n_train_steps`` steps (and at the end of training) sample ``n`` images with the
    EMA weights and write ``<out_dir>/step_XXXXXX.png``; also to wandb when a WandbLogger is used.

    Layout models are sampled on the layouts of the first validation batch, and the grid draws each
    box and its label over the image.
    """

    def __init__(self, out_dir: str | Path, every_n_train_steps: int = 1000, n: int = 16, seed: int = 0, class_names: list[str] | None = None, **sampling: Any):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.every = every_n_train_steps
        self.n = n
        self.seed = seed
        self.class_names = class_names
        self.sampling = sampling
        self.last_path: Path | None = None

    def conditions(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any] | None:
        loaders = trainer.val_dataloaders
        if loaders is None or getattr(pl_module.model, "adaptor", None) is None:  # only layout models take layouts
            return None
        batch = next(iter(loaders))
        inputs = pl_module.process_batch(pl_module.transfer_batch_to_device(batch, pl_module.device, 0), "val")
        cond = inputs.get("cond")
        if cond is None:
            return None
        return {k: (v[: self.n] if isinstance(v, (torch.Tensor, list)) else v) for k, v in cond.items()}

    @torch.no_grad()
    def log_images(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        cond = self.conditions(trainer, pl_module)
        n = self.n
        if cond is not None:
            n = len(next(iter(v for v in cond.values() if isinstance(v, (torch.Tensor, list)))))
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        images = pl_module.sample(n, cond=cond, generator=g, **self.sampling)
        path = self.out_dir / f"step_{trainer.global_step:06d}.png"
        layouts = cond.get("layout") if cond else None
        save_grid(images, path, layouts=layouts, class_names=self.class_names, nrow=grid_columns(pl_module))
        self.last_path = path
        log.info("wrote samples to %s", path)
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.WandbLogger):
                logger.log_image(key="samples", images=[str(path)], step=trainer.global_step)
        return path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0 and step < (trainer.max_steps if trainer.max_steps > 0 else float("inf")) and trainer.is_global_zero:
            self.log_images(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.log_images(trainer, pl_module)


class LastCheckpointAtEnd(pl.Callback):
    """Writes ``last.ckpt`` when training ends between two of ``ModelCheckpoint``'s saves (a run
    stopped by ``max_time``), so the last checkpoint always holds the final weights."""

    def __init__(self, checkpoint: pl.callbacks.ModelCheckpoint):
        self.checkpoint = checkpoint

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ckpt = self.checkpoint
        if not ckpt.save_last or ckpt.dirpath is None or trainer.global_step == 0:
            return
        path = Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
        if ckpt.last_model_path and Path(ckpt.last_model_path) == path and getattr(ckpt, "_last_global_step_saved", -1) == trainer.global_step:
            return
        trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint, resumable like ModelCheckpoint's
        ckpt.last_model_path = str(path)
        log.info("wrote the final checkpoint %s (step %d)", path, trainer.global_step)


class Interrupted(SystemExit):
    """A training stopped by SIGTERM or SIGINT after writing a resumable checkpoint; its exit code is
    ``128 + signal number`` (143 for SIGTERM, 130 for SIGINT), as a shell reports a killed process."""

    def __init__(self, signum: int | None = None, path: Path | None = None):
        self.signum = signum or signal.SIGTERM
        super().__init__(128 + self.signum)
        self.path = path


class SaveOnSignal(pl.Callback):
    """SIGTERM or SIGINT (Ctrl+C) during ``fit``: finish the current step, write a resumable
    ``last.ckpt`` and say so; the run then ends with :class:`Interrupted`. A second signal stops at once.

    The handlers live only while ``fit`` runs (the previous ones are restored at teardown), and only
    in the main thread (where Python delivers signals)."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        self.signum: int | None = None
        self.saved: Path | None = None
        self.previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second signal: stop now, as the default action would
            self.restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        log.warning("received %s: stopping after this step and writing a resumable checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.signum, self.saved = None, None
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self.previous[sig] = signal.signal(sig, self.handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.restore()

    def check(self) -> None:
        if self.signum is not None:
            from pytorch_lightning.utilities.exceptions import SIGTERMException

            raise SIGTERMException()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.check()

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self.check()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException):
            return
        self.signum = self.signum or signal.SIGTERM  # Lightning's own SIGTERM handler may have stopped the loop first
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        self.saved = path
        log.warning("stopped by %s at step %d: wrote the resumable checkpoint %s; continue with --resume last",
                    signal.Signals(self.signum).name, trainer.global_step, path)
