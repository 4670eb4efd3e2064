"""Evaluation: digit-FID / Inception-FID, layout accuracy (box-crop classification), diversity.

All metrics read images in [-1, 1] and box layouts ``(B, N, 5)`` (see :mod:`layoutdiffuse.layout`),
and use the small MNIST :class:`DigitClassifier` shipped in ``weights/``. Retrain it with
``python -m layoutdiffuse.evaluation.train_classifier --root DATA --out FILE.safetensors``.
"""
from .classifier import DigitClassifier, load_digit_classifier, train_digit_classifier
from .diversity import diversity, pairwise_lpips
from .fid import FeatureFID, FeatureStatistics, digit_fid, feature_statistics, frechet_distance, inception_fid
from .layout_accuracy import LayoutAccuracy, LayoutAccuracyResult, confusion_matrix, crop_boxes, layout_accuracy

__all__ = [
    "DigitClassifier", "load_digit_classifier", "train_digit_classifier",
    "frechet_distance", "feature_statistics", "FeatureStatistics", "FeatureFID", "digit_fid", "inception_fid",
    "crop_boxes", "confusion_matrix", "LayoutAccuracy", "LayoutAccuracyResult", "layout_accuracy",
    "diversity", "pairwise_lpips",
]
