"""Greedy k-centre coreset selection for PatchCore's memory bank.

The approximate greedy of the PatchCore reference code (Roth et al., CVPR 2022): features are
randomly projected to 128 dimensions, and only one column of minimum distances to the selected
centres is kept, so memory stays O(N) instead of the O(N^2) of a distance matrix.
"""

import torch


def greedy_coreset(features: torch.Tensor, size: int, projection_dim: int = 128,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Select `size` row indices of `features` (N, D) by greedy k-centre search.

    Returns the indices in selection order, shape (size,). The first centre is random (seeded by
    `generator`); each further one is the row farthest from all centres chosen so far.

    Example:
        >>> bank = torch.randn(1000, 384)
        >>> greedy_coreset(bank, 100).shape
        torch.Size([100])
    """
    n, dim = features.shape
    if not 0 < size <= n:
        raise ValueError(f"coreset size must be in 1..{n}, got {size}")

    # A Gaussian random projection keeps pairwise distances within a small factor
    # (Johnson-Lindenstrauss), which is all the greedy order needs.
    if dim > projection_dim:
        projection = torch.randn(dim, projection_dim, generator=generator) / projection_dim**0.5
        reduced = features @ projection.to(features.dtype)
    else:
        reduced = features
    squared_norms = (reduced * reduced).sum(1)

    selected = torch.empty(size, dtype=torch.long)
    index = int(torch.randint(n, (1,), generator=generator))
    min_distances = torch.full((n,), float("inf"), dtype=reduced.dtype)
    for step in range(size):
        selected[step] = index
        centre = reduced[index]
        # Squared Euclidean distance via the norm expansion: one matrix-vector product per step.
        distances = squared_norms - 2 * (reduced @ centre) + squared_norms[index]
        torch.minimum(min_distances, distances, out=min_distances)
        min_distances[index] = -1.0
        index = int(torch.argmax(min_distances))
    return selected
