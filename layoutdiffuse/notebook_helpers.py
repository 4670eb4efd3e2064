"""Small helpers the notebooks share: quick mode, the repository's folders, configs shrunk for CI,
pictures and loss curves. Nothing here is needed by the package itself.

``LAYOUTDIFFUSE_QUICK=1`` (what CI's nbval sets) turns on quick mode: every notebook shrinks its
sizes and step counts with :func:`quick_config` so it runs in a minute or two on a CPU.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import MissingFileError, UserError

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


SHOW_DIR_ENV = "LAYOUTDIFFUSE_SHOW_DIR"  # when set, :func:`show` also writes what it drew there (show_NNN.png)


def displayable(image: Any) -> Any:
    """An image tensor ``(C, H, W)`` (C = 1 or 3) or ``(H, W)`` -> a float ``(H, W, 3)`` numpy array in [0, 1].

    uint8 is read as 0..255 (what :func:`layoutdiffuse.visualize.grid` returns), float and bool as
    [0, 1]. Raises :class:`UserError` for anything a picture cannot show as it is: another dtype or
    shape, values outside the range (e.g. model samples in [-1, 1]: pass them through ``grid``), or
    a constant picture (blank or saturated: nothing to see).
    """
    import torch

    if not isinstance(image, torch.Tensor):
        raise UserError(f"show takes an image tensor (C, H, W), got {type(image).__name__}")
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3 or image.shape[0] not in (1, 3) or min(image.shape[1:]) < 1:
        raise UserError(f"show takes an image (C, H, W) with C = 1 or 3, got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        picture = image.detach().cpu().float() / 255
    elif image.dtype.is_floating_point or image.dtype == torch.bool:
        picture = image.detach().cpu().float()
        if not torch.isfinite(picture).all():
            raise UserError("show got an image with NaN or infinite values")
        lo, hi = picture.min().item(), picture.max().item()
        if lo < 0 or hi > 1:
            raise UserError(f"show takes float images in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                            "model samples in [-1, 1] go through layoutdiffuse.visualize.grid first")
    else:
        raise UserError(f"show takes uint8 (0..255) or float ([0, 1]) images, got {image.dtype}")
    lo, hi = picture.min().item(), picture.max().item()
    if hi - lo < 1 / 255:
        raise UserError(f"show got a constant picture (every value {lo:.3g}): it would show as one flat colour")
    return picture.expand(3, -1, -1).permute(1, 2, 0).numpy()


def show(image: Any, title: str | None = None, size: float = 6) -> None:
    """Show an image tensor ``(C, H, W)``: uint8, or float in [0, 1] (e.g. a
    :func:`layoutdiffuse.visualize.grid`); see :func:`displayable` for what it refuses.

    With ``$LAYOUTDIFFUSE_SHOW_DIR`` set, the picture as drawn on the figure is also written there
    as ``show_NNN.png`` (the tests look at every picture of the notebooks' quick run)."""
    import matplotlib.pyplot as plt

    picture = displayable(image)
    fig = plt.figure(figsize=(size, size))
    plt.imshow(picture, vmin=0, vmax=1, interpolation="nearest")
    plt.axis("off")
    if title:
        plt.title(title)
    folder = os.environ.get(SHOW_DIR_ENV)
    if folder:
        record_axes(fig, Path(folder))
    plt.show()


def record_axes(fig: Any, folder: Path) -> Path:
    """Render ``fig`` and write the pixels inside its (first) axes as ``folder/show_NNN.png`` (the next free number)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    rendered = Image.open(buffer)
    x0, y0, x1, y1 = fig.axes[0].get_window_extent().extents  # display pixels, origin at the bottom left
    height = rendered.size[1]
    crop = rendered.crop((math.ceil(x0), math.ceil(height - y1), math.floor(x1), math.floor(height - y0))).convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"show_{len(list(folder.glob('show_*.png'))):03d}.png"
    crop.save(path)
    return path


def metric_curve(experiment_dir: str | os.PathLike, key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of metric ``key`` (e.g. ``"train/loss"``) in ``<experiment_dir>/logs/metrics.csv``."""
    path = Path(experiment_dir) / "logs" / "metrics.csv"
    if not path.exists():
        raise MissingFileError(f"no metrics at {path}; train the experiment first")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(key)]
    return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]


def random_color_model(base_channel: int = 8, embed_dim: int = 16, steps: int = 5, seed: int = 0) -> Any:
    """An untrained colour Layout-MNIST phrase model (samples are noise of the right shape): the
    denoiser of ``configs/layout_mnist_color_foundation.json`` with ``base_channel`` channels, adapted
    with the text instance prompts of ``configs/layout_mnist_color.json`` (``embed_dim`` wide), sampling
    ``steps`` steps with the text model's sampler and guidance. What the notebooks and tests use
    where the shipped colour model is not installed."""
    import torch

    from .adapt import adapt
    from .factory import build_module
    from .nn import UNet

    configs = Path(__file__).resolve().parents[1] / "configs"  # the package's own checkout: also from a notebook copied elsewhere
    config, color = (json.loads((configs / f"{name}.json").read_text()) for name in ("layout_mnist_color_foundation", "layout_mnist_color"))
    config["denoising_model"]["base_channel"] = base_channel
    config["diffusion"]["sampling"] = {**color["diffusion"]["sampling"], "steps": steps}  # the text model's sampler and guidance
    layout = {**color["adapt"]["layout"], "embed_dim": embed_dim, "num_task_prompts": 4}
    torch.manual_seed(seed)
    return build_module(config, adapt(UNet(**config["denoising_model"]), layout))


def colour_results_table(result: dict[str, Any]) -> str:
    """``benchmarks/eval_color_mnist.py``'s JSON -> a markdown table: per split (seen pairs, held-out
    pairs, the pair-class baseline on seen pairs) the share of the real ceiling for digit, colour and
    both, each with its bootstrap 95 % interval, and both-correct per phrase form."""
    def cell(score: dict[str, Any]) -> str:
        low, high = score["ci95"]
        return f"{100 * score['ratio']:.1f} % [{100 * low:.0f}, {100 * high:.0f}]"

    rows = [("seen pairs", result["text_model"]["seen"]), ("held-out pairs", result["text_model"]["held_out"])]
    if "seen" in result.get("pair_class_baseline", {}):
        rows.append(("pair-class baseline, seen pairs", result["pair_class_baseline"]["seen"]))
    lines = ["| layouts | digit | colour | both |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | " + " | ".join(cell(split["all"][k]) for k in ("digit", "colour", "both")) + " |" for name, split in rows]
    forms = list(result["text_model"]["seen"]["forms"])
    lines += ["", "| both correct, by phrase form | " + " | ".join(f"`{f}`" for f in forms) + " |",
              "| --- |" + " --- |" * len(forms)]
    lines += [f"| {name} | " + " | ".join(cell(split["forms"][f]["both"]) for f in forms) + " |" for name, split in rows[:2]]
    return "\n".join(lines)
