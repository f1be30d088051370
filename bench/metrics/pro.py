"""AUPRO: the normalised area under the per-region overlap (PRO) curve up to an FPR limit.

The protocol is that of Bergmann et al., "The MVTec Anomaly Detection Dataset: A Comprehensive
Real-World Dataset for Unsupervised Anomaly Detection", IJCV 129(4), 2021, and of compute_pro in
the MVTec AD evaluation scripts. Every connected ground-truth region counts equally whatever
its size. The false positive rate (FPR) counts all normal pixels of the test set, normal
images included. The curve is integrated from FPR 0 to the limit (0.3 in the paper) and
divided by the limit.
"""

import numpy as np
from scipy import ndimage

from bench.metrics.sweep import ScoreSweep
from bench.metrics.validation import UndefinedMetricError, as_binary_labels, clip_to_unit_interval

# A 3x3 block of ones in the middle plane of a (3, 3, 3) structure gives 8-connectivity within
# each image and none across images. One ndimage.label call on the (N, H, W) stack then labels
# each image as label(mask, np.ones((3, 3))) would, with ids unique across images.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label the 8-connected anomalous regions of each mask, never joining two masks.

    `masks` is (N, H, W) bool. Returns `region_ids`, (N, H, W) int32 with 0 for normal pixels
    and 1..n_regions for the regions, and `region_sizes`, (n_regions + 1,) int64 pixel counts
    where index 0 counts the normal pixels.
    """
    region_ids = np.zeros(masks.shape, dtype=np.int32)
    n_regions = ndimage.label(masks, structure=_REGION_STRUCTURE, output=region_ids)

    # Counting image by image keeps np.bincount's int64 copy of its input to one image.
    region_sizes = np.zeros(n_regions + 1, dtype=np.int64)
    for image_ids in region_ids:
        region_sizes += np.bincount(image_ids.ravel(), minlength=n_regions + 1)
    return region_ids, region_sizes


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Compute AUPRO of anomaly maps against ground-truth masks, in [0, 1].

    `masks` is (N, H, W) bool or 0/1 (1 = anomalous pixel). `maps` is (N, H, W) real scores,
    preferably float32 for speed. Raises UndefinedMetricError when the masks contain no
    anomalous region or no normal pixel, and ValueError on NaN or infinite scores.

    Example:
        >>> masks = np.zeros((1, 4, 4), dtype=bool)
        >>> masks[0, :2, :2] = True
        >>> aupro(masks, masks.astype(np.float32))
        1.0
    """
    check_pixel_shapes(masks, maps)
    check_fpr_limit(fpr_limit)
    shape = np.shape(maps)
    sweep = ScoreSweep(maps, "maps")
    region_ids, region_sizes = label_regions(as_binary_labels(masks, "masks").reshape(shape))
    sorted_region_ids = sweep.take(region_ids)
    del region_ids
    return aupro_from_sweep(sweep, sorted_region_ids, region_sizes, shape[0], fpr_limit)


def check_fpr_limit(fpr_limit: float) -> None:
    """Raise ValueError unless 0 < fpr_limit <= 1."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")


def check_pixel_shapes(masks: np.ndarray, maps: np.ndarray) -> None:
    """Raise ValueError unless masks and maps are both (N, H, W) of the same shape."""
    masks_shape = np.shape(masks)
    maps_shape = np.shape(maps)
    if len(maps_shape) != 3 or masks_shape != maps_shape:
        raise ValueError(
            f"masks and maps must both be (N, H, W) with the same shape, "
            f"got masks {masks_shape} and maps {maps_shape}"
        )


def aupro_from_sweep(
    sweep: ScoreSweep,
    sorted_region_ids: np.ndarray,
    region_sizes: np.ndarray,
    n_images: int,
    fpr_limit: float = 0.3,
) -> float:
    """Compute AUPRO from a sweep of the maps and region ids from `label_regions`.

    `sorted_region_ids` is `sweep.take(region_ids)`. `n_images` is used only in reasons.
    """
    check_fpr_limit(fpr_limit)
    n_regions = region_sizes.size - 1
    n_normal = int(region_sizes[0])
    if n_regions == 0:
        raise UndefinedMetricError(f"no anomalous region: all {n_images} masks are empty")
    if n_normal == 0:
        raise UndefinedMetricError(
            f"no normal pixel: all {sweep.size} pixels of the {n_images} masks are anomalous"
        )

    # Region id 0 marks normal pixels, and each one found at or above a threshold is a false
    # positive.
    is_normal = np.zeros(n_regions + 1, dtype=np.int64)
    is_normal[0] = 1
    false_positives = sweep.cumulative_at_run_ends(sorted_region_ids, np.int64, lookup=is_normal)
    fpr = false_positives / n_normal

    # The lowest threshold flags every pixel, so FPR ends at 1 >= fpr_limit. Points past the
    # first one above the limit do not affect the integral, so PRO is summed only up to it.
    n_points = min(int(np.searchsorted(fpr, fpr_limit, side="right")) + 1, fpr.size)
    fpr = fpr[:n_points]

    # Each pixel of region r adds 1 / (|r| * n_regions) to PRO, the mean over regions of the
    # fraction of each region's pixels at or above the threshold.
    region_weights = np.zeros(n_regions + 1, dtype=np.float64)
    region_weights[1:] = 1.0 / (region_sizes[1:] * n_regions)
    pro = sweep.cumulative_at_run_ends(
        sorted_region_ids, np.float64, n_runs=n_points, lookup=region_weights
    )

    fpr = np.concatenate(([0.0], fpr))
    pro = np.concatenate(([0.0], pro))
    area = integrate_to_limit(fpr, pro, fpr_limit)
    return clip_to_unit_interval(area / fpr_limit, "AUPRO")


def integrate_to_limit(x: np.ndarray, y: np.ndarray, x_limit: float) -> float:
    """Integrate y over x from x[0] to x_limit with the trapezoid rule.

    `x` is non-decreasing with x[-1] >= x_limit. When x_limit falls between two points, y at
    x_limit is interpolated linearly between them.
    """
    n_inside = int(np.searchsorted(x, x_limit, side="right"))
    x_inside = x[:n_inside]
    y_inside = y[:n_inside]

    if x_inside[-1] < x_limit:
        # x[n_inside] > x_limit > x[n_inside - 1], so the slope below has a non-zero denominator.
        x0, x1 = x[n_inside - 1], x[n_inside]
        y0, y1 = y[n_inside - 1], y[n_inside]
        y_limit = y0 + (x_limit - x0) * (y1 - y0) / (x1 - x0)
        x_inside = np.append(x_inside, x_limit)
        y_inside = np.append(y_inside, y_limit)

    return float(np.trapezoid(y_inside, x_inside))
