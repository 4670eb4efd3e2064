"""Datasets by name: ``DATASETS.get(name)(split=..., **data_config) -> Dataset``.

A factory's keyword arguments are the keys its ``data`` config section may hold (besides
``dataset``, ``batch_size``, ``val_batch_size`` and ``num_workers``). A dataset may define
``collate`` (e.g. layout datasets pad their layouts) and ``class_names``; layout datasets
(``layout_mnist``, ``coco_stuff``, ``visual_genome``, ``celebmask``) define all of ``collate``,
``class_names`` and ``num_classes`` (what the layout adaptor's ``num_classes`` must be).
"""
from __future__ import annotations

from torch.utils.data import Dataset, Subset

from ..registry import Registry
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
                         max_digits: int = 3, digit_scale: tuple[float, float] = (0.35, 0.6), aspect_jitter: float = 0.2,
                         max_overlap: float = 0.3, length: int | None = None, seed: int = 0, download: bool = False) -> Dataset:
    """:class:`~layoutdiffuse.data.layout_mnist.LayoutMNIST` canvases of ``image_size`` px: box
    layouts + digit masks; ``val`` composes MNIST-test digits. ``length`` defaults to 60,000 / 10,000."""
    from .layout_mnist import LayoutMNIST

    check_split(split)
    return LayoutMNIST(root=root, split=split, canvas_size=image_size, min_digits=min_digits, max_digits=max_digits,
                       digit_scale=tuple(digit_scale), aspect_jitter=aspect_jitter, max_overlap=max_overlap,
                       length=length, seed=seed, download=download)


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


# The real-image layout datasets. Each loader checks its own split names (COCO-stuff: train, val;
# Visual Genome: train, val, test; CelebAMask-HQ: train, val, test, all); training asks for train
# and val. Set ``image_size`` explicitly in configs: the experiment's image shape is read from it.
@DATASETS.register("coco_stuff")
def coco_stuff_dataset(split: str = "train", root: str | None = None, image_size: int = 128, crop: str | None = None,
                       flip: float = 0.0, min_object_size: float = 0.02, min_objects: int = 3, max_objects: int | None = 8,
                       crowd: str = "drop", stuff_only: bool = True, caption: str | None = None,
                       on_bad_image: str = "skip", files: dict | None = None, limit: int | None = None) -> Dataset:
    """:class:`~layoutdiffuse.data.coco_stuff.CocoStuff` (LostGAN / sg2im filter): box layouts over
    171 classes from ``<root>/coco``. ``limit`` keeps the first ``limit`` images (quick runs)."""
    from .coco_stuff import CocoStuff

    return _limited(CocoStuff(split=split, root=root, image_size=image_size, crop=crop, flip=flip,
                              min_object_size=min_object_size, min_objects=min_objects, max_objects=max_objects,
                              crowd=crowd, stuff_only=stuff_only, caption=caption, on_bad_image=on_bad_image,
                              files=files), limit)


@DATASETS.register("visual_genome")
def visual_genome_dataset(split: str = "train", root: str | None = None, image_size: int = 128, crop: str | None = None,
                          flip: float = 0.0, min_object_size: float = 0.02, min_objects: int = 3, max_objects: int | None = 30,
                          on_bad_image: str = "skip", processed_dir: str | None = None, image_dir: str | None = None,
                          limit: int | None = None) -> Dataset:
    """:class:`~layoutdiffuse.data.visual_genome.VisualGenome` (sg2im split and preprocessing):
    box layouts over the preprocessed vocabulary (178 classes on VG 1.4) from ``<root>/vg``."""
    from .visual_genome import VisualGenome

    return _limited(VisualGenome(split=split, root=root, image_size=image_size, crop=crop, flip=flip,
                                 min_object_size=min_object_size, min_objects=min_objects, max_objects=max_objects,
                                 on_bad_image=on_bad_image, processed_dir=processed_dir, image_dir=image_dir), limit)


@DATASETS.register("celebmask")
def celebmask_dataset(split: str = "train", root: str | None = None, image_size: int = 256, flip: float = 0.0,
                      boxes: bool = True, on_bad_image: str = "skip", limit: int | None = None) -> Dataset:
    """:class:`~layoutdiffuse.data.celebmask.CelebAMaskHQ`: faces with 19-class part masks
    (``mask``, background 0) and mask-derived boxes (``layout``) from ``<root>/CelebAMask-HQ``;
    train a mask model with the adaptor's ``"mask": true``."""
    from .celebmask import CelebAMaskHQ

    return _limited(CelebAMaskHQ(split=split, root=root, image_size=image_size, flip=flip, boxes=boxes,
                                 on_bad_image=on_bad_image), limit)
