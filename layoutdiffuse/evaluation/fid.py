"""Fréchet distances between feature distributions: the formula, a batched accumulator, digit-FID and Inception-FID.

FID (Heusel et al. 2017) fits a Gaussian to the features of each image set and reports

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

:func:`frechet_distance` computes ``tr((S1 S2)^(1/2))`` as the sum of the square roots of the
eigenvalues of the symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)`` (same spectrum as ``S1 S2``),
in float64 with ``torch.linalg.eigh`` -- no scipy, no complex arithmetic.

**digit-FID** (:func:`digit_fid`) uses the features of the shipped MNIST :class:`DigitClassifier`:
its conv trunk on the *whole canvas at its own size*, globally average pooled (128-d). The trunk
is fully convolutional, so any canvas size works and the digits keep their native scale
(resizing a multi-digit canvas to 28x28 would shrink the digits into blobs). What it measures:
the statistics of digit appearance (stroke, shape, how many digits / how much ink) over the
canvas; it is blind to *where* digits are (the average pool is translation invariant) -- layout
alignment is measured by :mod:`layoutdiffuse.evaluation.layout_accuracy`. Numbers are only
comparable between runs at the same canvas size and with the same classifier weights.

**Inception-FID** (:func:`inception_fid`) goes through
``torchmetrics.image.fid.FrechetInceptionDistance``; its Inception weights must already be on
disk (this project never downloads model weights); any other feature network can be injected.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from ..errors import UserError, MissingFileError

log = logging.getLogger(__name__)

Extractor = Callable[[torch.Tensor], torch.Tensor]
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix ``(D, D)`` (negative eigenvalues from round-off -> 0)."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Squared Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``; ``mu: (D,)``, ``sigma: (D, D)``.

    Computed in float64: ``||mu1-mu2||^2 + tr S1 + tr S2 - 2 sum_i sqrt(lambda_i)`` with
    ``lambda_i`` the eigenvalues of ``S1^(1/2) S2 S1^(1/2)`` (clamped at 0).
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t).detach().to("cpu", torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise UserError(f"mu1 and mu2 must be vectors of the same length (D,), got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise UserError(f"{name} must be a (D, D) = ({d}, {d}) covariance matrix, got {tuple(s.shape)}")
        if not torch.isfinite(s).all():
            raise UserError(f"{name} has NaN or infinite entries")
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return float(value.clamp_min(0))


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``features: (N, D)`` -> ``(mu (D,), sigma (D, D))`` in float64; unbiased covariance (divides by N - 1)."""
    stats = FeatureStatistics()
    stats.update(features)
    return stats.compute()


class FeatureStatistics:
    """Running mean and covariance of feature batches ``(n, D)`` in float64 (sums of x and x x^T)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.sum: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        """Add ``features: (n, D)``."""
        if features.ndim != 2:
            raise UserError(f"features must have shape (N, D), got {tuple(features.shape)}")
        f = features.detach().to("cpu", torch.float64)
        if not torch.isfinite(f).all():
            raise UserError("features contain NaN or infinite values")
        if self.sum is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        elif f.shape[1] != self.sum.shape[0]:
            raise UserError(f"features have dimension {f.shape[1]}, earlier batches had {self.sum.shape[0]}")
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu (D,), sigma (D, D))``; needs at least 2 samples."""
        if self.n < 2:
            raise UserError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu, (sigma + sigma.T) / 2


class FeatureFID:
    """FID over the features of an injected extractor, accumulated batch by batch.

    ``extractor: images (b, ...) -> features (b, D)`` (e.g. ``DigitClassifier.features``); images
    are fed to it in chunks of ``batch_size`` (moved to ``device`` when given) under
    ``torch.inference_mode``. ``update(images, real=True|False)``; :meth:`compute` -> float.
    Real statistics may be precomputed once and set with :meth:`set_real_statistics`.
    """

    def __init__(self, extractor: Extractor, batch_size: int = 256, device: torch.device | str | None = None):
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.extractor = extractor
        self.batch_size = batch_size
        self.device = device
        self.real = FeatureStatistics()
        self.fake = FeatureStatistics()
        self._real_fixed: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``images: (N, ...)`` -> ``(N, D)`` float64 on CPU, extracted in chunks of ``batch_size``."""
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            f = self.extractor(chunk.to(self.device) if self.device is not None else chunk)
            if f.ndim != 2 or f.shape[0] != len(chunk):
                raise UserError(f"the feature extractor must return (batch, D) = ({len(chunk)}, D), got {tuple(f.shape)}")
            out.append(f.to("cpu", torch.float64))
        return torch.cat(out)

    def update(self, images: torch.Tensor | Iterable[torch.Tensor], real: bool) -> None:
        """Add ``images: (N, C, H, W)`` (or an iterable of such batches) to the real or the generated set."""
        batches = [images] if isinstance(images, torch.Tensor) else images
        for batch in batches:
            (self.real if real else self.fake).update(self.features(batch))

    def set_real_statistics(self, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        """Use precomputed real statistics ``mu (D,), sigma (D, D)`` instead of real images."""
        self._real_fixed = (torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64))

    def real_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)`` of the real set (set or accumulated)."""
        return self._real_fixed if self._real_fixed is not None else self.real.compute()

    def compute(self) -> float:
        """FID between the real and the generated features seen so far."""
        return frechet_distance(*self.real_statistics(), *self.fake.compute())

    def reset(self, real: bool = False) -> None:
        """Forget the generated features (and the real ones too when ``real``)."""
        self.fake.reset()
        if real:
            self.real.reset()
            self._real_fixed = None


def digit_fid(images_a: torch.Tensor, images_b: torch.Tensor, classifier: nn.Module | None = None, batch_size: int = 256,
              device: torch.device | str | None = None) -> float:
    """Digit-FID between canvases ``images_a: (Na, 1|3, H, W)`` and ``images_b: (Nb, 1|3, H', W')`` in [-1, 1].

    Features: the classifier's conv trunk on the whole canvas, globally average pooled
    (``DigitClassifier.features``, 128-d; see the module docstring). ``classifier`` defaults to
    the shipped weights. Each set needs >= 2 images; a few hundred or more for a stable value.
    """
    if classifier is None:
        from .classifier import load_digit_classifier

        classifier = load_digit_classifier(device=device)
    for name, images in (("images_a", images_a), ("images_b", images_b)):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise UserError(f"{name} must have shape (N, 1, H, W) or (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
    if device is None:
        device = next(classifier.parameters()).device
    metric = FeatureFID(classifier.features, batch_size=batch_size, device=device)
    metric.update(images_a, real=True)
    metric.update(images_b, real=False)
    return metric.compute()


def _inception_weights(weights_path: str | os.PathLike | None) -> str:
    """The local Inception-FID weights file, or a clear error saying where to put it."""
    candidates = [Path(weights_path)] if weights_path is not None else [Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE]
    for c in candidates:
        if c.is_file():
            return str(c)
    raise MissingFileError(
        f"Inception-FID weights not found (looked at: {', '.join(map(str, candidates))}). This project never downloads "
        f"model weights: copy torch-fidelity's {INCEPTION_WEIGHTS_FILE} there (or pass weights_path=...), "
        f"or use digit_fid / inception_fid(feature_extractor=...) instead."
    )


def inception_fid(images_a: torch.Tensor, images_b: torch.Tensor, feature: int = 2048, weights_path: str | os.PathLike | None = None,
                  feature_extractor: nn.Module | None = None, batch_size: int = 64, device: torch.device | str | None = None) -> float:
    """FID through ``torchmetrics.image.fid.FrechetInceptionDistance``; images ``(N, 1|3, H, W)`` in [-1, 1].

    Images are mapped to [0, 1] and gray is repeated to RGB. Default: torch-fidelity's
    Inception-v3 ``feature`` layer (64, 192, 768 or 2048), whose weights must be present locally
    (``weights_path`` or the torch hub checkpoint folder) -- otherwise :class:`FileNotFoundError`
    (or :class:`ModuleNotFoundError` without torch-fidelity). ``feature_extractor``: any
    ``nn.Module`` mapping float RGB ``(b, 3, H, W)`` in [0, 1] to ``(b, D)`` replaces Inception.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    for name, images in (("images_a", images_a), ("images_b", images_b)):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise UserError(f"{name} must have shape (N, 1, H, W) or (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
    if feature_extractor is not None:
        metric = FrechetInceptionDistance(feature=feature_extractor, normalize=True, input_img_size=(3, *images_a.shape[-2:]))
    else:
        try:
            import torch_fidelity  # noqa: F401
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                "inception_fid needs torch-fidelity for the Inception network (pip install torch-fidelity) and its weights "
                f"on disk ({INCEPTION_WEIGHTS_FILE}); or pass feature_extractor=..., or use digit_fid"
            ) from err
        metric = FrechetInceptionDistance(feature=feature, normalize=True, feature_extractor_weights_path=_inception_weights(weights_path))
    metric = metric.to(device) if device is not None else metric
    with torch.no_grad():
        for real, images in ((True, images_a), (False, images_b)):
            for i in range(0, len(images), batch_size):
                x = images[i : i + batch_size].to(metric.device, torch.float32).add(1).div(2).clamp(0, 1)
                metric.update(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x, real=real)
        return float(metric.compute())
