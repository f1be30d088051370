"""Tests for bench.metrics against plain loop references, sklearn and hand-computed cases."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from bench.metrics import (
    METRIC_NAMES,
    MetricValue,
    UndefinedMetricError,
    aupro,
    auroc,
    compute_metrics,
    f1_max,
)
from bench.metrics.pro import label_regions
from bench.metrics.sweep import ScoreSweep
from bench.metrics.validation import clip_to_unit_interval

SEEDS = [0, 1, 2, 3]


# Plain references: one loop iteration per distinct threshold, no shared code with bench.metrics.


def trapezoid_area(points: list[tuple[float, float]]) -> float:
    """Integrate a polyline given as (x, y) points with the trapezoid rule."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        area += (x1 - x0) * (y0 + y1) / 2
    return area


def reference_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Compute AUROC by evaluating TPR and FPR at every distinct threshold."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_positive = np.sum(labels)
    n_negative = np.sum(~labels)

    points = [(0.0, 0.0)]
    for threshold in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= threshold
        tpr = np.sum(predicted & labels) / n_positive
        fpr = np.sum(predicted & ~labels) / n_negative
        points.append((fpr, tpr))
    return trapezoid_area(points)


def reference_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Compute F1-max by evaluating precision and recall at every distinct threshold."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()

    best = 0.0
    for threshold in sorted(set(scores.tolist())):
        predicted = scores >= threshold
        true_positives = np.sum(predicted & labels)
        if true_positives == 0:
            continue
        precision = true_positives / np.sum(predicted)
        recall = true_positives / np.sum(labels)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def reference_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Compute AUPRO by evaluating FPR and per-region overlap at every distinct threshold."""
    maps = np.asarray(maps, dtype=np.float64)
    region_scores = []
    for mask, anomaly_map in zip(masks, maps):
        labelled, n_regions = ndimage.label(mask, structure=np.ones((3, 3)))
        for region in range(1, n_regions + 1):
            region_scores.append(anomaly_map[labelled == region])
    normal_scores = maps[~masks]

    points = [(0.0, 0.0)]
    for threshold in sorted(set(maps.ravel().tolist()), reverse=True):
        fpr = np.mean(normal_scores >= threshold)
        pro = np.mean([np.mean(scores >= threshold) for scores in region_scores])
        points.append((fpr, pro))

    cut_points = [points[0]]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 <= fpr_limit:
            cut_points.append((x1, y1))
            continue
        y_limit = y0 + (fpr_limit - x0) * (y1 - y0) / (x1 - x0)
        cut_points.append((fpr_limit, y_limit))
        break
    return trapezoid_area(cut_points) / fpr_limit


def random_blob_masks(rng: np.random.Generator, n_images: int = 6, size: int = 16) -> np.ndarray:
    """Return (n_images, size, size) masks of smooth random blobs; image 0 stays normal."""
    masks = np.zeros((n_images, size, size), dtype=bool)
    for i in range(1, n_images):
        noise = ndimage.gaussian_filter(rng.random((size, size)), sigma=rng.uniform(0.7, 2.0))
        masks[i] = noise > np.quantile(noise, rng.uniform(0.75, 0.95))
    return masks


def random_maps(rng: np.random.Generator, masks: np.ndarray, ties: bool) -> np.ndarray:
    """Return float32 maps that score anomalous pixels higher on average, rounded for ties."""
    maps = rng.random(masks.shape) + 0.5 * masks
    if ties:
        maps = np.round(maps, 1)
    return maps.astype(np.float32)


# AUROC


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_auroc_pixels_match_reference(seed, ties):
    rng = np.random.default_rng(seed)
    masks = random_blob_masks(rng)
    maps = random_maps(rng, masks, ties)

    value = auroc(masks, maps)

    assert value == pytest.approx(reference_auroc(masks, maps), abs=1e-9)
    assert value == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int64])
@pytest.mark.parametrize("seed", SEEDS)
def test_auroc_image_scores_match_reference(seed, dtype):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=40)
    scores = (np.round(rng.normal(size=40) * 3) + 2 * labels).astype(dtype)

    value = auroc(labels, scores)

    assert value == pytest.approx(reference_auroc(labels, scores), abs=1e-9)
    assert value == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_auroc_perfect_scores_is_one():
    labels = np.array([0, 0, 0, 1, 1])
    assert auroc(labels, np.array([0.1, 0.2, 0.3, 0.4, 0.9])) == 1.0


def test_auroc_inverted_scores_is_zero():
    labels = np.array([0, 0, 0, 1, 1])
    assert auroc(labels, np.array([0.9, 0.8, 0.7, 0.2, 0.1])) == 0.0


def test_auroc_constant_scores_is_half():
    labels = np.array([0, 1, 0, 1, 1, 0, 0])
    assert auroc(labels, np.full(7, 0.25, dtype=np.float32)) == 0.5


def test_auroc_hand_case_with_tie():
    # ROC points (0, 0), (0, 1/2), (1/2, 1), (1, 1): area 1/2 * 1/2 * 3/2 + 1/2 = 7/8.
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    assert auroc(labels, scores) == 0.875


def test_auroc_single_label_raises():
    expected = "only one label present: all 4 samples are normal"
    with pytest.raises(UndefinedMetricError, match=expected):
        auroc(np.zeros(4), np.arange(4.0))
    with pytest.raises(UndefinedMetricError, match="all 3 samples are anomalous"):
        auroc(np.ones(3, dtype=bool), np.arange(3.0))


def test_auroc_nan_scores_raise():
    scores = np.array([0.1, np.nan, 0.3, np.nan, np.inf])
    with pytest.raises(ValueError, match=r"3 invalid values of 5 \(2 NaN, 1 infinite\)"):
        auroc(np.array([0, 1, 0, 1, 1]), scores)


def test_auroc_invalid_labels_raise():
    with pytest.raises(ValueError, match="1 of 3 values are neither"):
        auroc(np.array([0, 2, 1]), np.arange(3.0))


def test_auroc_size_mismatch_raises():
    with pytest.raises(ValueError, match="3 labels, 4 scores"):
        auroc(np.array([0, 1, 1]), np.arange(4.0))


# F1-max


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_f1_max_matches_brute_force(seed, ties):
    rng = np.random.default_rng(seed)
    masks = random_blob_masks(rng)
    maps = random_maps(rng, masks, ties)

    value = f1_max(masks, maps)

    precision, recall, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    with np.errstate(invalid="ignore"):
        sklearn_f1 = np.nanmax(2 * precision * recall / (precision + recall))
    assert value == pytest.approx(reference_f1_max(masks, maps), abs=1e-9)
    assert value == pytest.approx(sklearn_f1, abs=1e-9)


def test_f1_max_hand_case():
    # Thresholds 0.9, 0.8, 0.3, 0.1 give F1 2/3, 1/2, 4/5, 2/3.
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    assert f1_max(labels, scores) == pytest.approx(0.8, abs=1e-12)


def test_f1_max_ties_form_one_threshold():
    # The only threshold flags all three: precision 2/3, recall 1, F1 4/5. Splitting the
    # tie could reach 1.0 by flagging the two positives first.
    labels = np.array([1, 0, 1])
    assert f1_max(labels, np.full(3, 0.5)) == pytest.approx(0.8, abs=1e-12)


def test_f1_max_without_positive_raises():
    with pytest.raises(UndefinedMetricError, match="no positive label: all 5 samples are normal"):
        f1_max(np.zeros(5, dtype=int), np.arange(5.0))


# AUPRO


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_aupro_matches_reference(seed, ties):
    rng = np.random.default_rng(seed)
    masks = random_blob_masks(rng)
    maps = random_maps(rng, masks, ties)

    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-9)


@pytest.mark.parametrize("fpr_limit", [0.01, 0.05, 0.5, 1.0])
def test_aupro_other_limits_match_reference(fpr_limit):
    rng = np.random.default_rng(7)
    masks = random_blob_masks(rng)
    maps = random_maps(rng, masks, ties=True)

    expected = reference_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit) == pytest.approx(expected, abs=1e-9)


def test_aupro_perfect_map_is_one():
    masks = random_blob_masks(np.random.default_rng(0))
    assert aupro(masks, masks.astype(np.float32)) == 1.0


def test_aupro_inverted_map_is_zero():
    masks = random_blob_masks(np.random.default_rng(0))
    assert aupro(masks, -masks.astype(np.float32)) == 0.0


def test_aupro_constant_map_is_half_limit():
    # One threshold: the curve is the segment (0, 0) to (1, 1), so the area up to 0.3 is
    # 0.3 * 0.3 / 2, which divided by 0.3 gives 0.15.
    masks = random_blob_masks(np.random.default_rng(0))
    maps = np.full(masks.shape, 2.0, dtype=np.float32)
    assert aupro(masks, maps) == pytest.approx(0.15, abs=1e-12)


def small_and_large_region_case() -> tuple[np.ndarray, np.ndarray]:
    """Return a 9x13 image with a 1-pixel and a 16-pixel region and 100 normal pixels.

    Scores: small region 4, 10 normal pixels 3, large region 2, the other normal pixels 0.
    """
    masks = np.zeros((1, 9, 13), dtype=bool)
    maps = np.zeros((1, 9, 13), dtype=np.float32)
    masks[0, 0, 0] = True
    masks[0, 4:8, 4:8] = True
    maps[0, 0, 0] = 4.0
    maps[0, 4:8, 4:8] = 2.0
    maps[0, 8, 3:13] = 3.0
    return masks, maps


def test_aupro_regions_weighted_equally():
    # Curve (0, 0), (0, 1/2), (0.1, 1/2), (0.1, 1), (1, 1): the 1-pixel region alone gives
    # PRO 1/2, not 1/17. Area up to 0.3 is 0.1 * 1/2 + 0.2 * 1 = 0.25.
    masks, maps = small_and_large_region_case()
    assert aupro(masks, maps) == pytest.approx(0.25 / 0.3, abs=1e-12)


def test_aupro_fpr_counts_normal_images():
    # A normal image of 117 pixels at score 0 raises the normal pixel count from 100 to 217,
    # so the 10 normal pixels at score 3 give FPR 10/217 instead of 0.1.
    masks, maps = small_and_large_region_case()
    masks = np.concatenate((masks, np.zeros_like(masks)))
    maps = np.concatenate((maps, np.zeros_like(maps)))
    fpr = 10 / 217
    expected = (fpr * 0.5 + (0.3 - fpr) * 1.0) / 0.3
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_aupro_diagonal_pixels_form_one_region():
    # 8-connectivity: (2, 2) and (3, 3) form one region, (7, 7) another. Flagging (2, 2) and
    # (7, 7) before all normal pixels gives PRO (1/2 + 1) / 2 = 3/4 over FPR 0 to 1. With
    # 4-connectivity it would be 2/3.
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, [2, 3, 7], [2, 3, 7]] = True
    maps = np.full((1, 10, 10), 1.5, dtype=np.float32)
    maps[0, [2, 3, 7], [2, 3, 7]] = [2.0, 1.0, 2.0]

    _, region_sizes = label_regions(masks)

    assert region_sizes.tolist() == [97, 2, 1]
    assert aupro(masks, maps) == pytest.approx(0.75, abs=1e-12)


@pytest.mark.parametrize("first_row", [0, 7], ids=["same_position", "last_row_then_first_row"])
def test_aupro_regions_never_span_images(first_row):
    # Image 0 has a 1-pixel region at (first_row, 3) and image 1 a 3-pixel region at rows
    # 0 to 2 of column 3. They touch across images at the same position, or from image 0's
    # last row if the stack were flattened to rows. Flagging image 0's region first gives
    # PRO 1/2 for two regions and 1/4 for one merged region.
    masks = np.zeros((2, 8, 8), dtype=bool)
    maps = np.full((2, 8, 8), 1.5, dtype=np.float32)
    masks[0, first_row, 3] = True
    maps[0, first_row, 3] = 2.0
    masks[1, 0:3, 3] = True
    maps[1, 0:3, 3] = 1.0

    _, region_sizes = label_regions(masks)

    assert region_sizes.tolist() == [124, 1, 3]
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_aupro_empty_masks_raise():
    masks = np.zeros((3, 4, 4), dtype=bool)
    with pytest.raises(UndefinedMetricError, match="no anomalous region: all 3 masks are empty"):
        aupro(masks, np.ones((3, 4, 4), dtype=np.float32))


def test_aupro_full_masks_raise():
    masks = np.ones((2, 4, 4), dtype=bool)
    with pytest.raises(UndefinedMetricError, match="no normal pixel: all 32 pixels"):
        aupro(masks, np.ones((2, 4, 4), dtype=np.float32))


def test_aupro_nan_map_raises():
    masks = random_blob_masks(np.random.default_rng(0))
    maps = random_maps(np.random.default_rng(0), masks, ties=False)
    maps[2, 5, 5] = np.nan
    with pytest.raises(ValueError, match=r"maps contains 1 invalid values"):
        aupro(masks, maps)


def test_aupro_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        aupro(np.zeros((2, 4, 4), dtype=bool), np.zeros((2, 4, 5), dtype=np.float32))


def test_aupro_invalid_limit_raises():
    masks, maps = small_and_large_region_case()
    with pytest.raises(ValueError, match="fpr_limit must lie in"):
        aupro(masks, maps, fpr_limit=0.0)


# Sort and range check


def test_sweep_float32_order_matches_stable_argsort():
    # Covers both signs, both zeros, denormals and the largest finite values.
    values = np.array(
        [0.5, -0.0, 0.0, -1.5, 2.0, -1e30, 1e30, 3.4e38, -3.4e38, 1e-45, -1e-45, 0.5, -1.5, 0.0],
        dtype=np.float32,
    )
    sweep = ScoreSweep(values)
    expected_order = np.argsort(-values.astype(np.float64), kind="stable")
    _, distinct_counts = np.unique(values, return_counts=True)

    assert sweep.order.tolist() == expected_order.tolist()
    assert sweep.n_at_or_above.tolist() == np.cumsum(distinct_counts[::-1]).tolist()


def test_sweep_float64_runs_match_unique():
    values = np.round(np.random.default_rng(0).normal(size=200), 1)
    sweep = ScoreSweep(values)
    sorted_values = values[sweep.order]
    _, distinct_counts = np.unique(values, return_counts=True)

    assert np.all(np.diff(sorted_values) <= 0)
    assert sweep.n_at_or_above.tolist() == np.cumsum(distinct_counts[::-1]).tolist()


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 10_000])
def test_sweep_cumulative_sums_across_chunks(chunk_size):
    rng = np.random.default_rng(5)
    scores = np.round(rng.random(500), 2).astype(np.float32)
    region_ids = rng.integers(0, 4, size=500).astype(np.int32)
    weights = np.array([0.0, 0.5, 0.25, 0.125])
    sweep = ScoreSweep(scores)
    sorted_ids = sweep.take(region_ids)
    run_ends = sweep.n_at_or_above - 1

    counts = sweep.cumulative_at_run_ends(sorted_ids == 0, np.int64, chunk_size=chunk_size)
    sums = sweep.cumulative_at_run_ends(
        sorted_ids, np.float64, n_runs=10, lookup=weights, chunk_size=chunk_size
    )

    assert counts.tolist() == np.cumsum(sorted_ids == 0)[run_ends].tolist()
    assert sums == pytest.approx(np.cumsum(weights[sorted_ids])[run_ends[:10]], abs=1e-12)


def test_clip_to_unit_interval_slack():
    assert clip_to_unit_interval(1.0 + 1e-12, "AUPRO") == 1.0
    assert clip_to_unit_interval(-1e-12, "AUPRO") == 0.0
    with pytest.raises(RuntimeError, match="bug"):
        clip_to_unit_interval(1.001, "AUPRO")


# compute_metrics


def test_compute_metrics_values_and_order():
    rng = np.random.default_rng(3)
    masks = random_blob_masks(rng)
    maps = random_maps(rng, masks, ties=True)
    labels = masks.any(axis=(1, 2)).astype(int)
    scores = maps.max(axis=(1, 2)).astype(np.float64)

    results = compute_metrics(labels, scores, masks, maps)
    by_name = {result.name: result for result in results}

    assert [result.name for result in results] == list(METRIC_NAMES)
    assert by_name["image_auroc"].value == pytest.approx(reference_auroc(labels, scores), abs=1e-9)
    assert by_name["image_f1_max"].value == pytest.approx(
        reference_f1_max(labels, scores), abs=1e-9
    )
    assert by_name["pixel_auroc"].value == pytest.approx(reference_auroc(masks, maps), abs=1e-9)
    assert by_name["pixel_f1_max"].value == pytest.approx(reference_f1_max(masks, maps), abs=1e-9)
    assert by_name["aupro"].value == pytest.approx(reference_aupro(masks, maps), abs=1e-9)
    assert by_name["image_auroc"].resolution is None
    assert by_name["aupro"].resolution == "16x16"
    assert all(result.null_reason is None for result in results)


def test_compute_metrics_all_normal_gives_none():
    labels = np.zeros(20, dtype=int)
    scores = np.linspace(0.0, 1.0, 20)
    masks = np.zeros((20, 8, 8), dtype=bool)
    maps = np.random.default_rng(0).random((20, 8, 8), dtype=np.float32)

    results = {result.name: result for result in compute_metrics(labels, scores, masks, maps)}

    assert results["image_auroc"].value is None
    assert results["image_auroc"].null_reason == (
        "only one label present: all 20 test images are normal"
    )
    assert results["image_f1_max"].value is None
    assert results["image_f1_max"].null_reason == (
        "no positive label: all 20 test images are normal"
    )
    assert results["pixel_auroc"].null_reason == (
        "only one label present: all 1280 pixels are normal"
    )
    assert results["aupro"].null_reason == "no anomalous region: all 20 masks are empty"
    assert results["pixel_f1_max"].value is None
    assert results["pixel_f1_max"].resolution == "8x8"


def test_compute_metrics_without_pixels():
    results = compute_metrics(np.array([0, 1, 1]), np.array([0.1, 0.7, 0.4]))
    by_name = {result.name: result for result in results}

    assert by_name["image_auroc"].value == 1.0
    for name in ("pixel_auroc", "aupro", "pixel_f1_max"):
        assert by_name[name].value is None
        assert by_name[name].null_reason.startswith("no pixel ground truth")
        assert by_name[name].resolution is None


def test_compute_metrics_nan_scores_raise():
    with pytest.raises(ValueError, match="1 NaN"):
        compute_metrics(np.array([0, 1]), np.array([np.nan, 0.3]))


def test_compute_metrics_maps_without_masks_raise():
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="masks is None"):
        compute_metrics(np.array([0, 1]), np.array([0.1, 0.3]), maps=maps)


def test_compute_metrics_image_count_mismatch_raises():
    masks = np.zeros((3, 4, 4), dtype=bool)
    maps = np.zeros((3, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="maps has 3 images but labels has 2"):
        compute_metrics(np.array([0, 1]), np.array([0.1, 0.3]), masks, maps)


def test_metric_value_requires_value_or_reason():
    with pytest.raises(ValueError, match="exactly one of value and null_reason"):
        MetricValue("aupro", None, None, "8x8")
    with pytest.raises(ValueError, match="exactly one of value and null_reason"):
        MetricValue("aupro", 0.5, "no pixel ground truth", "8x8")


# Size


def test_metrics_5m_pixels_match_sklearn():
    # 20 images of 512x512 (5.2 M pixels): a per-threshold loop would not finish here. The
    # float32 sort must agree with sklearn and with the float64 argsort path, and the sums
    # cross a chunk boundary.
    rng = np.random.default_rng(11)
    n_images, size = 20, 512
    masks = np.zeros((n_images, size, size), dtype=bool)
    for i in range(5, n_images):
        y, x = rng.integers(0, size - 80, size=2)
        height, width = rng.integers(3, 80, size=2)
        masks[i, y : y + height, x : x + width] = True
    maps = rng.random(masks.shape, dtype=np.float32)
    maps += np.float32(0.2) * masks
    labels = masks.any(axis=(1, 2)).astype(int)
    scores = maps.max(axis=(1, 2))

    results = {result.name: result for result in compute_metrics(labels, scores, masks, maps)}

    expected_auroc = roc_auc_score(masks.ravel(), maps.ravel())
    float64_aupro = aupro(masks, maps.astype(np.float64))
    assert results["pixel_auroc"].value == pytest.approx(expected_auroc, abs=1e-9)
    assert results["aupro"].value == pytest.approx(float64_aupro, abs=1e-9)
    assert 0.0 < results["aupro"].value < 1.0
    assert 0.0 < results["pixel_f1_max"].value < 1.0
    assert results["aupro"].resolution == "512x512"
