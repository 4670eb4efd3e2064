"""Diversity of the samples of one layout: mean pairwise digit-LPIPS.

The field reports LPIPS between samples of one layout (docs/method.md §7). Without the AlexNet/VGG
LPIPS weights (no model hubs here), this uses the same formula (Zhang et al. 2018, eq. 1) with
the MNIST :class:`DigitClassifier` trunk as the network and unit layer weights:

    d(x, x') = sum_l  1/(H_l W_l)  sum_{h,w} || u^l_hw(x) - u^l_hw(x') ||^2,
    u^l_hw = y^l_hw / (||y^l_hw|| + eps)      (channel-normalised stage-l feature at cell (h, w))

over the 3 stages of the trunk. ``d`` is 0 for identical images and compares samples cell by
cell, which is meaningful here because the samples of one layout share their box positions.
Values are comparable between runs at the same canvas size with the same classifier weights.
"""
from __future__ import annotations

import torch
from torch import nn
from ..errors import UserError

EPS = 1e-10


def pairwise_lpips(samples: torch.Tensor, classifier: nn.Module | None = None) -> torch.Tensor:
    """``samples: (K, 1|3, H, W)`` in [-1, 1] -> digit-LPIPS distances ``(K, K)`` (symmetric, zero diagonal)."""
    if samples.ndim != 4 or samples.shape[1] not in (1, 3):
        raise UserError(f"samples must have shape (K, 1, H, W) or (K, 3, H, W) in [-1, 1], got {tuple(samples.shape)}")
    if classifier is None:
        from .classifier import load_digit_classifier

        classifier = load_digit_classifier()
    device = next(classifier.parameters()).device
    with torch.inference_mode():
        maps = classifier.feature_maps(samples.to(device, torch.float32))
        k = samples.shape[0]
        dist = torch.zeros(k, k, dtype=torch.float64)
        for y in maps:  # one term per trunk stage
            u = y / (y.norm(dim=1, keepdim=True) + EPS)
            flat = u.flatten(1).double()
            # exact differences (no |a|^2 + |b|^2 - 2ab cancellation): identical samples give exactly 0
            dist += torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist").square().cpu() / (y.shape[2] * y.shape[3])
    return dist


def diversity(samples: torch.Tensor, classifier: nn.Module | None = None) -> float:
    """Mean pairwise digit-LPIPS over the pairs ``i < j`` of ``samples: (K, C, H, W)`` of one layout.

    ``(L, K, C, H, W)`` (K samples of each of L layouts) gives the mean over layouts. Needs K >= 2.
    """
    if classifier is None:
        from .classifier import load_digit_classifier

        classifier = load_digit_classifier()
    if samples.ndim == 5:
        return sum(diversity(group, classifier) for group in samples) / len(samples) if len(samples) else float("nan")
    if samples.ndim != 4 or samples.shape[0] < 2:
        raise UserError(f"samples must have shape (K, C, H, W) with K >= 2 samples of one layout (or (L, K, C, H, W)), got {tuple(samples.shape)}")
    d = pairwise_lpips(samples, classifier)
    i, j = torch.triu_indices(len(d), len(d), offset=1)
    return float(d[i, j].mean())
