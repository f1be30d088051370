"""PatchCore (Roth et al., CVPR 2022) through anomalib's torch model.

Locally aggregated (3x3) mid-level patch features form a memory bank, reduced by a greedy
coreset; a test patch scores its distance to the nearest memory-bank entry.
"""

import torch
from anomalib.models.components import KCenterGreedy
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from torch import nn

from bench.data.loading import TrainData
from bench.errors import ConfigError
from bench.methods.base import MethodAdapter, Option, Phases
from bench.methods.coreset import greedy_coreset

SAMPLERS = ("greedy", "anomalib")


class Patchcore(MethodAdapter):
    name = "patchcore"
    summary = "Memory bank of locally aware patch features with a greedy coreset (Roth et al. 2022)"
    default_levels = (2, 3)
    options = {
        "coreset_ratio": Option(float, 0.1, "fraction of training patches kept in the memory bank, in (0, 1]"),
        "num_neighbors": Option(int, 9, "memory-bank neighbours used to re-weight the image score (1 = max patch distance)"),
        "sampler": Option(str, "greedy", "coreset sampler: greedy (projected approximate greedy, fast) or "
                                         "anomalib (anomalib's KCenterGreedy, slow, for comparison)"),
    }

    def __init__(self, architecture, levels, options) -> None:
        super().__init__(architecture, levels, options)
        ratio = self.config["coreset_ratio"]
        if not 0 < ratio <= 1:
            raise ConfigError(f"invalid option coreset_ratio={ratio}; pass a fraction in (0, 1], e.g. 0.1")
        if self.config["sampler"] not in SAMPLERS:
            raise ConfigError(f"invalid option sampler={self.config['sampler']}; choose one of {', '.join(SAMPLERS)}")
        if self.config["num_neighbors"] < 1:
            raise ConfigError(f"invalid option num_neighbors={self.config['num_neighbors']}; pass 1 or more")
        self.model = PatchcoreModel(layers=self.layer_names, backbone=architecture.timm_name, pre_trained=False,
                                    num_neighbors=self.config["num_neighbors"])

    def backbone_module(self) -> nn.Module:
        return self.model.feature_extractor.feature_extractor

    def fit(self, train: TrainData, phases: Phases) -> None:
        self.model.train()
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
        self.model.memory_bank = memory_bank
        self.model.eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(images)
        return output.pred_score.reshape(-1), output.anomaly_map[:, 0]
