"""All benchmark metrics of one evaluation, computed from raw image scores and anomaly maps."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.metrics.curves import auroc_from_sweep, f1_max_from_sweep
from bench.metrics.pro import aupro_from_sweep, check_pixel_shapes, label_regions
from bench.metrics.sweep import ScoreSweep
from bench.metrics.validation import UndefinedMetricError, as_binary_labels

# Order of the list that compute_metrics returns.
METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max")
PIXEL_METRIC_NAMES = ("pixel_auroc", "aupro", "pixel_f1_max")

NO_PIXEL_GROUND_TRUTH = "no pixel ground truth: masks and maps were not given"


@dataclass(frozen=True)
class MetricValue:
    """One metric of an evaluation, or the reason it is undefined.

    `value` is None exactly when `null_reason` is set. `resolution` is "HxW" of the maps and
    masks that pixel metrics were computed at. It is None for image metrics, and for pixel
    metrics when no masks and maps were given.
    """

    name: str
    value: float | None
    null_reason: str | None
    resolution: str | None

    def __post_init__(self):
        if (self.value is None) == (self.null_reason is None):
            raise ValueError(
                f"metric {self.name}: set exactly one of value and null_reason, "
                f"got value={self.value!r}, null_reason={self.null_reason!r}"
            )


def compute_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
) -> list[MetricValue]:
    """Compute the five metrics of one evaluation, in the order of METRIC_NAMES.

    `labels` is (N,) 0/1 per test image (1 = anomalous) and `scores` is (N,) real image
    scores. `masks` is (N, H, W) bool and `maps` is (N, H, W) real anomaly maps, preferably
    float32; pass both or neither. Without them the pixel metrics have value None and the
    reason NO_PIXEL_GROUND_TRUTH. A metric that is undefined on the data, such as AUROC on a
    test set without anomalous images, has value None and the reason, never 0 or 0.5.
    Raises ValueError on invalid input, such as NaN scores or mismatched shapes.

    Example:
        >>> [m.value for m in compute_metrics(np.array([0, 1]), np.array([0.2, 0.7]))][:1]
        [1.0]
    """
    positives = as_binary_labels(labels, "labels")
    image_sweep = ScoreSweep(scores, "scores")
    if np.ndim(labels) != 1 or np.ndim(scores) != 1 or positives.size != image_sweep.size:
        raise ValueError(
            f"labels and scores must both be (N,), got {np.shape(labels)} and {np.shape(scores)}"
        )

    sorted_positives = image_sweep.take(positives)
    results = {
        "image_auroc": _evaluate(
            "image_auroc",
            None,
            lambda: auroc_from_sweep(image_sweep, sorted_positives, "test images"),
        ),
        "image_f1_max": _evaluate(
            "image_f1_max",
            None,
            lambda: f1_max_from_sweep(image_sweep, sorted_positives, "test images"),
        ),
    }
    results.update(_compute_pixel_metrics(masks, maps, n_images=positives.size))
    return [results[name] for name in METRIC_NAMES]


def _compute_pixel_metrics(
    masks: np.ndarray | None, maps: np.ndarray | None, n_images: int
) -> dict[str, MetricValue]:
    """Compute pixel AUROC, AUPRO and pixel F1-max from one shared sort of the maps."""
    if masks is None and maps is None:
        return {
            name: MetricValue(name, None, NO_PIXEL_GROUND_TRUTH, None)
            for name in PIXEL_METRIC_NAMES
        }
    if masks is None or maps is None:
        missing = "masks" if masks is None else "maps"
        raise ValueError(f"{missing} is None: pass both masks and maps, or neither")

    check_pixel_shapes(masks, maps)
    shape = np.shape(maps)
    if shape[0] != n_images:
        raise ValueError(
            f"maps has {shape[0]} images but labels has {n_images}, and the counts must match"
        )

    resolution = f"{shape[1]}x{shape[2]}"
    sweep = ScoreSweep(maps, "maps")
    pixel_positives = as_binary_labels(masks, "masks").reshape(shape)
    region_ids, region_sizes = label_regions(pixel_positives)
    del pixel_positives
    sorted_region_ids = sweep.take(region_ids)
    del region_ids
    sorted_positives = sorted_region_ids != 0

    return {
        "pixel_auroc": _evaluate(
            "pixel_auroc", resolution, lambda: auroc_from_sweep(sweep, sorted_positives, "pixels")
        ),
        "aupro": _evaluate(
            "aupro",
            resolution,
            lambda: aupro_from_sweep(sweep, sorted_region_ids, region_sizes, n_images),
        ),
        "pixel_f1_max": _evaluate(
            "pixel_f1_max", resolution, lambda: f1_max_from_sweep(sweep, sorted_positives, "pixels")
        ),
    }


def _evaluate(name: str, resolution: str | None, compute: Callable[[], float]) -> MetricValue:
    """Run one metric, turning UndefinedMetricError into a value of None with its reason."""
    try:
        return MetricValue(name, compute(), None, resolution)
    except UndefinedMetricError as error:
        return MetricValue(name, None, str(error), resolution)
