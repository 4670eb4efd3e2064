"""The colour Layout-MNIST judge: per box of an RGB canvas, which digit, which colour, and is it one digit?

A canvas of colour Layout-MNIST (:mod:`layoutdiffuse.data.color_mnist`) is black with each digit's
ink intensity times one of six pure colours (:data:`~layoutdiffuse.data.color_phrases.RGB`). Each
real row of a layout is judged three ways:

* **digit** (``digit``): the box is cropped from the *grey* canvas -- the maximum over the three
  channels, which turns a coloured canvas back into exactly the grey Layout-MNIST canvas of the same
  digits -- with the crop judge's settings (:data:`.crop_classifier.CROP`) and read by the
  Layout-MNIST crop judge (:func:`.crop_classifier.load_crop_classifier`), as layout accuracy does;
* **one digit** (``one_digit``): the digit detector (:class:`.detection.DigitDetector`) runs on the
  grey canvas; of its detections scoring at least :data:`.detection.EXACT_MIN_SCORE` (whatever their
  labels), exactly one may lie mostly inside the box (at least half of its area), and that one must
  match the box (IoU >= 0.5). Both counts matter: a box holding two digits squeezed side by side
  gives two detections inside it, each about half the box -- and half a box still has IoU 0.5 with
  it, so "exactly one match at IoU 0.5" alone lets doubles through (of the 30 real-digit doubles of
  ``tests/test_color_judge.py``: 11 pass that, 2 pass this rule, both where the detector itself takes
  the pair for one digit); a smear gives no match;
* **colour** (``colour``): the *ink* pixels of the box are its pixels (centre inside the box) whose
  value, the maximum channel in [0, 1], is at least ``ink_threshold`` (0.5: the dataset's own digit
  mask threshold); each ink pixel's colour is normalised by its value (``rgb / max(rgb)``: a dim red
  and a bright red are both ``(1, 0, 0)``), the normalised colours are averaged, and the colour is the
  nearest of the six RGB corners (Euclidean; ties go to the lower colour id). A box without ink gets
  :data:`NO_INK` (-1), which is never a correct colour.

**The rule**: a box's digit is correct (``digit_ok``) when the crop judge reads the layout's digit
*and* the box holds one digit (``one_digit``); its colour is correct (``colour_ok``) when the
colour read is the asked colour; the box is correct (``both_ok``) when both are. The same judge on the
real canvases of the same layouts gives each score's ceiling (``benchmarks/eval_color_mnist.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_iou

from ..data.color_phrases import RGB
from ..errors import UserError
from ..layout import validity
from .crop_classifier import CROP, load_crop_classifier
from .detection import EXACT_MIN_SCORE, DigitDetector, layout_targets
from .layout_accuracy import crop_boxes

#: the colour read of a box without ink pixels (never a correct colour)
NO_INK = -1
#: ink pixels: value (maximum channel, in [0, 1]) at least this
INK_THRESHOLD = 0.5


def grey_canvas(images: torch.Tensor) -> torch.Tensor:
    """``images: (B, 3, H, W)`` in [-1, 1] -> ``(B, 1, H, W)``: the maximum over channels (the ink
    intensity of a canvas of pure-colour digits; a grey canvas is returned as it is)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"images must have shape (B, 3, H, W) (or (B, 1, H, W)) in [-1, 1], got {tuple(images.shape)}")
    return images.amax(1, keepdim=True)


def ink_colours(images: torch.Tensor, layout: torch.Tensor, ink_threshold: float = INK_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """The colour of every real row of ``layout: (B, N, 5)`` on ``images: (B, 3, H, W)`` in [-1, 1].

    Returns ``(colour (K,) long, ink_pixels (K,) long)`` in row-major ``(b, n)`` order over the ``K``
    real rows: the colour id (:data:`~layoutdiffuse.data.color_phrases.COLOURS`) nearest to the mean
    normalised colour of the box's ink pixels, :data:`NO_INK` where there are none (module docstring).
    A pixel ``(i, j)`` is in box ``(x, y, w, h)`` when its centre ``(j + 0.5, i + 0.5)`` lies in
    ``[x W, (x + w) W) x [y H, (y + h) H)``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"images must have shape (B, 3, H, W) in [-1, 1] (RGB canvases), got {tuple(images.shape)}")
    if layout.ndim != 3 or layout.shape[-1] != 5 or len(layout) != len(images):
        raise UserError(f"layout must have shape (B, N, 5) with B = {len(images)} (the number of images), got {tuple(layout.shape)}")
    b_idx, n_idx = validity(layout).nonzero(as_tuple=True)
    rows = layout[b_idx, n_idx].float().to(images.device)
    h, w = images.shape[-2:]
    rgb = ((images.float() + 1) / 2).clamp(0, 1)
    value = rgb.amax(1)  # (B, H, W)
    normalised = rgb / value.clamp_min(1e-6)[:, None]
    ink = (value >= ink_threshold).float()
    xs = torch.arange(w, device=images.device) + 0.5
    ys = torch.arange(h, device=images.device) + 0.5
    in_x = (xs >= rows[:, :1] * w) & (xs < (rows[:, :1] + rows[:, 2:3]) * w)  # (K, W)
    in_y = (ys >= rows[:, 1:2] * h) & (ys < (rows[:, 1:2] + rows[:, 3:4]) * h)  # (K, H)
    weight = in_y[:, :, None].float() * in_x[:, None, :].float() * ink[b_idx]  # (K, H, W)
    count = weight.sum((1, 2))
    mean = torch.einsum("khw,kchw->kc", weight, normalised[b_idx]) / count.clamp_min(1)[:, None]
    corners = torch.tensor(RGB, device=images.device)
    colour = torch.cdist(mean, corners).argmin(1)
    colour[count == 0] = NO_INK
    return colour.cpu(), count.long().cpu()


def detections_per_box(predictions: list[dict[str, torch.Tensor]], layout: torch.Tensor, size: tuple[int, int], iou: float = 0.5,
                       min_score: float = EXACT_MIN_SCORE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per real row of ``layout: (B, N, 5)`` (row-major), among the detections of its image (``predictions``:
    one dict per image, :data:`.detection.Detector` format) scoring ``>= min_score``, whatever their labels:
    ``(matched (K,) long, inside (K,) long)``, how many overlap the box with IoU ``>= iou``, and how many lie
    mostly inside it (at least half of the detection's area; every matched detection is also inside)."""
    if len(predictions) != len(layout):
        raise UserError(f"got {len(predictions)} detection lists for {len(layout)} layouts; give one per image")
    matched, inside = [], []
    for pred, target in zip(predictions, layout_targets(layout, size)):
        boxes = pred["boxes"][pred["scores"] >= min_score].float().cpu().reshape(-1, 4)
        targets = target["boxes"]
        lo = torch.maximum(targets[:, None, :2], boxes[None, :, :2])
        hi = torch.minimum(targets[:, None, 2:], boxes[None, :, 2:])
        overlap = (hi - lo).clamp_min(0).prod(-1)  # (n, k) intersection areas
        area = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0).prod(-1)
        inside.append((overlap >= 0.5 * area).sum(1))
        matched.append((box_iou(targets, boxes) >= iou).sum(1) if len(boxes) and len(targets) else torch.zeros(len(targets), dtype=torch.long))
    empty = torch.zeros(0, dtype=torch.long)
    return (torch.cat(matched), torch.cat(inside)) if matched else (empty, empty)


@dataclass
class BoxJudgement:
    """One entry per real layout row (row-major ``(b, n)``), every field ``(K,)`` long:
    ``image_index``; the layout's ``digit_target`` and ``colour_target``; what the judge read:
    ``digit`` (crop judge), ``colour`` (:data:`NO_INK` without ink), ``ink_pixels``, and of the confident
    detections ``matched`` (IoU >= 0.5 with the box) and ``inside`` (at least half inside the box). The
    verdicts follow the module's rule."""

    image_index: torch.Tensor
    digit_target: torch.Tensor
    colour_target: torch.Tensor
    digit: torch.Tensor
    colour: torch.Tensor
    ink_pixels: torch.Tensor
    matched: torch.Tensor
    inside: torch.Tensor

    @property
    def one_digit(self) -> torch.Tensor:
        """``(K,)`` bool: exactly one confident detection lies in the box, and it matches the box."""
        return (self.inside == 1) & (self.matched == 1)

    @property
    def digit_ok(self) -> torch.Tensor:
        """``(K,)`` bool: the crop judge reads the asked digit and the box holds one digit (:attr:`one_digit`)."""
        return (self.digit == self.digit_target) & self.one_digit

    @property
    def colour_ok(self) -> torch.Tensor:
        """``(K,)`` bool: the ink's colour is the asked colour."""
        return self.colour == self.colour_target

    @property
    def both_ok(self) -> torch.Tensor:
        """``(K,)`` bool: digit and colour both correct."""
        return self.digit_ok & self.colour_ok


class ColorJudge:
    """Judges boxes of colour Layout-MNIST canvases (module docstring): ``judge(images, layout, colours)``.

    ``classifier`` (default: the shipped Layout-MNIST crop judge) reads digits; ``detector`` (default: the
    shipped :class:`~.detection.DigitDetector`, reading with the same classifier) counts digits per box.
    """

    def __init__(self, classifier: nn.Module | None = None, detector: DigitDetector | None = None,
                 ink_threshold: float = INK_THRESHOLD, iou: float = 0.5, min_score: float = EXACT_MIN_SCORE, batch_size: int = 1024):
        self.classifier = classifier if classifier is not None else load_crop_classifier()
        self.detector = detector if detector is not None else DigitDetector(classifier=self.classifier)
        self.ink_threshold, self.iou, self.min_score, self.batch_size = ink_threshold, iou, min_score, batch_size

    def describe(self) -> dict:
        """The judge's settings, for reports."""
        return {"digit": {"reader": "layout_mnist32_crops.safetensors", "on": "max over channels", "crop": CROP},
                "one_digit": {"detector": self.detector.describe(), "iou": self.iou, "min_score": self.min_score,
                              "rule": "exactly one confident detection lies at least half inside the box, and it has IoU >= iou with it"},
                "colour": {"ink_threshold": self.ink_threshold, "rule": "nearest RGB corner to the mean of rgb/max(rgb) over ink pixels",
                           "no_ink": NO_INK}}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, layout: torch.Tensor, colours: torch.Tensor) -> BoxJudgement:
        """``images: (B, 3, H, W)`` in [-1, 1]; ``layout: (B, N, 5)`` whose classes are the asked digits (-1
        rows pad); ``colours: (B, N)`` long, the asked colour of each row (ignored on padding rows)."""
        if colours.shape != layout.shape[:2]:
            raise UserError(f"colours must have shape (B, N) = {tuple(layout.shape[:2])}, one colour id per layout row, got {tuple(colours.shape)}")
        grey = grey_canvas(images)
        crops, image_index, digit_target = crop_boxes(grey, layout, **CROP)
        device = next(self.classifier.parameters()).device
        reads = [self.classifier(crops[i : i + self.batch_size].to(device)).argmax(1).cpu() for i in range(0, len(crops), self.batch_size)]
        digit = torch.cat(reads) if reads else torch.zeros(0, dtype=torch.long)
        colour, ink = ink_colours(images, layout, self.ink_threshold)
        matched, inside = detections_per_box(self.detector(grey), layout, tuple(images.shape[-2:]), self.iou, self.min_score)
        return BoxJudgement(image_index=image_index.cpu(), digit_target=digit_target.cpu(), colour_target=colours[validity(layout)].long().cpu(),
                            digit=digit, colour=colour, ink_pixels=ink, matched=matched, inside=inside)


def ceiling_ratio(generated: torch.Tensor, real: torch.Tensor, image_index: torch.Tensor, images: int,
                  boot: dict | None = None) -> dict:
    """A verdict's accuracy on generated canvases as a share of the same verdict on the real canvases of the
    same layouts, with a bootstrap interval over layouts.

    ``generated, real: (K,)`` bool verdicts of the same ``K`` boxes, ``image_index: (K,)`` each box's
    layout in ``[0, images)`` (one canvas per layout). Returns ``{"boxes", "generated", "real", "ratio",
    "ci95"}``: ``ratio = sum(generated) / sum(real)`` (NaN when no real box is correct, and so is the
    interval when a resample holds no correct real box: use enough layouts), ``ci95`` its percentile interval when layouts are drawn with replacement (``boot``: ``resamples``, ``level``,
    ``seed``; default 1000, 0.95, 0), through :func:`.protocols.scoring.bootstrap`.
    """
    from .protocols.scoring import bootstrap

    if not generated.shape == real.shape == image_index.shape or generated.ndim != 1:
        raise UserError(f"generated, real and image_index must be (K,) alike, got {tuple(generated.shape)}, {tuple(real.shape)}, "
                        f"{tuple(image_index.shape)}")
    boot = {"resamples": 1000, "level": 0.95, "seed": 0, **(boot or {})}
    per_gen = torch.bincount(image_index, weights=generated.double(), minlength=images)
    per_real = torch.bincount(image_index, weights=real.double(), minlength=images)

    def stat(idx: torch.Tensor) -> float:
        ceiling = float(per_real[idx].sum())
        return float(per_gen[idx].sum()) / ceiling if ceiling else float("nan")

    k = len(generated)
    result = {"boxes": k, "generated": float(generated.double().mean()) if k else float("nan"),
              "real": float(real.double().mean()) if k else float("nan"), "ratio": stat(torch.arange(images))}
    result["ci95"] = bootstrap(stat, images, boot["resamples"], boot["level"], boot["seed"]) if k else [float("nan")] * 2
    return result
