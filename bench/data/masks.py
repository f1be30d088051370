"""Checks of a category's masks that need their pixels, not only their file headers."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.data.base import Category, Sample
from bench.data.images import read_mask_values
from bench.data.settings import SETTINGS_FILE_NAME
from bench.errors import DatasetError

# Masks that passed `verify_mask_threshold`, keyed by (path, modification time in ns, size in
# bytes, threshold), so that a grid of runs decodes each mask once per process.
_VERIFIED: set[tuple[str, int, int, float]] = set()


def verify_mask_threshold(category: Category) -> None:
    """Raise DatasetError when the mask threshold would erase a mask that has non-zero pixels.

    With a threshold above 0, a mask that stores small values, such as a 0/1 or label-value
    mask read with the soft-mask threshold of 0.5, would count no pixel as anomalous and
    silently bias every pixel metric. Masks that are all zero pass: the data check reports
    them. A threshold of 0 cannot erase anything, so nothing is decoded then.
    """
    for sample in category.test:
        if sample.mask_path is None or sample.mask_threshold == 0.0:
            continue

        stat = sample.mask_path.stat()
        key = (str(sample.mask_path), stat.st_mtime_ns, stat.st_size, sample.mask_threshold)
        if key in _VERIFIED:
            continue

        values, full_scale = read_mask_values(sample.mask_path)
        problem = describe_erased_mask(values, full_scale, sample.mask_threshold)
        if problem is not None:
            raise DatasetError(
                f"mask {sample.mask_path} {problem} (for masks that store 0/1 or label values, set "
                f"mask_threshold = 0 in {category.root / SETTINGS_FILE_NAME})"
            )

        _VERIFIED.add(key)


def describe_erased_mask(values: np.ndarray, full_scale: float, threshold: float) -> str | None:
    """Describe how `threshold` erases a mask with non-zero pixels, or return None when it does not."""
    if not values.any():
        return None

    cutoff = threshold * full_scale
    if (values > cutoff).any():
        return None

    return (
        f"has values {_format_value(values.min())}..{_format_value(values.max())} but none above the "
        f"threshold {cutoff:g} ({threshold:g} of full scale {full_scale:g}), so no pixel would count as anomalous"
    )


def describe_missing_masks(samples: Sequence[Sample]) -> str | None:
    """Explain why pixel metrics are undefined for `samples`, or return None when every anomalous one has a mask.

    The text names how many anomalous images lack a mask and the first of them, for the
    `null_reason` of pixel metrics.
    """
    anomalous = [sample for sample in samples if sample.label == 1]
    missing = [sample for sample in anomalous if sample.mask_path is None]
    if not missing:
        return None

    first = _relative_name(missing[0].path)
    return (
        f"no pixel ground truth: {len(missing)} of {len(anomalous)} anomalous test images have no mask "
        f"(first: {first})"
    )


def _relative_name(path: Path) -> str:
    """Return the last three parts of an image path, such as test/crack/003.png."""
    return "/".join(path.parts[-3:])


def _format_value(value: np.generic) -> str:
    """Format a mask value: integers without a decimal point, floats with up to 4 significant digits."""
    if isinstance(value, (np.bool_, bool)):
        return str(int(value))
    return f"{value:.4g}" if isinstance(value, np.floating) else str(int(value))
