"""A Gaussian density estimator on feature vectors: mean and Ledoit-Wolf shrunk precision.

The Gaussian density estimator of CutPaste (Li et al., CVPR 2021): the anomaly score is the
Mahalanobis distance to the training features, with scikit-learn's Ledoit-Wolf covariance as in
the Runinho/pytorch-cutpaste re-implementation.
"""

import torch
from sklearn.covariance import LedoitWolf


class GaussianDensity:
    """Mean (C,) and precision (C, C) of training vectors; `distance` scores new vectors."""

    def __init__(self, vectors: torch.Tensor) -> None:
        """Fit on training vectors (N, C), N >= 2; the covariance is Ledoit-Wolf shrunk, in float64."""
        if len(vectors) < 2:
            raise ValueError(f"a Gaussian density needs at least 2 training vectors, got {len(vectors)}")
        values = vectors.double().numpy()
        self.mean = torch.from_numpy(values.mean(axis=0)).float()
        self.precision = torch.from_numpy(LedoitWolf().fit(values).precision_).float()

    def distance(self, vectors: torch.Tensor) -> torch.Tensor:
        """Return the Mahalanobis distance (N,) of vectors (N, C) to the training distribution."""
        delta = vectors - self.mean
        return ((delta @ self.precision) * delta).sum(1).clamp_min(0).sqrt()
