"""Threshold sweep: scores sorted once in descending order and grouped into runs of equal score.

Every threshold metric in this package (ROC, F1, PRO) is a cumulative sum over the sorted
scores read at the last element of each run. One sort and one np.cumsum pass per sum evaluate
all distinct thresholds in O(n log n) time, with no loop over thresholds.
"""

import sys

import numpy as np

from bench.metrics.validation import as_finite_scores

# Indices are packed into the low 32 bits of a uint64 sort key and returned as int32.
_MAX_PACKED_SIZE = 2**31
# Default elements summed per step in cumulative_at_run_ends: 32 MiB of int64 or float64.
_CHUNK_SIZE = 2**22
# Positions of the high and low 32 bits of a uint64 seen as two uint32 values.
_HIGH_WORD = 1 if sys.byteorder == "little" else 0
_LOW_WORD = 1 - _HIGH_WORD
# Sign bit alone: -0.0 as float32, and the lowest pattern of a negative float32.
_NEGATIVE_ZERO_BITS = 0x80000000


class ScoreSweep:
    """Scores sorted in descending order and grouped into runs of equal score.

    `order`, shape (size,), contains the indices that sort the flattened scores descending.
    Threshold k is the score of run k, and `n_at_or_above[k]`, int64 of shape (n_runs,),
    counts the elements with score >= threshold k, which are the first ones in `order`.
    So cumulative sums read at run ends give one curve point per distinct score.

    Example:
        >>> sweep = ScoreSweep(np.array([0.1, 0.9, 0.9, 0.4], dtype=np.float32))
        >>> sweep.n_at_or_above.tolist()
        [2, 3, 4]
    """

    def __init__(self, scores: np.ndarray, name: str = "scores"):
        """Sort scores of any shape, flattened. Raises ValueError on NaN or infinite values."""
        flat = as_finite_scores(scores, name)
        self.size = flat.size
        if flat.dtype == np.float32 and flat.size < _MAX_PACKED_SIZE:
            self.order, self.n_at_or_above = _sort_float32_descending(flat)
        else:
            self.order, self.n_at_or_above = _sort_descending(flat)

    @property
    def n_runs(self) -> int:
        """Number of distinct scores, which is the number of curve points."""
        return self.n_at_or_above.size

    def take(self, values: np.ndarray) -> np.ndarray:
        """Return `values` (any shape with `size` elements, flattened) in sorted-score order."""
        flat = np.asarray(values).ravel()
        if flat.size != self.size:
            raise ValueError(
                f"got {flat.size} values for {self.size} scores, but the sizes must match"
            )
        return flat[self.order]

    def cumulative_at_run_ends(
        self,
        sorted_values: np.ndarray,
        dtype: type,
        n_runs: int | None = None,
        lookup: np.ndarray | None = None,
        chunk_size: int = _CHUNK_SIZE,
    ) -> np.ndarray:
        """Sum values over all elements at or above each threshold.

        `sorted_values` comes from `take`. With `lookup`, element i contributes
        lookup[sorted_values[i]], such as a weight indexed by region id. Returns shape
        (n_runs,) in `dtype`, which should be float64 or int64 so that 67 M summands stay
        accurate. With `n_runs` set, only the first n_runs thresholds are evaluated, and only
        the elements they cover are read. `chunk_size` elements are summed per step.
        """
        n_runs = self.n_runs if n_runs is None else n_runs
        run_ends = self.n_at_or_above[:n_runs] - 1
        n_covered = int(run_ends[-1]) + 1 if n_runs else 0
        totals = np.empty(n_runs, dtype=dtype)
        carry = dtype(0)

        # Chunks bound the temporaries to chunk_size elements. One cumsum over 67 M elements
        # would allocate 0.5 GiB, and so would np.add.reduceat, which casts its whole input.
        for chunk_start in range(0, n_covered, chunk_size):
            chunk_stop = min(chunk_start + chunk_size, n_covered)
            values = sorted_values[chunk_start:chunk_stop]
            if lookup is not None:
                values = lookup[values]
            cumulative = np.cumsum(values, dtype=dtype)
            cumulative += carry

            first, last = np.searchsorted(run_ends, [chunk_start, chunk_stop])
            totals[first:last] = cumulative[run_ends[first:last] - chunk_start]
            carry = cumulative[-1]
        return totals


def _count_at_or_above(sorted_keys: np.ndarray) -> np.ndarray:
    """Return the index one past the last element of each run of equal keys, as int64.

    For keys sorted by descending score this is the number of elements whose score is at or
    above the run's score.
    """
    run_ends = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1])
    return np.append(run_ends + 1, sorted_keys.size)


def _sort_descending(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argsort any real dtype descending. Ties may come in any order because runs merge them."""
    order = np.argsort(flat)[::-1]
    return order, _count_at_or_above(flat[order])


def _sort_float32_descending(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argsort float32 scores descending into int32 indices by sorting one uint64 per score.

    The key is an order-preserving 32-bit code of the score above the 32-bit index. NumPy 2.4
    sorts uint64 with SIMD but argsorts float32 without it: on 67 M random float32 values this
    function took 1.6 to 2.8 s against 4.5 s for np.argsort (NumPy 2.4.6, shared 2-core
    x86-64 VM with AVX-512). Ties come out by ascending index, so the order equals
    np.argsort(-flat, kind="stable").
    """
    # The index fills the low 32 bits. `keys` is a strided view of the high 32 bits, so the
    # keys are written in place and no second array of this size is allocated.
    packed = np.arange(flat.size, dtype=np.uint64)
    keys = packed.view(np.uint32)[_HIGH_WORD::2]
    keys[...] = flat.view(np.uint32)

    # -0.0 and +0.0 compare equal, so both get the bits of +0.0 and form one run.
    keys[keys == _NEGATIVE_ZERO_BITS] = 0

    # IEEE 754 bit patterns read as unsigned integers grow with the value for non-negative
    # floats and shrink with it for negative ones. XOR with 0x7FFFFFFF on non-negative
    # patterns reverses their order below the negative ones, so ascending keys give
    # descending scores.
    np.bitwise_xor(keys, np.uint32(0x7FFFFFFF), out=keys, where=keys < _NEGATIVE_ZERO_BITS)

    packed.sort()
    # The sort is in place, so `keys` now shows the sorted keys.
    n_at_or_above = _count_at_or_above(keys)

    # The indices are below _MAX_PACKED_SIZE and fit in int32, which takes half the memory of
    # int64 for an array that lives as long as the sweep.
    order = packed.view(np.uint32)[_LOW_WORD::2].astype(np.int32)
    return order, n_at_or_above
