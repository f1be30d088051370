"""Input checks shared by the metrics, and the error raised when a metric is undefined."""

import numpy as np

# Accumulated rounding may push a value just outside [0, 1]. Anything further out is a bug.
UNIT_INTERVAL_SLACK = 1e-9


class UndefinedMetricError(ValueError):
    """A metric that is undefined on the given data; str(exc) is the reason.

    Example reason: 'only one label present: all 20 test images are normal'.
    """


def as_binary_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Flatten bool or 0/1 labels of any shape into a 1-D bool array (True = anomalous).

    Raises ValueError when the array is empty or contains a value other than 0 and 1.
    """
    array = np.asarray(labels)
    if array.size == 0:
        raise ValueError(f"{name} is empty: pass at least one label")
    if array.dtype == np.bool_:
        return array.ravel()
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be bool or 0/1 numbers, got dtype {array.dtype}")

    invalid = np.count_nonzero((array != 0) & (array != 1))
    if invalid:
        raise ValueError(
            f"{name} must contain only 0 and 1, but {invalid} of {array.size} values are neither"
        )
    return (array != 0).ravel()


def as_finite_scores(scores: np.ndarray, name: str) -> np.ndarray:
    """Flatten real scores of any shape into a 1-D array, copying only when needed.

    float16 scores become float32, which is exact. Raises ValueError when the array is empty,
    not real-valued, or contains NaN or infinite values.
    """
    array = np.asarray(scores)
    if array.size == 0:
        raise ValueError(f"{name} is empty: pass at least one score")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")
    if array.dtype == np.float16:
        array = array.astype(np.float32)

    flat = array.ravel()
    if flat.dtype.kind == "f":
        n_finite = np.count_nonzero(np.isfinite(flat))
        if n_finite < flat.size:
            n_nan = np.count_nonzero(np.isnan(flat))
            n_infinite = flat.size - n_finite - n_nan
            raise ValueError(
                f"{name} contains {flat.size - n_finite} invalid values of {flat.size} "
                f"({n_nan} NaN, {n_infinite} infinite); metrics need finite scores, "
                "so fix or drop them upstream"
            )
    return flat


def check_same_size(n_labels: int, n_scores: int) -> None:
    """Raise ValueError unless there are as many labels as scores."""
    if n_labels != n_scores:
        raise ValueError(f"labels and scores differ in size: {n_labels} labels, {n_scores} scores")


def clip_to_unit_interval(value: float, name: str) -> float:
    """Clip a metric within UNIT_INTERVAL_SLACK of [0, 1] into it.

    Raises RuntimeError when the value lies further out, because every metric here is a
    fraction or an area under a curve inside the unit square, so such a value is a bug.
    """
    if not -UNIT_INTERVAL_SLACK <= value <= 1.0 + UNIT_INTERVAL_SLACK:
        raise RuntimeError(
            f"{name} = {value!r} lies outside [0, 1], which is a bug in bench.metrics. "
            "Please report it with the inputs that produced it."
        )
    return min(max(value, 0.0), 1.0)
