"""The models shipped in the package, by name (no torch: the CLI resolves names before heavy imports).

``layout-mnist`` (the default: grey Layout-MNIST, a class per box) and ``layout-mnist-color`` (colour
Layout-MNIST, a phrase per box) are accepted wherever a checkpoint is: ``--ckpt NAME``,
``layoutdiffuse.sample(..., ckpt=NAME)``.
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
SHIPPED_MODEL = WEIGHTS / "layout_mnist.safetensors"
#: the shipped models by name; the first is the default
SHIPPED_MODELS = {"layout-mnist": SHIPPED_MODEL, "layout-mnist-color": WEIGHTS / "layout_mnist_color.safetensors"}


def checkpoint_path(ckpt: str | Path | None) -> Path:
    """A checkpoint path, a shipped model's name (:data:`SHIPPED_MODELS`) or ``None`` (the default
    shipped model) -> its path."""
    if ckpt is None:
        return SHIPPED_MODEL
    if isinstance(ckpt, str) and ckpt in SHIPPED_MODELS:
        return SHIPPED_MODELS[ckpt]
    return Path(ckpt)
