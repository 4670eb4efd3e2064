"""Scores of a protocol run, each with a bootstrap interval over layouts.

Every measure is computed from per-image (or per-layout) pieces that are computed once; a
bootstrap resample draws layouts with replacement (``resamples`` times, a seeded generator) and
recomputes the measure from the pieces of the drawn layouts (all samples of a drawn layout come
along), so the interval reflects which layouts were drawn. The interval is the percentile interval
at ``level``.

* ``fid``: Fréchet distance between the generated images' features and the real reference
  statistics (fixed, not resampled). A resample repeats images, which shrinks the features'
  covariance and raises FID, so FID's percentile interval sits above its value (measured: 2.29 with
  [2.64, 4.78] for 64 images); read it as the spread over layouts, not as an interval around the value;
* ``detection``: COCO AP / AP50 / AP75 of the detector's boxes against the layouts
  (:func:`..detection.mean_average_precision`);
* ``layout_accuracy``: box-crop classification accuracy (all boxes of the drawn images);
* ``diversity``: mean over layouts of the mean pairwise distance between the layout's samples.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ...errors import UserError
from ..fid import FeatureFID, FeatureStatistics, frechet_distance


def bootstrap(statistic: Callable[[torch.Tensor], float], layouts: int, resamples: int, level: float, seed: int) -> list[float]:
    """Percentile interval ``[lo, hi]`` of ``statistic(layout indices (L,))`` over ``resamples`` draws with replacement."""
    if resamples < 1 or not 0 < level < 1:
        raise UserError(f"bootstrap needs resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([statistic(torch.randint(layouts, (layouts,), generator=g)) for _ in range(resamples)], dtype=torch.float64)
    alpha = (1 - level) / 2
    return [float(torch.quantile(values, alpha)), float(torch.quantile(values, 1 - alpha))]


def images_of(layout_idx: torch.Tensor, samples: int) -> torch.Tensor:
    """Image indices ``(L * samples,)`` of the drawn layouts (image ``k`` shows layout ``k // samples``)."""
    return (layout_idx[:, None] * samples + torch.arange(samples)).flatten()


def fid_score(features: torch.Tensor, real: tuple[torch.Tensor, torch.Tensor], samples: int, boot: dict[str, Any]) -> dict[str, Any]:
    """FID of generated ``features (K, D)`` against real ``(mu, sigma)`` with its interval."""
    def stat(idx: torch.Tensor) -> float:
        s = FeatureStatistics()
        s.update(features[images_of(idx, samples)])
        return frechet_distance(*real, *s.compute())

    layouts = len(features) // samples
    return {"value": stat(torch.arange(layouts)), "ci95": bootstrap(stat, layouts, boot["resamples"], boot["level"], boot["seed"])}


def detection_scores(predictions: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]], samples: int,
                     boot: dict[str, Any]) -> dict[str, Any]:
    """AP, AP50, AP75 of detections against targets (one per image), each with its interval."""
    from ..detection import mean_average_precision

    layouts = len(predictions) // samples

    def all_ap(idx: torch.Tensor) -> dict[str, float]:
        chosen = images_of(idx, samples).tolist()
        return mean_average_precision([predictions[i] for i in chosen], [targets[i] for i in chosen])

    full = all_ap(torch.arange(layouts))
    g = torch.Generator().manual_seed(boot["seed"])
    draws = [all_ap(torch.randint(layouts, (layouts,), generator=g)) for _ in range(boot["resamples"])]
    alpha = (1 - boot["level"]) / 2
    out = {}
    for key in ("ap", "ap50", "ap75"):
        values = torch.tensor([d[key] for d in draws], dtype=torch.float64)
        out[key] = {"value": full[key], "ci95": [float(torch.quantile(values, alpha)), float(torch.quantile(values, 1 - alpha))]}
    return out


def ratio_score(correct: torch.Tensor, total: torch.Tensor, samples: int, boot: dict[str, Any]) -> dict[str, Any]:
    """``sum(correct) / sum(total)`` over images (``(K,)`` each) with its interval (layout accuracy)."""
    def stat(idx: torch.Tensor) -> float:
        i = images_of(idx, samples)
        return float(correct[i].sum() / total[i].sum().clamp_min(1))

    layouts = len(correct) // samples
    return {"value": stat(torch.arange(layouts)), "ci95": bootstrap(stat, layouts, boot["resamples"], boot["level"], boot["seed"])}


def mean_score(per_layout: torch.Tensor, boot: dict[str, Any]) -> dict[str, Any]:
    """Mean of per-layout values ``(L,)`` with its interval (diversity)."""
    def stat(idx: torch.Tensor) -> float:
        return float(per_layout[idx].double().mean())

    return {"value": stat(torch.arange(len(per_layout))), "ci95": bootstrap(stat, len(per_layout), boot["resamples"], boot["level"], boot["seed"])}


def features_of(extractor: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``(N, D)`` float64 features of ``images`` (through :class:`..fid.FeatureFID`'s batching and checks)."""
    return FeatureFID(extractor, batch_size=batch_size).features(images)
