"""Datasets by name: ``DATASETS.get(name)(split=..., **data_config) -> Dataset``.

A factory's keyword arguments are the keys its ``data`` config section may hold (besides
``dataset``, ``batch_size``, ``val_batch_size`` and ``num_workers``). A dataset may define
``collate`` (e.g. layout datasets pad their layouts) and ``class_names``.
"""
from __future__ import annotations

from torch.utils.data import Dataset, Subset

from ..registry import Registry

DATASETS: Registry = Registry("dataset")
SPLITS = ("train", "val")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")


@DATASETS.register("mnist")
def mnist_dataset(split: str = "train", root: str | None = None, image_size: int = 32, limit: int | None = None, download: bool = True) -> Dataset:
    """torchvision MNIST, ``(image (1, S, S) in [-1, 1], label)``; ``val`` is MNIST-test.
    ``limit`` keeps the first ``limit`` images (quick runs)."""
    from .mnist import mnist

    check_split(split)
    ds = mnist(train=split == "train", root=root, image_size=image_size, download=download)
    return Subset(ds, range(min(limit, len(ds)))) if limit else ds


@DATASETS.register("layout_mnist")
def layout_mnist_dataset(split: str = "train", root: str | None = None, image_size: int = 32, min_digits: int = 1,
                         max_digits: int = 3, digit_scale: tuple[float, float] = (0.35, 0.6), aspect_jitter: float = 0.2,
                         max_overlap: float = 0.3, length: int | None = None, seed: int = 0, download: bool = False) -> Dataset:
    """:class:`~layoutdiffuse.data.layout_mnist.LayoutMNIST` canvases of ``image_size`` px: box
    layouts + digit masks; ``val`` composes MNIST-test digits. ``length`` defaults to 60,000 / 10,000."""
    from .layout_mnist import LayoutMNIST

    check_split(split)
    return LayoutMNIST(root=root, split=split, canvas_size=image_size, min_digits=min_digits, max_digits=max_digits,
                       digit_scale=tuple(digit_scale), aspect_jitter=aspect_jitter, max_overlap=max_overlap,
                       length=length, seed=seed, download=download)
