"""PaDiM (Defard et al., ICPR 2021) through anomalib's torch model.

A multivariate Gaussian per feature-map position over a random subset of the concatenated
features; the anomaly map is the Mahalanobis distance, upsampled and blurred by anomalib.
"""

import torch
from anomalib.models.image.padim.torch_model import PadimModel
from torch import nn

from bench.data.loading import TrainData
from bench.errors import ConfigError
from bench.methods.base import MethodAdapter, Option, Phases

# The paper's random feature subsets; other backbones keep at most 100 features.
PAPER_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}
DEFAULT_FEATURES = 100


class Padim(MethodAdapter):
    name = "padim"
    summary = "Per-position Gaussian of multi-level features, Mahalanobis distance (Defard et al. 2021)"
    default_levels = (1, 2, 3)
    options = {
        "n_features": Option(int, 0, "size of the random feature subset; 0 = 100 for resnet18, 550 for "
                                     "wide_resnet50_2, else min(100, all features)"),
    }

    def __init__(self, architecture, levels, options) -> None:
        super().__init__(architecture, levels, options)
        self.model = PadimModel(backbone=architecture.timm_name, layers=self.layer_names, pre_trained=False,
                                n_features=self._feature_count())

    def _feature_count(self) -> int:
        requested = self.config["n_features"]
        if requested < 0:
            raise ConfigError(f"invalid option n_features={requested}; pass a positive size or 0 for the default")
        if requested:
            return requested
        if self.architecture.name in PAPER_FEATURES:
            return PAPER_FEATURES[self.architecture.name]
        probe = PadimModel(backbone=self.architecture.timm_name, layers=self.layer_names, pre_trained=False,
                           n_features=1)
        return min(DEFAULT_FEATURES, probe.n_features_original)

    def backbone_module(self) -> nn.Module:
        return self.model.feature_extractor.feature_extractor

    def fit(self, train: TrainData, phases: Phases) -> None:
        self.model.train()
        for images in phases.track(train.batches(), "features (train)", train.n_batches()):
            self.model(images)
        with phases.step("fitting Gaussians"):
            self.model.fit()
        self.model.eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(images)
        return output.pred_score.reshape(-1), output.anomaly_map[:, 0]
