"""Do samples read as digits? The digit classifier's reading of generated MNIST-like images.

Two measures, both read at the classifier's native 28x28 (32x32 samples are resized back,
antialiased, as the training data was resized up):

* ``confident_fraction`` -- the share of images whose top softmax probability is >= ``threshold``
  (0.9). Alone it is **not** evidence of digits: the classifier is overconfident off its data
  (clamped Gaussian noise or an all-white image is read with probability >= 0.9 every time);
* ``digit_fraction`` -- confident *and* in distribution: the image's classifier features lie
  within the Mahalanobis distance (to the nearest class mean, shared covariance; Lee et al.
  2018) that ``quantile`` of real MNIST-test digits stay within. Real digits pass ~``quantile``
  by construction; noise and blobs fail (``tests/test_digit_quality.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .classifier import load_digit_classifier, mnist_tensors, to_gray


def at_28(images: torch.Tensor) -> torch.Tensor:
    """``images: (B, 1|3, H, W)`` in [-1, 1] -> ``(B, 1, 28, 28)`` (antialiased resize when ``H, W != 28``)."""
    images = to_gray(images)
    if images.shape[-2:] != (28, 28):
        images = F.interpolate(images, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    return images


@torch.no_grad()
def classifier_outputs(images: torch.Tensor, classifier: nn.Module, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """``images: (B, 1|3, H, W)`` -> (features ``(B, F)``, class probabilities ``(B, 10)``), at 28x28."""
    device = next(classifier.parameters()).device
    images = at_28(images)
    feats = torch.cat([classifier.features(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])
    probs = classifier.head(feats.to(device)).softmax(-1).cpu()
    return feats, probs


def digit_confidence(images: torch.Tensor, classifier: nn.Module | None = None) -> torch.Tensor:
    """Top class probability ``(B,)`` of each image ``(B, 1|3, H, W)`` in [-1, 1]."""
    classifier = classifier if classifier is not None else load_digit_classifier()
    return classifier_outputs(images, classifier)[1].amax(-1)


def confident_fraction(images: torch.Tensor, threshold: float = 0.9, classifier: nn.Module | None = None) -> float:
    """Share of ``images: (B, 1|3, H, W)`` read with top probability >= ``threshold`` (see the module note)."""
    check(images, threshold)
    return float((digit_confidence(images, classifier) >= threshold).float().mean())


@dataclass
class DigitReference:
    """Class means ``(10, F)``, shared precision ``(F, F)`` of real digits' features, and the distance
    ``radius`` that ``quantile`` of held-out real digits stay within."""

    means: torch.Tensor
    precision: torch.Tensor
    radius: float
    quantile: float

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance ``(B,)`` of ``features: (B, F)`` to the nearest class mean."""
        diff = features[:, None, :] - self.means[None]  # (B, 10, F)
        return torch.einsum("bkf,fg,bkg->bk", diff, self.precision, diff).clamp(min=0).sqrt().amin(1)


def fit_reference(classifier: nn.Module, fit: tuple[torch.Tensor, torch.Tensor], held_out: torch.Tensor, quantile: float = 0.99) -> DigitReference:
    """A :class:`DigitReference` from labelled real digits ``fit = (images (N, 1, 28, 28), labels (N,))``
    and the radius from ``held_out`` real digits ``(M, 1, 28, 28)``."""
    feats, _ = classifier_outputs(fit[0], classifier)
    feats = feats.double()
    means = torch.stack([feats[fit[1] == k].mean(0) for k in range(10)])
    centred = feats - means[fit[1]]
    cov = centred.T @ centred / (len(feats) - 10)
    cov += 1e-4 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)  # keeps it invertible
    ref = DigitReference(means.float(), torch.linalg.inv(cov).float(), 0.0, quantile)
    ref.radius = float(torch.quantile(ref.distance(classifier_outputs(held_out, classifier)[0]), quantile))
    return ref


@lru_cache(maxsize=2)
def mnist_reference(quantile: float = 0.99) -> DigitReference:
    """The reference of the shipped classifier: fitted on 10,000 MNIST-train digits, radius from the
    last 5,000 MNIST-test digits (never downloads)."""
    classifier = load_digit_classifier()
    x, y = mnist_tensors(True)
    return fit_reference(classifier, (x[:10000], y[:10000]), mnist_tensors(False)[0][-5000:], quantile)


def digit_fraction(images: torch.Tensor, threshold: float = 0.9, classifier: nn.Module | None = None, reference: DigitReference | None = None) -> float:
    """Share of ``images: (B, 1|3, H, W)`` that read as a digit: top probability >= ``threshold`` and
    features within the reference radius (see the module note)."""
    check(images, threshold)
    classifier = classifier if classifier is not None else load_digit_classifier()
    reference = reference if reference is not None else mnist_reference()
    feats, probs = classifier_outputs(images, classifier)
    ok = (probs.amax(-1) >= threshold) & (reference.distance(feats) <= reference.radius)
    return float(ok.float().mean())


def digit_report(images: torch.Tensor, labels: torch.Tensor | None = None, threshold: float = 0.9,
                 classifier: nn.Module | None = None, reference: DigitReference | None = None) -> dict[str, float]:
    """``confident_fraction`` and ``digit_fraction`` of ``images: (B, 1|3, H, W)``, and with
    ``labels: (B,)`` (the classes asked of a class-conditional model) ``label_accuracy``: the share
    the classifier reads as the class asked for. The classifier runs once."""
    check(images, threshold)
    classifier = classifier if classifier is not None else load_digit_classifier()
    reference = reference if reference is not None else mnist_reference()
    feats, probs = classifier_outputs(images, classifier)
    confident = probs.amax(-1) >= threshold
    report = {"confident_fraction": float(confident.float().mean()),
              "digit_fraction": float((confident & (reference.distance(feats) <= reference.radius)).float().mean())}
    if labels is not None:
        report["label_accuracy"] = float((probs.argmax(-1) == labels.cpu()).float().mean())
    return {k: round(v, 4) for k, v in report.items()}


def check(images: torch.Tensor, threshold: float) -> None:
    if not 0 < threshold < 1:
        raise UserError(f"threshold must be in (0, 1), got {threshold}")
    if images.ndim != 4 or len(images) == 0:
        raise UserError(f"images must be a non-empty (B, 1|3, H, W) batch, got shape {tuple(images.shape)}")
