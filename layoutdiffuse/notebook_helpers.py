"""Small helpers the notebooks share: quick mode, the repository's folders, configs shrunk for CI,
pictures and loss curves. Nothing here is needed by the package itself.

``LAYOUTDIFFUSE_QUICK=1`` (what CI's nbval sets) turns on quick mode: every notebook shrinks its
sizes and step counts with :func:`quick_config` so it runs in a minute or two on a CPU.
"""
from __future__ import annotations

import copy
import csv
import json
import os
from pathlib import Path
from typing import Any

from .errors import MissingFileError

QUICK = os.environ.get("LAYOUTDIFFUSE_QUICK") == "1"


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The repository holding ``configs/`` -- the working folder or one above it (notebooks run from
    ``notebooks/`` in JupyterLab and from the root under nbval)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "configs").is_dir() and (folder / "layoutdiffuse").is_dir():
            return folder
    raise MissingFileError(f"no layoutdiffuse repository (a folder with configs/ and layoutdiffuse/) at or above {here}; "
                           "start the notebook from the repository or its notebooks/ folder")


def load_notebook_config(name: str, **updates: Any) -> dict[str, Any]:
    """``configs/<name>.json`` as a dict; top-level ``updates`` (``expt_name``, ``expt_dir``, ...) applied."""
    path = repo_root() / "configs" / f"{name}.json"
    if not path.exists():
        raise MissingFileError(f"no config {path}; the configs are: {', '.join(sorted(p.stem for p in path.parent.glob('*.json')))}")
    return {**json.loads(path.read_text()), **updates}


def quick_config(config: dict[str, Any], steps: int, samples: int = 256, batch_size: int = 8, base_channel: int | None = 16,
                 validate_every: int | None = None) -> dict[str, Any]:
    """A copy of ``config`` shrunk for quick mode: ``steps`` training steps (the LR schedule follows),
    ``samples`` training samples, small batches, no data workers, no sample grids, a UNet of
    ``base_channel`` channels (``None`` keeps the model), one validation batch every
    ``validate_every`` steps (``None``: no validation)."""
    config = copy.deepcopy(config)
    data = config["data"]
    data.update({"length" if data.get("dataset") == "layout_mnist" else "limit": samples, "batch_size": batch_size, "num_workers": 0})
    trainer = config.setdefault("trainer_args", {})
    trainer.update(max_steps=steps, log_every_n_steps=max(1, steps // 10), enable_progress_bar=False)
    if validate_every:
        trainer.update(limit_val_batches=1, val_check_interval=validate_every)
    else:
        trainer.update(limit_val_batches=0)
    scheduler = config["diffusion"].get("lr_scheduler")
    if scheduler:
        scheduler.update(warmup_steps=max(1, steps // 8), total_steps=steps)
    config["callbacks"] = {}
    if base_channel is not None and "denoising_model" in config:
        config["denoising_model"]["base_channel"] = base_channel
    return config


def show(image: Any, title: str | None = None, size: float = 6) -> None:
    """Show an image tensor ``(C, H, W)`` in [0, 1] (e.g. a :func:`layoutdiffuse.visualize.grid`)."""
    import matplotlib.pyplot as plt

    plt.figure(figsize=(size, size))
    plt.imshow(image.permute(1, 2, 0).clamp(0, 1))
    plt.axis("off")
    if title:
        plt.title(title)
    plt.show()


def metric_curve(experiment_dir: str | os.PathLike, key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of metric ``key`` (e.g. ``"train/loss"``) in ``<experiment_dir>/logs/metrics.csv``."""
    path = Path(experiment_dir) / "logs" / "metrics.csv"
    if not path.exists():
        raise MissingFileError(f"no metrics at {path}; train the experiment first")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(key)]
    return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]
