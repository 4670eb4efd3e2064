"""Layout accuracy: does each box of a generated canvas contain the digit its layout asks for?

Classification accuracy of box crops (the "CAS"-style alignment score of §7 of docs/method.md), for
digit layouts (classes 0..9). All boxes of a batch are cropped at once with
``torchvision.ops.roi_align`` and classified in one batch:

* a box ``(x, y, w, h)`` is grown by ``margin`` of its size on every side
  (``x - margin*w .. x + w + margin*w``), in pixels ``x*W`` .. ``(x+w)*W`` (pixel ``i`` spans
  ``[i, i+1)``; ``aligned=True``); with ``square=True`` the region is instead the square of side
  ``max(w*W, h*H) * (1 + 2*margin)`` pixels centred on the box (the digit keeps its aspect);
* the region is resampled to ``size x size`` (28): each output cell averages
  ``ceil(region/size)`` x ``ceil(region/size)`` bilinear samples (roi_align's adaptive
  ``sampling_ratio=-1``: plain bilinear when enlarging, an anti-aliasing box filter when
  shrinking), independently in x and y (a non-square region is stretched to the square crop);
* outside the canvas counts as background: the crop is taken from ``(images + 1) / 2`` where
  roi_align reads 0 beyond the border, then mapped back to [-1, 1].

Two framings of a digit in its box, two settings (MNIST digits are a 20 px core, aspect kept,
centred in 28 px):

* **box = the whole 28x28 MNIST image scaled into the box** (aspect may change):
  ``margin=0, square=False`` (default) undoes the paste exactly;
* **box = tight around the ink, digit aspect kept**: ``margin=0.2, square=True`` restores
  MNIST's framing (4 px of 20 on each side; a thin "1" stays thin).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.ops import roi_align

from ..layout import LayoutError, validity
from .classifier import NUM_CLASSES, to_gray
from ..errors import UserError


def crop_boxes(images: torch.Tensor, layout: torch.Tensor, size: int = 28, margin: float = 0.0,
               square: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop every real box of ``layout: (B, N, 5)`` from ``images: (B, C, H, W)`` in [-1, 1].

    Returns ``(crops (K, C, size, size) in [-1, 1], image_index (K,) long, labels (K,) long)`` for
    the ``K`` non-padding rows, in row-major ``(b, n)`` order. See the module docstring for the
    resampling rule, ``margin`` and ``square``.
    """
    if images.ndim != 4:
        raise UserError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if layout.ndim != 3 or layout.shape[-1] != 5 or layout.shape[0] != images.shape[0]:
        raise UserError(f"layout must have shape (B, N, 5) with B = {images.shape[0]} (the number of images), got {tuple(layout.shape)}")
    if margin < 0:
        raise UserError(f"margin must be >= 0 (a fraction of the box size added on each side), got {margin}")
    b_idx, n_idx = validity(layout).nonzero(as_tuple=True)
    rows = layout[b_idx, n_idx].to(images.device, torch.float32)
    _check_rows(rows, b_idx, n_idx)
    h, w = images.shape[-2:]
    cx, cy = (rows[:, 0] + rows[:, 2] / 2) * w, (rows[:, 1] + rows[:, 3] / 2) * h
    half_w, half_h = rows[:, 2] * w * (0.5 + margin), rows[:, 3] * h * (0.5 + margin)
    if square:
        half_w = half_h = torch.maximum(half_w, half_h)
    x0, x1, y0, y1 = cx - half_w, cx + half_w, cy - half_h, cy + half_h
    boxes = torch.stack([b_idx.to(images.device, torch.float32), x0, y0, x1, y1], dim=1)
    x01 = (images.float() + 1) / 2
    crops = roi_align(x01, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return crops * 2 - 1, b_idx, rows[:, 4].long().to(b_idx.device)


def _check_rows(rows: torch.Tensor, b_idx: torch.Tensor, n_idx: torch.Tensor) -> None:
    """Real layout rows ``(K, 5)`` must be finite, have positive sizes and a digit class; boxes may leave the canvas."""
    bad_value = ~torch.isfinite(rows).all(1)
    bad_size = (rows[:, 2:4] <= 0).any(1)
    cls = rows[:, 4]
    bad_class = (cls != cls.round()) | (cls >= NUM_CLASSES)
    for bad, what in ((bad_value, "has NaN or infinite values"), (bad_size, "has a non-positive w or h"),
                      (bad_class, f"class must be an integer in [0, {NUM_CLASSES}) (or -1 for padding)")):
        if bad.any():
            k = int(bad.nonzero()[0])
            raise LayoutError(f"layout image {int(b_idx[k])}, object {int(n_idx[k])}: {what} (row {[round(v, 4) for v in rows[k].tolist()]})")


@dataclass
class LayoutAccuracyResult:
    """``accuracy`` over all boxes; ``per_class (10,)`` (NaN for classes without boxes);
    ``confusion (10, 10)`` long, rows = layout class, columns = predicted class; ``count`` boxes."""

    accuracy: float
    per_class: torch.Tensor
    confusion: torch.Tensor
    count: int = field(default=0)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """``labels, predictions: (K,)`` in ``[0, num_classes)`` -> counts ``(num_classes, num_classes)``, rows = label."""
    return torch.bincount(labels.long() * num_classes + predictions.long(), minlength=num_classes**2).view(num_classes, num_classes).cpu()


def summarize_confusion(confusion: torch.Tensor) -> LayoutAccuracyResult:
    """Accuracy, per-class accuracy (NaN where a class has no boxes) and count from a confusion matrix ``(C, C)``."""
    total = int(confusion.sum())
    per_row = confusion.sum(1).double()
    per_class = confusion.diagonal().double() / per_row
    accuracy = float(confusion.diagonal().sum()) / total if total else float("nan")
    return LayoutAccuracyResult(accuracy=accuracy, per_class=per_class, confusion=confusion.clone(), count=total)


class LayoutAccuracy:
    """Accumulates box-crop classification over batches: ``update(images, layout)``, ``compute()``.

    ``margin`` and ``square`` choose the crop region (module docstring: ``0, False`` when boxes frame
    the whole scaled MNIST image, ``0.2, True`` when boxes are tight around the ink).
    ``classifier`` (default: the shipped :func:`load_digit_classifier` weights) maps
    ``(K, 1, 28, 28)`` in [-1, 1] to logits ``(K, 10)``. RGB canvases are averaged to gray.
    """

    def __init__(self, classifier: nn.Module | None = None, margin: float = 0.0, square: bool = False,
                 batch_size: int = 1024, device: torch.device | str | None = None):
        if classifier is None:
            from .classifier import load_digit_classifier

            classifier = load_digit_classifier(device=device)
        self.classifier = classifier
        self.margin = margin
        self.square = square
        self.batch_size = batch_size
        self.device = device if device is not None else next(classifier.parameters()).device
        self.confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)

    @torch.inference_mode()
    def update(self, images: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        """Add a batch: ``images (B, 1|3, H, W)`` in [-1, 1], ``layout (B, N, 5)``; returns predictions ``(K,)``."""
        crops, _, labels = crop_boxes(to_gray(images), layout, size=28, margin=self.margin, square=self.square)
        preds = [self.classifier(crops[i : i + self.batch_size].to(self.device)).argmax(1).cpu() for i in range(0, len(crops), self.batch_size)]
        preds = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
        self.confusion += confusion_matrix(labels.cpu(), preds)
        return preds

    def compute(self) -> LayoutAccuracyResult:
        return summarize_confusion(self.confusion)

    def reset(self) -> None:
        self.confusion.zero_()


def layout_accuracy(images: torch.Tensor, layout: torch.Tensor, classifier: nn.Module | None = None, margin: float = 0.0,
                    square: bool = False, batch_size: int = 1024, device: torch.device | str | None = None) -> LayoutAccuracyResult:
    """Box-crop classification accuracy of ``images: (B, 1|3, H, W)`` in [-1, 1] against ``layout: (B, N, 5)``.

    Padding rows (class -1) are ignored. See :class:`LayoutAccuracy` and the module docstring.
    """
    metric = LayoutAccuracy(classifier, margin=margin, square=square, batch_size=batch_size, device=device)
    metric.update(images, layout)
    return metric.compute()
