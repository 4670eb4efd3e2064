"""Layout-MNIST: canvases of 1-N real MNIST digits in random boxes, with box and mask layouts.

The toy layout-to-image task (boxes as in Multi-MNIST, Hinz et al., ICLR 2019). Each canvas
``S x S`` (32/48/64 ...) holds ``n`` digits, ``n`` uniform in ``[min_digits, max_digits]``:

* **Box**: pixel-aligned integer box ``(x0, y0, w, h)``. Its longer side is ``s * S`` rounded, with
  ``s`` uniform in ``digit_scale``, or log-uniform with ``scale_spacing="log"`` (equal size ratios
  get equal shares, e.g. as many sides in 0.25-0.5 as in 0.5-1, so small digits are common). Its
  aspect ``w / h`` is the digit's own ink aspect times ``exp(U(-aspect_jitter, aspect_jitter))``
  (so a "1" stays thin); its position is uniform over the places where it fits on the canvas.
* **Overlap rule**: intersection over the *smaller* box area ``<= max_overlap`` against every
  box placed before (stricter than IoU for boxes of different sizes: a small digit can not
  hide inside a large one). Rejection sampling, ``tries`` candidate boxes per digit; a digit
  with no acceptable candidate is dropped, and a canvas with fewer than ``min_digits`` is
  redrawn (``restarts`` times, then kept with fewer digits: only infeasible settings get there).
* **Digit**: the 28 x 28 MNIST digit cropped to the tight box of its ink (pixels > 0) and resized
  (bilinear, antialiased) to ``(h, w)``, so the box is tight: ink touches all four box edges.
  Digits are composed by a pixel-wise max (bright ink on a dark background).

Sample (see :mod:`layoutdiffuse.layout`)::

    image  (1, S, S) float in [-1, 1], background exactly -1
    layout (n, 5)    rows (x0/S, y0/S, w/S, h/S, digit class), in placement order
    mask   (S, S)    long: digit class where that digit's ink > mask_threshold (later digits on
                     top), background = 255 (IGNORE, docs/method.md §1: null/background)
    digits (max_digits,) long: index of each row's digit in its MNIST split, -1 padding
                     (fixed length, so the default collate stacks it)

Layout values are the integer pixel boxes divided by ``S`` (nudged by one float32 ulp where
needed), so :func:`~layoutdiffuse.nn.adaptor.rasterize_boxes` at ``(S, S)`` covers exactly the
pasted pixels. Canvases are deterministic per ``(seed, split, index)`` (a ``torch.Generator``
per item, no global RNG); ``train`` uses MNIST-train digits only, ``val`` MNIST-test digits only.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..conditions import collate
from ..layout import IGNORE
from .paths import data_root
from ..errors import UserError

SPLITS = ("train", "val")
DEFAULT_LENGTH = {"train": 60000, "val": 10000}  # one canvas per source digit, on average
SCALE_SPACINGS = ("linear", "log")
MIN_DIGIT_PX = 8  # smallest allowed box side: below this a digit is no longer legible
NUM_CLASSES = 10
CLASSES = tuple(str(i) for i in range(NUM_CLASSES))


@functools.lru_cache(maxsize=4)
def load_digits(root: str, train: bool, download: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One MNIST split as tensors, read once per process.

    Returns ``images (M, 28, 28) uint8``, ``labels (M,) int64`` and ``ink (M, 4) int64``: the
    tight box ``(x0, y0, x1, y1)`` (exclusive ends) of each digit's pixels > 0.
    """
    from .mnist import mnist

    ds = mnist(train=train, root=root, download=download)
    images, labels = ds.data, ds.targets.long()
    on = images > 0
    rows, cols = on.any(2), on.any(1)  # (M, 28)
    ar = torch.arange(images.shape[1])

    def ends(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = torch.where(a, ar, images.shape[1]).amin(1)
        last = torch.where(a, ar, -1).amax(1) + 1
        blank = ~a.any(1)  # none in MNIST; keep the whole square if it ever happens
        return first.masked_fill(blank, 0), last.masked_fill(blank, images.shape[1])

    (y0, y1), (x0, x1) = ends(rows), ends(cols)
    return images, labels, torch.stack([x0, y0, x1, y1], 1)


def exact_fraction(k: torch.Tensor, size: int, start: bool) -> torch.Tensor:
    """``k / size`` in float32 such that ``floor(v * size) == k`` (``start``) or
    ``ceil(v * size) == k`` (a box size), i.e. the layout rasterises back to pixel ``k``."""
    v = k.float() / size
    if start:
        return torch.where(v * size < k, torch.nextafter(v, torch.full_like(v, 2.0)), v)
    return torch.where(v * size > k, torch.nextafter(v, torch.zeros_like(v)), v)


def overlap(boxes: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """Intersection over the smaller area: ``boxes (T, 4)``, ``placed (K, 4)`` pixel ``x0, y0, w, h``
    -> ``(T, K)``."""
    a, b = boxes[:, None, :], placed[None, :, :]
    iw = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = iw.clip(min=0) * ih.clip(min=0)
    return inter / np.minimum(a[..., 2] * a[..., 3], b[..., 2] * b[..., 3])


class LayoutMNIST(torch.utils.data.Dataset):
    """Canvases of MNIST digits with box layouts and part masks (see the module docstring).

    Args:
        root: data root holding ``MNIST/raw`` (default ``$LAYOUTDIFFUSE_DATA`` or ``~/data``).
        split: ``"train"`` (MNIST-train digits) or ``"val"`` (MNIST-test digits).
        canvas_size: canvas side ``S`` in pixels.
        min_digits, max_digits: digits per canvas, uniform in ``[min_digits, max_digits]``.
        digit_scale: ``(lo, hi)`` range of a box's longer side as a fraction of ``S``.
        scale_spacing: ``"linear"`` (uniform in ``digit_scale``) or ``"log"`` (log-uniform).
        aspect_jitter: log-uniform jitter of the box aspect around the digit's own.
        max_overlap: limit on intersection over the smaller box area, pairwise.
        length: number of canvases (default 60,000 train / 10,000 val).
        seed: canvases are a function of ``(seed, split, index)``.
        mask_threshold: ink level in [0, 1] above which a pixel belongs to a digit in ``mask``.
        tries, restarts: rejection-sampling budget (candidates per digit, redraws per canvas).
        download: let torchvision fetch MNIST when it is missing.
    """

    num_classes = NUM_CLASSES
    classes = CLASSES
    class_names = list(CLASSES)
    collate = staticmethod(collate)  # pads layouts; what DataLoader(collate_fn=...) needs

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", canvas_size: int = 32,
                 min_digits: int = 1, max_digits: int = 3, digit_scale: Sequence[float] = (0.35, 0.6),
                 scale_spacing: str = "linear", aspect_jitter: float = 0.2, max_overlap: float = 0.3,
                 length: int | None = None, seed: int = 0,
                 mask_threshold: float = 0.5, tries: int = 32, restarts: int = 8, download: bool = False):
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
        if not (0 <= min_digits <= max_digits and max_digits >= 1):
            raise UserError(f"need 0 <= min_digits <= max_digits and max_digits >= 1, got min_digits={min_digits}, max_digits={max_digits}")
        lo, hi = (float(s) for s in digit_scale)
        if not 0 < lo <= hi <= 1:
            raise UserError(f"digit_scale must be (lo, hi) with 0 < lo <= hi <= 1 (fractions of the canvas), got {tuple(digit_scale)}")
        if round(lo * canvas_size) < MIN_DIGIT_PX:
            raise UserError(f"canvas_size {canvas_size} is too small for digit_scale {(lo, hi)}: the smallest box side would be "
                             f"{lo * canvas_size:.1f} px (< {MIN_DIGIT_PX}); use canvas_size >= {math.ceil((MIN_DIGIT_PX - 0.5) / lo)} "
                             f"or a larger digit_scale[0]")
        if scale_spacing not in SCALE_SPACINGS:
            raise UserError(f"unknown scale_spacing '{scale_spacing}'; choose one of: {', '.join(SCALE_SPACINGS)}")
        if aspect_jitter < 0:
            raise UserError(f"aspect_jitter must be >= 0, got {aspect_jitter}")
        if not 0 <= max_overlap <= 1:
            raise UserError(f"max_overlap must be in [0, 1] (intersection over the smaller box), got {max_overlap}")
        if not 0 <= mask_threshold < 1:
            raise UserError(f"mask_threshold must be in [0, 1), got {mask_threshold}")
        if tries < 1 or restarts < 1:
            raise UserError(f"tries and restarts must be >= 1, got tries={tries}, restarts={restarts}")
        if length is not None and length < 0:
            raise UserError(f"length must be >= 0 or None (default {DEFAULT_LENGTH[split]}), got {length}")
        self.split, self.canvas_size, self.seed = split, int(canvas_size), int(seed)
        self.min_digits, self.max_digits = int(min_digits), int(max_digits)
        self.digit_scale, self.aspect_jitter, self.max_overlap = (lo, hi), float(aspect_jitter), float(max_overlap)
        self.scale_spacing = scale_spacing
        self.mask_threshold, self.tries, self.restarts = float(mask_threshold), int(tries), int(restarts)
        self.length = DEFAULT_LENGTH[split] if length is None else int(length)
        self.root = data_root(root)
        self.images, self.labels, self.ink = load_digits(str(self.root), split == "train", download)
        self._ink_np = self.ink.numpy()

    def __len__(self) -> int:
        return self.length

    def generator(self, index: int) -> torch.Generator:
        """The item's own RNG, seeded from ``(seed, split, index)`` (well mixed by SeedSequence)."""
        state = np.random.SeedSequence([self.seed, SPLITS.index(self.split), index]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def place(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Digit indices ``(n,)`` into the split and their pixel boxes ``(n, 4)`` ``x0, y0, w, h``."""
        g, S, (lo, hi) = self.generator(index), self.canvas_size, self.digit_scale
        best: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros((0, 4), np.int64))
        for _ in range(self.restarts):
            n = int(torch.randint(self.min_digits, self.max_digits + 1, (), generator=g))
            digits = torch.randint(0, len(self.images), (self.max_digits,), generator=g).numpy()
            u = torch.rand(self.max_digits, self.tries, 4, generator=g).double().numpy()
            kept, boxes = [], []
            for k in range(n):
                x0, y0, x1, y1 = self._ink_np[digits[k]]
                aspect = (x1 - x0) / (y1 - y0) * np.exp((2 * u[k, :, 1] - 1) * self.aspect_jitter)
                frac = lo * (hi / lo) ** u[k, :, 0] if self.scale_spacing == "log" else lo + (hi - lo) * u[k, :, 0]
                side = np.rint(frac * S)
                w = np.where(aspect <= 1, np.maximum(1, np.rint(side * aspect)), side)
                h = np.where(aspect <= 1, side, np.maximum(1, np.rint(side / aspect)))
                x = np.floor(u[k, :, 2] * (S - w + 1))
                y = np.floor(u[k, :, 3] * (S - h + 1))
                cand = np.stack([x, y, w, h], 1).astype(np.int64)
                if boxes:
                    ok = (overlap(cand, np.stack(boxes)) <= self.max_overlap + 1e-9).all(1)
                    if not ok.any():
                        continue  # no room for this digit: the canvas gets one fewer
                    cand = cand[ok]
                kept.append(digits[k])
                boxes.append(cand[0])
            if len(kept) > len(best[0]):
                best = (np.asarray(kept, np.int64), np.stack(boxes).astype(np.int64))
            if len(kept) >= self.min_digits:
                break
        return best

    def render(self, digits: np.ndarray, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Canvas ``(S, S)`` ink in [0, 1] and mask ``(S, S)`` long (255 background) for placed digits."""
        S = self.canvas_size
        canvas = torch.zeros(S, S)
        mask = torch.full((S, S), IGNORE, dtype=torch.long)
        for d, (x, y, w, h) in zip(digits.tolist(), boxes.tolist()):
            cx0, cy0, cx1, cy1 = self._ink_np[d].tolist()
            crop = self.images[d, cy0:cy1, cx0:cx1].float().div_(255)
            patch = F.interpolate(crop[None, None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0, 0].clamp_(0, 1)
            region = canvas[y:y + h, x:x + w]
            torch.maximum(region, patch, out=region)
            mask[y:y + h, x:x + w].masked_fill_(patch > self.mask_threshold, int(self.labels[d]))
        return canvas, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for LayoutMNIST {self.split} of length {self.length}")
        index %= self.length
        digits, boxes = self.place(index)
        canvas, mask = self.render(digits, boxes)
        b = torch.from_numpy(boxes)
        layout = torch.cat([exact_fraction(b[:, :2], self.canvas_size, start=True),
                            exact_fraction(b[:, 2:], self.canvas_size, start=False),
                            self.labels[torch.from_numpy(digits)].float()[:, None]], 1).reshape(-1, 5)
        padded = torch.full((self.max_digits,), -1, dtype=torch.long)
        padded[: len(digits)] = torch.from_numpy(digits)
        return {"image": canvas.mul_(2).sub_(1)[None], "layout": layout, "mask": mask, "digits": padded}

    def __repr__(self) -> str:
        return (f"LayoutMNIST(split={self.split!r}, canvas_size={self.canvas_size}, digits={self.min_digits}-{self.max_digits}, "
                f"digit_scale={self.digit_scale} ({self.scale_spacing}), max_overlap={self.max_overlap}, length={self.length}, seed={self.seed})")
