"""AUROC and F1-max over a full threshold sweep, for image scores and for pixel maps."""

import numpy as np

from bench.metrics.sweep import ScoreSweep
from bench.metrics.validation import (
    UndefinedMetricError,
    as_binary_labels,
    check_same_size,
    clip_to_unit_interval,
)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Compute the area under the ROC curve, with tied scores merged into one ROC point.

    `labels` (bool or 0/1, 1 = anomalous) and `scores` (higher = more anomalous) may have any
    shape with the same number of elements, and both are flattened. Raises
    UndefinedMetricError when only one label is present, and ValueError on NaN or infinite
    scores.

    Example:
        >>> auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    positives = as_binary_labels(labels, "labels")
    sweep = ScoreSweep(scores, "scores")
    check_same_size(positives.size, sweep.size)
    return auroc_from_sweep(sweep, sweep.take(positives), unit="samples")


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Compute the maximum F1 score over all thresholds, predicting anomalous at score >= threshold.

    Shapes and dtypes as in `auroc`. Raises UndefinedMetricError when no label is positive.

    Example:
        >>> f1_max(np.array([0, 1, 1]), np.array([0.2, 0.1, 0.9]))
        0.8
    """
    positives = as_binary_labels(labels, "labels")
    sweep = ScoreSweep(scores, "scores")
    check_same_size(positives.size, sweep.size)
    return f1_max_from_sweep(sweep, sweep.take(positives), unit="samples")


def auroc_from_sweep(sweep: ScoreSweep, sorted_positives: np.ndarray, unit: str) -> float:
    """Compute AUROC from a sweep and its labels in sorted order (`sweep.take(labels)`).

    `unit` names the elements in the undefined-metric reason, e.g. "test images" or "pixels".
    """
    true_positives = sweep.cumulative_at_run_ends(sorted_positives, np.int64)
    false_positives = sweep.n_at_or_above - true_positives
    n_positive = int(true_positives[-1])
    n_negative = int(false_positives[-1])
    if n_positive == 0 or n_negative == 0:
        state = "normal" if n_positive == 0 else "anomalous"
        raise UndefinedMetricError(f"only one label present: all {sweep.size} {unit} are {state}")

    # Trapezoid rule on the ROC curve from (0, 0), in integer counts, where
    # 2 * P * N * area = sum of (FP_k - FP_{k-1}) * (TP_k + TP_{k-1}).
    # Each term and the sum stay below 2 * P * N <= size**2 / 2, so int64 is exact for
    # sizes up to 4e9 elements and the only rounding is the final division.
    true_positives = np.concatenate((np.zeros(1, dtype=np.int64), true_positives))
    false_positives = np.concatenate((np.zeros(1, dtype=np.int64), false_positives))
    doubled_area = np.sum(
        np.diff(false_positives) * (true_positives[1:] + true_positives[:-1]), dtype=np.int64
    )
    value = int(doubled_area) / (2 * n_positive * n_negative)
    return clip_to_unit_interval(value, "AUROC")


def f1_max_from_sweep(sweep: ScoreSweep, sorted_positives: np.ndarray, unit: str) -> float:
    """Compute F1-max from a sweep and its labels in sorted order (`sweep.take(labels)`)."""
    true_positives = sweep.cumulative_at_run_ends(sorted_positives, np.int64)
    n_positive = int(true_positives[-1])
    if n_positive == 0:
        raise UndefinedMetricError(f"no positive label: all {sweep.size} {unit} are normal")

    # F1 = 2PR / (P + R) = 2 TP / (predicted positives + actual positives), which is 0 rather
    # than 0/0 at thresholds with no true positive.
    f1 = 2.0 * true_positives / (sweep.n_at_or_above + n_positive)
    return clip_to_unit_interval(float(f1.max()), "F1-max")
