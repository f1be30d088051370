"""PatchCore (Roth et al., CVPR 2022) through anomalib's torch model.

Locally aggregated (3x3) mid-level patch features form a memory bank, reduced by a greedy
coreset; a test patch scores its distance to the nearest memory-bank entry, and the image score
re-weights the largest patch score by its neighbourhood in the memory bank (anomalib's
`compute_anomaly_score`).
"""

import logging

import torch
from anomalib.models.components import KCenterGreedy
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from torch import nn

from bench.data.loading import TrainData
from bench.errors import ConfigError
from bench.methods.base import MethodAdapter, Option, Phases, scores_and_maps
from bench.methods.coreset import greedy_coreset

logger = logging.getLogger(__name__)

SAMPLERS = ("greedy", "anomalib")

# Query rows per distance matrix: 2048 x a 21,401-entry memory bank is 175 MB of float32.
QUERY_CHUNK = 2048


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, bank_squared_norms: torch.Tensor,
                       k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Find the `k` nearest rows of `bank` (M, D) for each row of `queries` (N, D), exactly.

    Returns Euclidean distances (N, k) in increasing order and bank indices (N, k).
    `bank_squared_norms` is (bank * bank).sum(1), computed once per memory bank. Distances use
    the norm expansion |q|^2 - 2 q.m + |m|^2 in float32, like anomalib's `euclidean_dist`, in
    chunks of QUERY_CHUNK queries; |q|^2 is added after the search because it does not change
    the order within a row.
    """
    distances, indices = [], []
    for start in range(0, len(queries), QUERY_CHUNK):
        chunk = queries[start:start + QUERY_CHUNK]
        partial = torch.addmm(bank_squared_norms, chunk, bank.T, alpha=-2)
        if k == 1:
            values, positions = partial.min(dim=1, keepdim=True)
        else:
            values, positions = partial.topk(k, dim=1, largest=False)
        values += (chunk * chunk).sum(1, keepdim=True)
        distances.append(values.clamp_min_(0).sqrt_())
        indices.append(positions)
        del partial
    return torch.cat(distances), torch.cat(indices)


class _FastSearchPatchcore(PatchcoreModel):
    """anomalib's PatchCore model with a nearest-neighbour search that reuses the bank's norms."""

    bank_squared_norms: torch.Tensor | None = None

    def nearest_neighbors(self, embedding: torch.Tensor, n_neighbors: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bank_squared_norms is None:
            self.bank_squared_norms = (self.memory_bank * self.memory_bank).sum(1)
        distances, indices = nearest_neighbours(embedding, self.memory_bank, self.bank_squared_norms, n_neighbors)
        if n_neighbors == 1:
            # anomalib's contract: (N,) for one neighbour, (N, k) otherwise.
            return distances[:, 0], indices[:, 0]
        return distances, indices


class Patchcore(MethodAdapter):
    name = "patchcore"
    summary = "Memory bank of locally aware patch features with a greedy coreset (Roth et al. 2022)"
    default_levels = (2, 3)
    options = {
        "coreset_ratio": Option(float, 0.1, "fraction of training patches kept in the memory bank, in (0, 1]"),
        "num_neighbors": Option(int, 9, "memory-bank neighbours used to re-weight the image score (1 = max patch distance)"),
        "sampler": Option(str, "greedy", "coreset sampler: greedy (approximate greedy of the PatchCore reference "
                                         "code with pruning, seconds) or anomalib (anomalib's KCenterGreedy, "
                                         "tens of minutes on a full category, for comparison)"),
    }

    @classmethod
    def check_options(cls, config: dict) -> None:
        ratio = config["coreset_ratio"]
        if not 0 < ratio <= 1:
            raise ConfigError(f"invalid option coreset_ratio={ratio}; pass a fraction in (0, 1], e.g. 0.1")
        if config["sampler"] not in SAMPLERS:
            raise ConfigError(f"invalid option sampler={config['sampler']}; choose one of {', '.join(SAMPLERS)}")
        if config["num_neighbors"] < 1:
            raise ConfigError(f"invalid option num_neighbors={config['num_neighbors']}; pass 1 or more")

    def __init__(self, architecture, levels, options) -> None:
        super().__init__(architecture, levels, options)
        self.model = _FastSearchPatchcore(layers=self.layer_names, backbone=architecture.timm_name, pre_trained=False,
                                          num_neighbors=self.config["num_neighbors"])

    def backbone_module(self) -> nn.Module:
        return self.model.feature_extractor.feature_extractor

    def fit(self, train: TrainData, phases: Phases) -> None:
        self.model.train()
        with torch.no_grad():
            for images in phases.track(train.batches(), "features (train)", train.n_batches()):
                self.model(images)

        embeddings = torch.vstack(self.model.embedding_store)
        self.model.embedding_store.clear()
        size = max(1, int(len(embeddings) * self.config["coreset_ratio"]))
        with phases.step(f"coreset: {size} of {len(embeddings)} patches"):
            if self.config["sampler"] == "anomalib":
                memory_bank = KCenterGreedy(embedding=embeddings, sampling_ratio=self.config["coreset_ratio"]).sample_coreset()
            else:
                generator = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**63)
                memory_bank = embeddings[greedy_coreset(embeddings, size, generator=generator)]
        logger.info("memory bank: %d of %d patches (%s sampler)", len(memory_bank), len(embeddings), self.config["sampler"])
        del embeddings
        self.model.memory_bank = memory_bank.contiguous()
        self.model.bank_squared_norms = None
        self.model.eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(images)
        return scores_and_maps(output)
