"""PaDiM (Defard et al., ICPR 2021): anomalib's feature extraction with a memory-bounded Gaussian fit.

A multivariate Gaussian per feature-map position models a random subset of the concatenated
features. The anomaly map is the Mahalanobis distance, upsampled and blurred (sigma 4) as in
anomalib. anomalib's `MultiVariateGaussian` keeps every training embedding, the covariance, a
permuted copy and the inverse at once: 4096 positions x 550 x 550 float32 is 5 GB per copy for
wide_resnet50_2 at 256 px. Here the embeddings are stored per chunk of positions. Each chunk's
covariances are Cholesky-factorised and its embeddings freed before the next chunk, and only the
lower triangles of the factors are kept (2.5 GB in that case). On the full MVTec AD bottle
category (209 training images) at 256 px with wide_resnet50_2, a run peaked at 3.9 GiB here.
"""

import logging

import numpy as np
import torch
from anomalib.models.image.padim.torch_model import PadimModel
from numba import njit, prange
from torch import nn

from bench.data.loading import TrainData
from bench.errors import ConfigError
from bench.methods.base import MethodAdapter, Option, Phases

logger = logging.getLogger(__name__)

# The paper's random feature subsets; other backbones keep at most 100 features.
PAPER_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}
DEFAULT_FEATURES = 100

# Regularisation of every covariance, in anomalib's order: + 0.01 I, then + 1e-5 I before inversion.
COVARIANCE_RIDGE = 0.01
INVERSION_RIDGE = 1e-5


class GaussianBank:
    """Per-position Gaussians: means (P, C) and lower Cholesky factors of the covariances, packed (P, T).

    T = C (C + 1) / 2, row i of a factor stored at i (i + 1) / 2. The squared Mahalanobis distance
    d^T S^-1 d is |L^-1 d|^2 for S = L L^T, so no inverse is formed: a forward substitution per
    test vector replaces anomalib's matrix product with the inverse. `fit_chunk` works on
    `chunk_size` positions at a time, so its temporary memory is about 2 x chunk_size x C x C floats.
    """

    def __init__(self, n_positions: int, n_features: int, chunk_size: int) -> None:
        self.n_positions = n_positions
        self.n_features = n_features
        self.chunk_size = chunk_size if chunk_size > 0 else n_positions
        rows, columns = torch.tril_indices(n_features, n_features)
        self.lower = rows * n_features + columns
        self.mean = torch.empty(n_positions, n_features)
        self.factors = torch.empty(n_positions, len(self.lower))

    def chunks(self) -> list[tuple[int, int]]:
        """Return the (start, stop) position ranges of the chunks."""
        return [(start, min(start + self.chunk_size, self.n_positions))
                for start in range(0, self.n_positions, self.chunk_size)]

    def fit_chunk(self, start: int, stop: int, embeddings: torch.Tensor) -> None:
        """Fit positions start..stop-1 from their training embeddings (stop - start, N, C), N >= 2.

        Centres `embeddings` in place, so the caller must not use them afterwards.
        """
        n_images = embeddings.shape[1]
        mean = embeddings.mean(dim=1)
        embeddings -= mean[:, None, :]
        # (P, C, N) @ (P, N, C): the unbiased covariance of every position in one batched product.
        covariance = torch.bmm(embeddings.transpose(1, 2), embeddings)
        covariance /= n_images - 1
        identity = torch.eye(self.n_features)
        covariance += COVARIANCE_RIDGE * identity
        covariance += INVERSION_RIDGE * identity
        factor = torch.linalg.cholesky(covariance)
        del covariance
        self.mean[start:stop] = mean
        torch.index_select(factor.reshape(stop - start, -1), 1, self.lower, out=self.factors[start:stop])

    def mahalanobis(self, embedding: torch.Tensor) -> torch.Tensor:
        """Return the Mahalanobis distance of every position of `embedding` (B, C, H, W), shape (B, 1, H, W)."""
        batch, channels, height, width = embedding.shape
        vectors = embedding.reshape(batch, channels, height * width).permute(2, 0, 1)
        deltas = (vectors - self.mean[:, None, :]).contiguous()
        squared = _squared_mahalanobis(self.factors.numpy(), deltas.numpy())
        distances = torch.from_numpy(squared).float()
        return distances.permute(1, 0).reshape(batch, 1, height, width).clamp(0).sqrt()


@njit(cache=True, fastmath=True, parallel=True)
def _squared_mahalanobis(factors, deltas):
    """Return |L_p^-1 d|^2 (P, B) float64 for packed lower factors (P, T) and deltas (P, B, C)."""
    n_positions, batch, n_features = deltas.shape
    squared = np.empty((n_positions, batch), np.float64)
    for position in prange(n_positions):
        factor = factors[position]
        solution = np.empty(n_features, np.float32)
        for vector in range(batch):
            delta = deltas[position, vector]
            total = 0.0
            for row in range(n_features):
                offset = row * (row + 1) // 2
                dot = np.float32(0.0)
                for column in range(row):
                    dot += factor[offset + column] * solution[column]
                value = (delta[row] - dot) / factor[offset + row]
                solution[row] = value
                total += value * value
            squared[position, vector] = total
    return squared


class Padim(MethodAdapter):
    name = "padim"
    summary = "Per-position Gaussian of multi-level features, Mahalanobis distance (Defard et al. 2021)"
    default_levels = (1, 2, 3)
    options = {
        "n_features": Option(int, 0, "size of the random feature subset; 0 = 100 for resnet18, 550 for "
                                     "wide_resnet50_2, else min(100, all features)"),
        "chunk_size": Option(int, 256, "feature-map positions per covariance chunk; bounds temporary memory to "
                                       "about 2 x chunk_size x n_features^2 floats (0 = all positions at once); "
                                       "does not change results"),
    }

    @classmethod
    def check_options(cls, config: dict) -> None:
        if config["chunk_size"] < 0:
            raise ConfigError(f"invalid option chunk_size={config['chunk_size']}; pass a positive size or 0")
        if config["n_features"] < 0:
            raise ConfigError(f"invalid option n_features={config['n_features']}; pass a positive size or 0 for the default")

    def __init__(self, architecture, levels, options) -> None:
        super().__init__(architecture, levels, options)
        self.model = PadimModel(backbone=architecture.timm_name, layers=self.layer_names, pre_trained=False,
                                n_features=self._feature_count())
        self.gaussians: GaussianBank | None = None

    def _feature_count(self) -> int:
        requested = self.config["n_features"]
        if requested:
            return requested
        if self.architecture.name in PAPER_FEATURES:
            return PAPER_FEATURES[self.architecture.name]
        probe = PadimModel(backbone=self.architecture.timm_name, layers=self.layer_names, pre_trained=False,
                           n_features=1)
        return min(DEFAULT_FEATURES, probe.n_features_original)

    def backbone_module(self) -> nn.Module:
        return self.model.feature_extractor.feature_extractor

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.generate_embedding(self.model.feature_extractor(images))

    @torch.no_grad()
    def fit(self, train: TrainData, phases: Phases) -> None:
        if len(train) < 2:
            raise ConfigError(f"PaDiM needs at least 2 training images for a covariance, got {len(train)}")
        self.model.eval()

        # One tensor (P, N, C) per chunk of positions: 118 MB for wide_resnet50_2 at 256 px on 209
        # images, above glibc's 32 MB mmap threshold, so each is returned to the system once fitted.
        chunked: list[torch.Tensor | None] = []
        offset = 0
        for images in phases.track(train.batches(), "features (train)", train.n_batches()):
            embedding = self._embed(images)
            batch, channels, height, width = embedding.shape
            if self.gaussians is None:
                self.gaussians = GaussianBank(height * width, channels, self.config["chunk_size"])
                chunked = [torch.empty(stop - start, len(train), channels) for start, stop in self.gaussians.chunks()]
            vectors = embedding.reshape(batch, channels, height * width).permute(2, 0, 1)
            for chunk, (start, stop) in zip(chunked, self.gaussians.chunks()):
                chunk[:, offset:offset + batch] = vectors[start:stop]
            offset += batch
            del embedding, vectors

        chunks = self.gaussians.chunks()
        for number in phases.track(range(len(chunks)), "fitting Gaussians", len(chunks)):
            start, stop = chunks[number]
            self.gaussians.fit_chunk(start, stop, chunked[number])
            chunked[number] = None
        logger.info("fitted %d Gaussians of %d features in %d chunks", self.gaussians.n_positions,
                    self.gaussians.n_features, len(chunks))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        distances = self.gaussians.mahalanobis(self._embed(images))
        generator = self.model.anomaly_map_generator
        anomaly_map = generator.smooth_anomaly_map(generator.up_sample(distances, images.shape[-2:]))
        return torch.amax(anomaly_map, dim=(-2, -1)).reshape(-1), anomaly_map[:, 0]
