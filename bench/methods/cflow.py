"""C-Flow (Gudovskiy et al., WACV 2022) through anomalib's torch model, trained by a plain torch loop.

One conditional normalizing flow per feature level models the frozen encoder's feature vectors
given a 2D positional encoding. Training follows anomalib 2.7's `training_step`: per level, the
B x H x W feature vectors are shuffled and fed in fibre batches of 64, one Adam step (lr 1e-4)
per fibre batch, loss -logsigmoid(log-likelihood / C).

Scoring differs from anomalib on purpose. anomalib normalises each level's log-likelihood by its
maximum over the current test batch, and the CFlow-AD code by its maximum over the whole test
set, so a score depends on which other images were scored with it. Here the reference is the
maximum log-likelihood of each level over the training images, fixed after training: the map is
-sum_levels upsample(exp(log p - max_train log p)), which orders pixels like CFlow-AD's
max(map) - map but gives every image the same score whatever its batch.
"""

import logging

import einops
import torch
import torch.nn.functional as F
from anomalib.models.image.cflow.torch_model import CflowModel
from anomalib.models.image.cflow.utils import get_logp, positional_encoding_2d
from torch import nn

from bench.data.loading import TrainData
from bench.errors import ConfigError
from bench.methods.base import MethodAdapter, Option, Phases
from bench.methods.training import check_training_options, train_epochs, training_options

logger = logging.getLogger(__name__)

# Feature vectors per flow call when scoring. Vectors pass the flows independently, so the size
# changes only speed, not results, unlike the training fibre batch, which is one optimiser step.
SCORING_CHUNK = 4096


class Cflow(MethodAdapter):
    name = "cflow"
    summary = ("Conditional normalizing flows on frozen multi-level features (Gudovskiy et al. 2022); "
               "anomalib's 50 epochs are slow on a CPU, pass e.g. --option epochs=1")
    default_levels = (2, 3, 4)
    options = {
        **training_options(epochs=50, lr=1e-4, batch_size=16, patience=2),
        "fiber_batch_size": Option(int, 64, "feature vectors per flow optimiser step"),
        "coupling_blocks": Option(int, 8, "coupling blocks per flow"),
        "condition_vector": Option(int, 128, "channels of the 2D positional encoding the flows are conditioned on"),
        "clamp_alpha": Option(float, 1.9, "clamp of the coupling blocks' log-scale"),
    }

    @classmethod
    def check_options(cls, config: dict) -> None:
        check_training_options(cls.name, config)
        for key in ("fiber_batch_size", "coupling_blocks", "condition_vector"):
            if config[key] < 1:
                raise ConfigError(f"invalid option {key}={config[key]} for {cls.name}; pass 1 or more")
        if config["condition_vector"] % 4:
            raise ConfigError(f"invalid option condition_vector={config['condition_vector']} for cflow; "
                              "the 2D positional encoding needs a multiple of 4")

    def __init__(self, architecture, levels, options) -> None:
        super().__init__(architecture, levels, options)
        self.model = CflowModel(backbone=architecture.timm_name, layers=self.layer_names, pre_trained=False,
                                fiber_batch_size=self.config["fiber_batch_size"],
                                condition_vector=self.config["condition_vector"],
                                coupling_blocks=self.config["coupling_blocks"],
                                clamp_alpha=self.config["clamp_alpha"])
        # Per-level maximum log-likelihood over the training images, set at the end of `fit`.
        self.reference: list[float] | None = None

    def backbone_module(self) -> nn.Module:
        return self.model.encoder.feature_extractor

    def _features(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, int, int]]:
        """Return per level (feature vectors (BHW, C), positional encodings (BHW, P), H, W)."""
        with torch.no_grad():
            activations = self.model.encoder(images)
        levels = []
        for layer in self.model.pool_layers:
            features = activations[layer].detach()
            batch, _, height, width = features.shape
            encoding = positional_encoding_2d(self.model.condition_vector, height, width)
            encoding = einops.repeat(encoding, "c h w -> (b h w) c", b=batch)
            levels.append((einops.rearrange(features, "b c h w -> (b h w) c"), encoding, height, width))
        return levels

    def _log_likelihood(self, level: int, vectors: torch.Tensor, encoding: torch.Tensor) -> torch.Tensor:
        """Return the per-dimension log-likelihood (N,) of feature vectors under one level's flow."""
        hidden, log_jacobian = self.model.decoders[level](vectors, [encoding])
        return get_logp(vectors.shape[1], hidden, log_jacobian) / vectors.shape[1]

    def _scored_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return per level the log-likelihood maps (B, H, W) of `images`, SCORING_CHUNK vectors at a time."""
        maps = []
        for level, (vectors, encoding, height, width) in enumerate(self._features(images)):
            values = [self._log_likelihood(level, vectors[start:start + SCORING_CHUNK],
                                           encoding[start:start + SCORING_CHUNK])
                      for start in range(0, len(vectors), SCORING_CHUNK)]
            maps.append(torch.cat(values).reshape(-1, height, width))
        return maps

    def fit(self, train: TrainData, phases: Phases) -> None:
        optimizer = torch.optim.Adam(self.model.decoders.parameters(), lr=self.config["lr"])
        fibre_batch = self.model.fiber_batch_size

        def step(images: torch.Tensor) -> float:
            self.model.decoders.train()
            total, count = 0.0, 0
            for level, (vectors, encoding, _, _) in enumerate(self._features(images)):
                order = torch.randperm(len(vectors))
                # As anomalib: the last fibre batch also takes the remainder.
                n_batches = max(1, len(vectors) // fibre_batch)
                for number in range(n_batches):
                    stop = len(vectors) if number == n_batches - 1 else (number + 1) * fibre_batch
                    chosen = order[number * fibre_batch:stop]
                    optimizer.zero_grad()
                    loss = -F.logsigmoid(self._log_likelihood(level, vectors[chosen], encoding[chosen]))
                    loss.mean().backward()
                    optimizer.step()
                    total += loss.sum().item()
                    count += len(chosen)
            return total / count

        def validation_loss(images: torch.Tensor) -> float:
            # The training loss over every feature vector of every level, without optimiser steps.
            self.model.decoders.eval()
            losses = torch.cat([-F.logsigmoid(level_map).flatten() for level_map in self._scored_levels(images)])
            return losses.mean().item()

        train_epochs(train, phases, self.config, step, validation_loss, self.model.decoders, "training flows")
        self.model.decoders.eval()

        with torch.no_grad():
            maxima = None
            for images in phases.track(train.batches(), "reference likelihoods (train)", train.n_batches()):
                batch_maxima = torch.stack([level_map.max() for level_map in self._scored_levels(images)])
                maxima = batch_maxima if maxima is None else torch.maximum(maxima, batch_maxima)
        self.reference = maxima.tolist()
        logger.info("maximum training log-likelihood per level: %s", ", ".join(f"{value:.4g}" for value in self.reference))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.decoders.eval()
        score_map = torch.zeros(images.shape[0], *images.shape[-2:])
        for level_map, reference in zip(self._scored_levels(images), self.reference):
            probability = torch.exp(level_map - reference)
            # Bilinear with aligned corners, as anomalib's and CFlow-AD's upsampling.
            score_map += F.interpolate(probability[:, None], size=images.shape[-2:], mode="bilinear",
                                       align_corners=True)[:, 0]
        anomaly_map = -score_map
        return anomaly_map.amax(dim=(-2, -1)), anomaly_map
