"""Box-aware transforms, and the loading machinery shared by the real-image layout datasets.

:class:`LayoutTransform` turns one decoded image, its pixel boxes and labels (and optionally a
part mask) into the sample format of :mod:`layoutdiffuse.layout`: resize, centre or random
crop, horizontal flip, all through ``torchvision.transforms.v2`` functionals on
``tv_tensors.Image`` / ``BoundingBoxes`` / ``Mask``, so image, boxes and mask always move
together. Boxes cut by a crop (or lying partly outside the image) are clipped to it; a cut box
is dropped when nothing is left or when its area fraction of the output image is no longer
``> min_object_size``, the strict rule the dataset filters use. A box the transform did not cut
is never dropped: its area fraction only grows under a crop, and whether it was big enough in
the first place is the dataset filter's decision.

:class:`BoxLayoutDataset` is the base of the COCO-stuff and Visual Genome loaders: images plus
boxes packed in flat arrays (``offsets`` index the objects of each image), one decode path
(:func:`read_image`) and one bad-image policy (:class:`SkipBadImages`):

* ``on_bad_image="skip"`` (default): an image that is missing, fails to decode or disagrees with
  its annotated size is logged (file named, running count) and replaced by the next good sample;
  the file is remembered and never retried; after ``max_consecutive_bad`` failures in a row the
  data is declared broken (``RuntimeError``).
* ``on_bad_image="raise"``: the first bad image raises :class:`BadImageError` naming the file.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from ..conditions import collate
from ..errors import UserError, MissingFileError

log = logging.getLogger(__name__)

CROPS = (None, "center", "random")
BAD_IMAGE_POLICIES = ("skip", "raise")
CUT_TOLERANCE = 1e-3  # pixels: a box edge moved less than this by the clipping was not cut


# --------------------------------------------------------------------------- transforms
class LayoutTransform:
    """Resize / crop / flip an image with its boxes (and mask) and emit a layout sample.

    Args:
        size: output ``S`` or ``(H, W)``.
        crop: ``None`` resizes the whole image to ``size`` ignoring aspect ratio (the
            sg2im / LostGAN protocol: boxes keep their normalised coordinates exactly);
            ``"center"`` / ``"random"`` scale the image so it covers ``size`` (shorter side to
            ``S`` for square output) and cut a centre / uniformly random window.
        flip: probability of a horizontal flip (0 = never, 1 = always).
        min_object_size: a box cut by the crop survives only if its area fraction of the output
            is ``> min_object_size``; boxes left with zero width or height are always dropped.

    Call with ``image: (C, H, W) uint8``, ``boxes: (N, 4)`` pixel ``x0, y0, x1, y1``,
    ``labels: (N,)`` int, optional ``mask: (H', W')`` integer part map (resized nearest to the
    image first when its size differs, e.g. CelebAMask-HQ's 512 masks for 1024 images).
    Returns ``{"image": (C, H_out, W_out) float in [-1, 1], "layout": (N', 5) normalised
    x, y, w, h, class}`` plus ``"mask": (H_out, W_out) long`` when a mask was given.
    """

    def __init__(self, size: int | Sequence[int], crop: str | None = None, flip: float = 0.0, min_object_size: float = 0.0):
        if isinstance(size, int):
            size = (size, size)
        self.size = tuple(int(s) for s in size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise UserError(f"size must be a positive int or (H, W), got {size!r}")
        if crop not in CROPS:
            raise UserError(f"unknown crop {crop!r}; choose one of: None, 'center', 'random'")
        if not 0.0 <= flip <= 1.0:
            raise UserError(f"flip is a probability in [0, 1], got {flip}")
        if not 0.0 <= min_object_size < 1.0:
            raise UserError(f"min_object_size is an area fraction in [0, 1), got {min_object_size}")
        self.crop, self.flip, self.min_object_size = crop, float(flip), float(min_object_size)

    def __repr__(self) -> str:
        return f"LayoutTransform(size={self.size}, crop={self.crop!r}, flip={self.flip}, min_object_size={self.min_object_size})"

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if image.ndim != 3:
            raise UserError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
        H, W = image.shape[-2:]
        boxes = torch.zeros(0, 4) if boxes is None else torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        labels = torch.zeros(0, dtype=torch.long) if labels is None else torch.as_tensor(labels).reshape(-1)
        if len(labels) != len(boxes):
            raise UserError(f"got {len(boxes)} boxes but {len(labels)} labels")
        items: list[Any] = [tv_tensors.Image(image),
                            tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(H, W), clamping_mode=None)]
        if mask is not None:
            m = tv_tensors.Mask(torch.as_tensor(mask))
            if m.ndim != 2:
                raise UserError(f"mask must be (H, W), got shape {tuple(m.shape)}")
            items.append(F.resize(m, [H, W]) if tuple(m.shape) != (H, W) else m)

        h, w = self.size
        if self.crop is None:
            items = [F.resize(x, [h, w], antialias=True) for x in items]
        else:
            scale = max(h / H, w / W)
            rh, rw = max(h, round(H * scale)), max(w, round(W * scale))
            if (rh, rw) != (H, W):
                items = [F.resize(x, [rh, rw], antialias=True) for x in items]
            if self.crop == "center":
                top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
            else:
                top = int(torch.randint(0, rh - h + 1, ()).item())
                left = int(torch.randint(0, rw - w + 1, ()).item())
            items = [F.crop(x, top, left, h, w) for x in items]
        if self.flip > 0 and (self.flip >= 1 or torch.rand(()).item() < self.flip):
            items = [F.horizontal_flip(x) for x in items]

        raw = items[1].as_subclass(torch.Tensor)
        xyxy = raw.clone()
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
        cut = ((xyxy - raw).abs() > CUT_TOLERANCE).any(1)
        bw, bh = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
        keep = (bw > 0) & (bh > 0) & (~cut | (bw * bh / (w * h) > self.min_object_size))
        layout = torch.stack([xyxy[:, 0] / w, xyxy[:, 1] / h, bw / w, bh / h, labels.to(torch.float32)], dim=1)[keep]
        sample = {"image": F.to_dtype(items[0], torch.float32, scale=True).as_subclass(torch.Tensor) * 2 - 1,
                  "layout": layout}
        if mask is not None:
            sample["mask"] = items[2].as_subclass(torch.Tensor).long()
        return sample


# --------------------------------------------------------------------------- decoding
class BadImageError(OSError):
    """An image file that is missing, cannot be decoded, or has the wrong size; ``.path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        super().__init__(f"{reason}: {self.path}")


def read_image(path: str | os.PathLike, expected_size: tuple[int, int] | None = None) -> tv_tensors.Image:
    """Decode ``path`` to an RGB ``(3, H, W)`` uint8 image.

    ``expected_size`` is ``(W, H)`` from the annotations; a different decoded size raises
    (boxes would silently land in the wrong place otherwise). Raises :class:`BadImageError`.
    """
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # forces the full decode: truncated files fail here
    except FileNotFoundError:
        raise BadImageError(path, "image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImageError(path, f"cannot decode image ({err})") from err
    if expected_size is not None and tuple(im.size) != tuple(int(s) for s in expected_size):
        raise BadImageError(path, f"image is {im.size[0]}x{im.size[1]} but the annotations say "
                                  f"{int(expected_size[0])}x{int(expected_size[1])} (W x H)")
    return tv_tensors.Image(F.pil_to_tensor(im))


class SkipBadImages(Dataset):
    """Applies the bad-image policy around :meth:`load` (see the module docstring).

    Subclasses implement ``__len__`` and ``load(index) -> sample``, raising
    :class:`BadImageError` for a bad file. ``skipped`` lists the files skipped so far in this
    process (each DataLoader worker keeps its own list).
    """

    max_consecutive_bad = 16

    def __init__(self, on_bad_image: str = "skip"):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise UserError(f"unknown on_bad_image {on_bad_image!r}; choose one of: {', '.join(BAD_IMAGE_POLICIES)}")
        self.on_bad_image = on_bad_image
        self.skipped: list[str] = []
        self._bad: set[int] = set()

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def load(self, index: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {n}")
        index %= n
        failures: list[str] = []
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            try:
                return self.load(i)
            except BadImageError as err:
                if self.on_bad_image == "raise":
                    raise
                self._bad.add(i)
                self.skipped.append(str(err.path))
                failures.append(str(err))
                log.warning("%s: skipping sample %d, %s (%d bad image(s) skipped so far)",
                            type(self).__name__, i, err, len(self.skipped))
                if len(failures) >= self.max_consecutive_bad:
                    break
        raise RuntimeError(f"{type(self).__name__}: no loadable image found from index {index} "
                           f"({len(failures)} consecutive bad, {len(self._bad)} of {n} bad in total); "
                           f"the data looks broken, first errors: " + "; ".join(failures[:3]))


# --------------------------------------------------------------------------- packed boxes
def select_objects(obj_image: np.ndarray, obj_keep: np.ndarray, num_images: int, min_objects: int = 0,
                   max_objects: int | None = None, image_keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep images whose number of kept objects lies in ``[min_objects, max_objects]``.

    ``obj_image: (T,)`` image index of each object, ``obj_keep: (T,)`` bool, ``image_keep:
    (M,)`` bool (images allowed at all). Returns ``(images (M',), offsets (M'+1,), objects
    (T',))``: kept image indices in their original order, and the kept object indices grouped
    by image (original order inside an image), ``offsets`` delimiting each image's objects.
    """
    obj_image = np.asarray(obj_image, dtype=np.int64)
    obj_keep = np.asarray(obj_keep, dtype=bool)
    counts = np.bincount(obj_image[obj_keep], minlength=num_images)
    ok = counts >= min_objects
    if max_objects is not None:
        ok &= counts <= max_objects
    if image_keep is not None:
        ok &= np.asarray(image_keep, dtype=bool)
    images = np.flatnonzero(ok)
    candidates = np.flatnonzero(obj_keep & ok[obj_image])
    objects = candidates[np.argsort(obj_image[candidates], kind="stable")]
    offsets = np.zeros(len(images) + 1, dtype=np.int64)
    np.cumsum(counts[images], out=offsets[1:])
    return images, offsets, objects


def clipped_area_fraction(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``boxes: (T, 4)`` pixel x, y, w, h; ``sizes: (T, 2)`` image W, H -> ``(T,)`` area fraction of the box clipped to the image."""
    boxes = np.asarray(boxes, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    x0 = np.clip(boxes[:, 0], 0, sizes[:, 0])
    y0 = np.clip(boxes[:, 1], 0, sizes[:, 1])
    x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, sizes[:, 0])
    y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, sizes[:, 1])
    return (x1 - x0) * (y1 - y0) / (sizes[:, 0] * sizes[:, 1])


class BoxLayoutDataset(SkipBadImages):
    """Images with packed pixel boxes -> layout samples.

    Subclasses set (all numpy): ``files (M,)`` paths relative to ``image_dir``, ``sizes (M, 2)``
    annotated ``W, H``, ``offsets (M+1,)``, ``boxes (T, 4)`` float32 pixel ``x, y, w, h``,
    ``labels (T,)`` int64 class ids, plus ``classes`` (names) and ``transform``
    (:class:`LayoutTransform`). Flat arrays rather than lists of dicts: cheap to index, and
    DataLoader workers share them without copy-on-read blow-up.

    A sample: ``{"image": (3, S, S) in [-1, 1], "layout": (N, 5)}`` (+ ``"caption"`` when
    :meth:`caption` returns one). ``image_ids`` holds each image's id in its source dataset.
    """

    image_dir: Path
    files: np.ndarray
    sizes: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    image_ids: np.ndarray
    classes: Sequence[str]
    transform: LayoutTransform

    collate = staticmethod(collate)  # pads layouts; what DataLoader(collate_fn=...) needs

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def objects(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes (N, 4) pixel x, y, w, h, labels (N,))`` of image ``index`` as annotated (before transforms)."""
        s, e = self.offsets[index], self.offsets[index + 1]
        return self.boxes[s:e], self.labels[s:e]

    def caption(self, index: int) -> str | None:
        return None

    def load(self, index: int) -> dict[str, Any]:
        image = read_image(self.image_dir / str(self.files[index]), expected_size=tuple(self.sizes[index]))
        xywh, labels = self.objects(index)
        xywh = torch.from_numpy(np.ascontiguousarray(xywh, dtype=np.float32))
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        sample = self.transform(image, xyxy, torch.from_numpy(np.asarray(labels, dtype=np.int64)))
        text = self.caption(index)
        if text is not None:
            sample["caption"] = text
        return sample


def require_file(path: Path, hint: str) -> Path:
    """``path`` if it exists, else ``FileNotFoundError`` naming it and how to get it."""
    if not path.exists():
        raise MissingFileError(f"missing {path}; {hint}")
    return path
