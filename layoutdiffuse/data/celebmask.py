"""CelebAMask-HQ: 19-class face-part mask layouts (plus boxes derived from the masks).

Files under ``<root>/CelebAMask-HQ`` (``bash data_scripts/download_celebMask.sh``)::

    CelebA-HQ-img/<i>.jpg                                    30,000 faces, 1024 x 1024
    CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png   per-part binary masks, 512 x 512
    CelebA-HQ-to-CelebA-mapping.txt                          idx, orig_idx (CelebA), orig_file
    CelebAMask-HQ-mask/<i>.png                               merged label maps (ours, see below)

:func:`merge_parts` merges one image's part PNGs into a label map like the dataset's own
``g_mask.py``: background 0, part ``k`` of :data:`PARTS` gets ``k + 1``, parts painted in
:data:`PARTS` order so a later part wins where two overlap (a pixel is "in" a part where the
PNG's first channel in OpenCV order, i.e. blue, is non-zero). :func:`merge_celebamask`
(``python data_scripts/merge_celebamask.py``) does all images, idempotently.

Splits follow CelebA's partition through the mapping file exactly as the dataset's own
``g_partition.py`` does (``orig_idx`` < 162,771 train, < 182,638 val, else test; reported as
24,183 / 2,993 / 2,824 images); ``split="all"`` takes all 30,000.

Layout: ``mask (S, S)`` long in ``[0, 19)`` (resized nearest) and ``layout (N, 5)``: one box per
part class present in the resized mask, the tight box of its pixels, class = its mask value
(1..18; background has no box), ordered by class.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from ..conditions import collate
from .paths import data_root
from .transforms import BadImageError, LayoutTransform, SkipBadImages, read_image, require_file
from ..errors import UserError
from ..files import save_picture

log = logging.getLogger(__name__)

PARTS = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth", "u_lip", "l_lip",
         "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
CLASSES = ("background",) + PARTS  # mask value = class id
NUM_CLASSES = len(CLASSES)  # 19
SPLITS = ("train", "val", "test", "all")
CELEBA_VAL_START, CELEBA_TEST_START = 162771, 182638  # thresholds on orig_idx, as g_partition.py
FOLDER_SIZE = 2000
FETCH_HINT = "fetch CelebAMask-HQ with: bash data_scripts/download_celebMask.sh (it says where to put a manual download)"
MERGE_HINT = "merge the part masks with: python data_scripts/merge_celebamask.py"


def celebamask_dir(root: str | os.PathLike | None = None) -> Path:
    """``<root>/CelebAMask-HQ``."""
    return data_root(root) / "CelebAMask-HQ"


def part_path(anno_dir: Path, index: int, part: str) -> Path:
    """``<anno_dir>/<index // 2000>/<index:05d>_<part>.png``."""
    return Path(anno_dir) / str(index // FOLDER_SIZE) / f"{index:05d}_{part}.png"


def _part_pixels(path: Path) -> np.ndarray:
    """Bool ``(H, W)``: where the part PNG is set (blue channel of colour PNGs, as cv2's channel 0)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("L", "1", "I", "I;16"):
                a = np.asarray(im.convert("L") if im.mode == "1" else im)
            else:
                a = np.asarray(im.convert("RGB"))[..., 2]
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImageError(path, f"cannot decode part mask ({err})") from err
    return a != 0


def merge_parts(anno_dir: str | os.PathLike, index: int) -> np.ndarray | None:
    """Label map ``(H, W)`` uint8 of image ``index`` from its part PNGs; ``None`` when it has none.

    Raises :class:`~layoutdiffuse.data.transforms.BadImageError` for an undecodable part or
    parts of different sizes.
    """
    label, size = None, None
    for k, part in enumerate(PARTS):
        path = part_path(Path(anno_dir), index, part)
        if not path.exists():
            continue
        on = _part_pixels(path)
        if label is None:
            label, size = np.zeros(on.shape, dtype=np.uint8), on.shape
        elif on.shape != size:
            raise BadImageError(path, f"part mask is {on.shape[1]}x{on.shape[0]}, other parts of image {index} are {size[1]}x{size[0]}")
        label[on] = k + 1
    return label


@dataclass
class MergeReport:
    """What :func:`merge_celebamask` did: indices written, already present, without any part, failed."""

    written: list[int] = field(default_factory=list)
    existing: list[int] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def merge_celebamask(root: str | os.PathLike | None = None, indices: Iterable[int] | None = None,
                     overwrite: bool = False, anno_dir: str | os.PathLike | None = None,
                     out_dir: str | os.PathLike | None = None) -> MergeReport:
    """Write ``<out_dir>/<i>.png`` (``CelebAMask-HQ-mask``) for every image ``i``.

    ``indices`` default to the rows of the mapping file. Existing outputs are kept unless
    ``overwrite`` (files are written atomically, so an interrupted run resumes cleanly). An image
    without any part PNG is written as all background and reported in ``empty``; a bad part PNG
    is logged, skipped and reported in ``failed`` (nothing written for it).
    """
    base = celebamask_dir(root)
    anno = Path(anno_dir) if anno_dir is not None else base / "CelebAMask-HQ-mask-anno"
    out = Path(out_dir) if out_dir is not None else base / "CelebAMask-HQ-mask"
    require_file(anno, FETCH_HINT)
    if indices is None:
        indices = read_mapping(base / "CelebA-HQ-to-CelebA-mapping.txt")[0]
    out.mkdir(parents=True, exist_ok=True)
    report = MergeReport()
    for i in (int(i) for i in indices):
        target = out / f"{i}.png"
        if target.exists() and not overwrite:
            report.existing.append(i)
            continue
        try:
            label = merge_parts(anno, i)
        except BadImageError as err:
            report.failed[i] = str(err)
            log.warning("skipping image %d: %s (%d failed so far)", i, err, len(report.failed))
            continue
        if label is None:
            report.empty.append(i)
            log.warning("image %d has no part mask in %s; writing an all-background map", i, anno)
            label = np.zeros((512, 512), dtype=np.uint8)
        save_picture(Image.fromarray(label), target)
        report.written.append(i)
    log.info("merged %d, kept %d existing, %d empty, %d failed -> %s", len(report.written), len(report.existing),
             len(report.empty), len(report.failed), out)
    return report


def read_mapping(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``CelebA-HQ-to-CelebA-mapping.txt`` -> ``(idx (M,), orig_idx (M,))`` int64 arrays."""
    path = Path(path)
    require_file(path, FETCH_HINT)
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields or (n == 1 and fields[0] == "idx"):
                continue
            try:
                rows.append((int(fields[0]), int(fields[1])))
            except (ValueError, IndexError):
                raise UserError(f"{path}, line {n}: expected 'idx orig_idx orig_file', got {line.strip()!r}") from None
    if not rows:
        raise UserError(f"{path} has no rows; expected 'idx orig_idx orig_file' lines")
    a = np.asarray(rows, dtype=np.int64)
    return a[:, 0], a[:, 1]


def split_indices(idx: np.ndarray, orig_idx: np.ndarray, split: str) -> np.ndarray:
    """CelebA-HQ indices of ``split`` (official CelebA partition of each image's source)."""
    if split not in SPLITS:
        raise UserError(f"unknown CelebAMask-HQ split {split!r}; choose one of: {', '.join(SPLITS)}")
    if split == "all":
        return idx
    part = np.where(orig_idx >= CELEBA_TEST_START, 2, np.where(orig_idx >= CELEBA_VAL_START, 1, 0))
    return idx[part == SPLITS.index(split)]


def boxes_from_mask(mask: torch.Tensor, num_classes: int = NUM_CLASSES, background: int = 0) -> torch.Tensor:
    """Tight box of every class present in ``mask: (H, W)`` int -> layout ``(N, 5)`` normalised x, y, w, h, class.

    Vectorised over classes; ``background`` and values outside ``[0, num_classes)`` (e.g. the
    ignore value 255) get no box. Rows are ordered by class.
    """
    H, W = mask.shape
    onehot = mask[None] == torch.arange(num_classes, device=mask.device)[:, None, None]  # (K, H, W)
    rows, cols = onehot.any(2), onehot.any(1)  # (K, H), (K, W)
    present = rows.any(1)
    present[background] = False
    cls = present.nonzero().squeeze(1)
    rows, cols = rows[cls], cols[cls]
    ar_h, ar_w = torch.arange(H, device=mask.device), torch.arange(W, device=mask.device)
    y0 = torch.where(rows, ar_h, H).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    x0 = torch.where(cols, ar_w, W).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    return torch.stack([x0 / W, y0 / H, (x1 - x0) / W, (y1 - y0) / H, cls.float()], dim=1).float()


class CelebAMaskHQ(SkipBadImages):
    """CelebAMask-HQ faces with merged part masks.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` (CelebA partition) or ``"all"``.
        root: data root; files in ``<root>/CelebAMask-HQ`` (see the module docstring).
        image_size: output side ``S`` (256 for the LDM CelebA-HQ foundation).
        flip: horizontal-flip probability (the mask and boxes flip with the image; note that
            left/right part classes such as ``l_eye`` keep their label).
        boxes: add the mask-derived box layout (else ``layout`` is the empty layout ``(0, 5)``).
        transform: replaces the default ``LayoutTransform(S, flip=flip)``.
        on_bad_image: ``"skip"`` or ``"raise"``; a missing merged mask counts as a bad sample.

    Sample: ``{"image": (3, S, S) in [-1, 1], "mask": (S, S) long in [0, 19), "layout": (N, 5)}``.
    ``indices (M,)`` are the CelebA-HQ image numbers.
    """

    classes = CLASSES

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, image_size: int = 256,
                 flip: float = 0.0, boxes: bool = True, transform: LayoutTransform | None = None,
                 on_bad_image: str = "skip"):
        super().__init__(on_bad_image)
        base = celebamask_dir(root)
        self.image_dir = require_file(base / "CelebA-HQ-img", FETCH_HINT)
        self.mask_dir = require_file(base / "CelebAMask-HQ-mask", MERGE_HINT)
        idx, orig = read_mapping(base / "CelebA-HQ-to-CelebA-mapping.txt")
        self.indices = split_indices(idx, orig, split)
        if len(self.indices) == 0:
            raise UserError(f"CelebAMask-HQ split {split!r} is empty according to {base / 'CelebA-HQ-to-CelebA-mapping.txt'}")
        self.split, self.boxes = split, boxes
        self.transform = transform or LayoutTransform(image_size, flip=flip)

    collate = staticmethod(collate)  # pads layouts; what DataLoader(collate_fn=...) needs

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def class_names(self) -> list[str]:
        return list(CLASSES)

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> dict[str, Any]:
        i = int(self.indices[index])
        image = read_image(self.image_dir / f"{i}.jpg")
        mask_path = self.mask_dir / f"{i}.png"
        try:
            with Image.open(mask_path) as im:
                mask = torch.from_numpy(np.array(im.convert("L") if im.mode not in ("L", "P") else im, dtype=np.uint8))
        except FileNotFoundError:
            raise BadImageError(mask_path, f"merged mask not found ({MERGE_HINT})") from None
        except (OSError, ValueError, SyntaxError) as err:
            raise BadImageError(mask_path, f"cannot decode mask ({err})") from err
        if int(mask.max()) >= NUM_CLASSES:
            raise BadImageError(mask_path, f"mask value {int(mask.max())} is not a class in [0, {NUM_CLASSES})")
        sample = self.transform(image, mask=mask)
        sample["layout"] = boxes_from_mask(sample["mask"]) if self.boxes else torch.zeros(0, 5)
        return sample
