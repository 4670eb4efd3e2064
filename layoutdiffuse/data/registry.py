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
