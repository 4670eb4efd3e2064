"""Mask layout files: a PNG of part ids, the format of the CelebAMask-HQ label maps the release and
:mod:`layoutdiffuse.data.celebmask` read (``CelebAMask-HQ-mask/<i>.png``).

One 8-bit channel (a grayscale or palette PNG); each pixel's value is its part class, in
``[0, num_classes)`` (0-18 for CelebAMask-HQ: background, skin, nose, ...), or :data:`~layoutdiffuse.layout.IGNORE`
(255) where the mask says nothing (the empty mask is all 255).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import MissingFileError, UserError
from .layout import IGNORE

#: a mask larger than this on a side is not a layout (CelebAMask-HQ's maps are 512)
MAX_SIDE = 4096


def load_mask(path: str | Path) -> torch.Tensor:
    """Read a mask file -> ``(H, W)`` long part ids (not yet checked against a model)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"mask file {path} does not exist" if not path.exists() else f"mask file {path} is not a regular file")
    try:
        with Image.open(path) as im:
            if max(im.size) > MAX_SIDE:
                raise UserError(f"mask file {path} is {im.size[0]}x{im.size[1]}; a mask is at most {MAX_SIDE} px on a side")
            if im.mode not in ("L", "P"):
                raise UserError(f"mask file {path} is a {im.mode} image; a mask holds part ids in one 8-bit channel "
                                "(a grayscale or palette PNG, value = part class, 255 = none)")
            return torch.from_numpy(np.array(im, dtype=np.uint8)).long()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot read mask file {path}: {err}") from None


def as_mask(mask: Any, num_classes: int, size: int) -> torch.Tensor:
    """A mask given as a file or a tensor ``(H, W)`` / ``(B, H, W)`` of part ids -> checked long ``(H, W)`` /
    ``(B, H, W)`` for a model of ``num_classes`` parts making ``size``-pixel images.

    A mask whose side is a whole multiple of ``size`` is kept as it is (the model subsamples it);
    any other size is resized (nearest) to ``size``, as the dataset resizes its masks.
    """
    where = f"mask file {mask}" if isinstance(mask, (str, Path)) else "the mask"
    if isinstance(mask, (str, Path)):
        mask = load_mask(mask)
    if not isinstance(mask, torch.Tensor) or mask.dtype.is_floating_point or mask.is_complex() or mask.dtype == torch.bool:
        raise UserError(f"a mask is an integer tensor (H, W) or (B, H, W) of part ids, or a PNG file; got "
                        f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if mask.ndim not in (2, 3) or min(mask.shape[-2:]) < 1:
        raise UserError(f"a mask has shape (H, W) or (B, H, W), got {tuple(mask.shape)}")
    mask = mask.long()
    bad = mask[(mask != IGNORE) & ((mask < 0) | (mask >= num_classes))]
    if len(bad):
        raise UserError(f"{where} holds part id {int(bad[0])}; this model reads {num_classes}-part masks: ids 0..{num_classes - 1}, "
                        f"{IGNORE} = none")
    h, w = mask.shape[-2:]
    if h % size or w % size:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        batch = mask if mask.ndim == 3 else mask[None]
        batch = F.resize(tv_tensors.Mask(batch), [size, size]).as_subclass(torch.Tensor)
        mask = batch if mask.ndim == 3 else batch[0]
    return mask
