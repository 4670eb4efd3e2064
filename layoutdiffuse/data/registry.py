"""Datasets by name: ``DATASETS.get(name)(split=..., **data_config) -> Dataset``.

A factory's keyword arguments are the keys its ``data`` config section may hold (besides
``dataset``, ``batch_size``, ``val_batch_size`` and ``num_workers``). A dataset may define
``collate`` (e.g. layout datasets pad their layouts) and ``class_names``; layout datasets
(``layout_mnist``, ``layout_mnist_color``, ``coco_stuff``, ``visual_genome``, ``celebmask``) define all of ``collate``,
``class_names`` and ``num_classes`` (what the layout adaptor's ``num_classes`` must be).
"""
from __future__ import annotations

import inspect
from typing import Any

from torch.utils.data import Dataset, Subset

from ..registry import Registry
from .celebmask import CelebAMaskHQ
from .coco_stuff import CocoStuff
from .visual_genome import VisualGenome
from ..errors import UserError

DATASETS: Registry = Registry("dataset")
SPLITS = ("train", "val")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")


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
                         max_digits: int = 3, digit_scale: tuple[float, float] = (0.35, 0.6), scale_spacing: str = "linear",
                         aspect_jitter: float = 0.2, max_overlap: float = 0.3, length: int | None = None, seed: int = 0, download: bool = False) -> Dataset:
    """:class:`~layoutdiffuse.data.layout_mnist.LayoutMNIST` canvases of ``image_size`` px: box
    layouts + digit masks; ``val`` composes MNIST-test digits. ``length`` defaults to 60,000 / 10,000."""
    from .layout_mnist import LayoutMNIST

    check_split(split)
    return LayoutMNIST(root=root, split=split, canvas_size=image_size, min_digits=min_digits, max_digits=max_digits,
                       digit_scale=tuple(digit_scale), scale_spacing=scale_spacing, aspect_jitter=aspect_jitter, max_overlap=max_overlap,
                       length=length, seed=seed, download=download)


@DATASETS.register("layout_mnist_color")
def layout_mnist_color_dataset(split: str = "train", root: str | None = None, image_size: int = 32, min_digits: int = 1,
                               max_digits: int = 3, digit_scale: tuple[float, float] = (0.35, 0.6), scale_spacing: str = "linear",
                               aspect_jitter: float = 0.2, max_overlap: float = 0.3, length: int | None = None, seed: int = 0,
                               pairs: str = "seen", labels: str = "text", download: bool = False) -> Dataset:
    """:class:`~layoutdiffuse.data.color_mnist.ColorLayoutMNIST`: RGB canvases of coloured digits with a
    phrase per box (``labels="text"``) or a class per seen (digit, colour) pair (``labels="pair"``)."""
    from .color_mnist import ColorLayoutMNIST

    check_split(split)
    return ColorLayoutMNIST(root=root, split=split, canvas_size=image_size, min_digits=min_digits, max_digits=max_digits,
                            digit_scale=tuple(digit_scale), scale_spacing=scale_spacing, aspect_jitter=aspect_jitter,
                            max_overlap=max_overlap, length=length, seed=seed, download=download, pairs=pairs, labels=labels)

class LayoutSubset(Subset):
    """The first samples of a layout dataset that still answers ``collate``, ``class_names`` and
    ``num_classes`` (a plain :class:`~torch.utils.data.Subset` hides them from the loaders)."""

    @property
    def collate(self):
        return self.dataset.collate

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes


def _limited(ds: Dataset, limit: int | None) -> Dataset:
    if limit is None:
        return ds
    if limit < 1:
        raise UserError(f"limit must be a positive number of samples (or null for all), got {limit}")
    return LayoutSubset(ds, range(min(limit, len(ds))))


def register_limited(name: str, cls: type, skip: tuple[str, ...] = ("transform",)) -> None:
    """Register ``cls`` under ``name``: its constructor's keyword arguments (less ``skip``) are the
    ``data`` config keys, plus ``limit`` (keep the first ``limit`` samples, for quick runs)."""

    def factory(split: str = "train", limit: int | None = None, **kwargs: Any) -> Dataset:
        return _limited(cls(split=split, **kwargs), limit)

    params = [p for n, p in inspect.signature(cls.__init__).parameters.items()
              if n not in ("self", "split", *skip) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    factory.__signature__ = inspect.Signature([
        inspect.Parameter("split", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="train"), *params,
        inspect.Parameter("limit", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)])
    factory.__name__ = f"{name}_dataset"
    factory.__doc__ = f":class:`{cls.__module__}.{cls.__name__}` by name; ``limit`` keeps the first ``limit`` samples."
    DATASETS.register(name)(factory)


# The real-image layout datasets. Each loader checks its own split names (COCO-stuff: train, val;
# Visual Genome: train, val, test; CelebAMask-HQ: train, val, test, all); training asks for train
# and val. Set ``image_size`` explicitly in configs: the experiment's image shape is read from it.
register_limited("coco_stuff", CocoStuff)            # LostGAN / sg2im filter, 171 classes, <root>/coco
register_limited("visual_genome", VisualGenome)      # sg2im split and preprocessing, <root>/vg
register_limited("celebmask", CelebAMaskHQ)          # 19-class part masks + mask-derived boxes, <root>/CelebAMask-HQ
