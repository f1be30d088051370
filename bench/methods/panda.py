"""PANDA (Reiss et al., CVPR 2021), written for bench from the paper and its code (talreiss/PANDA).

The loaded backbone's globally pooled features of the deepest requested level are adapted to the
normal training images with the compactness loss |f(x) - c|^2 / C, c the mean feature before
adaptation. The image score is the sum of squared distances to the 2 nearest training features
(kNN) after adaptation. Settings as the PANDA code: SGD, lr 1e-2, momentum 0.9, weight decay
5e-5, batch 32, 15 epochs, gradient norm clipped to 1e-3, the stem and the first two levels
frozen, batch-norm statistics frozen (the code trains in eval mode).

Collapse guard: early stopping, as the paper's PANDA-ES, by the fixed short budget above. A
validation loss cannot detect collapse, because the compactness loss keeps falling as features
collapse, so there is no validation split. PANDA-EWC needs the Fisher information of the
backbone's pre-training task, which registered checkpoints do not carry.

PANDA detects anomalies but does not localise them: `predict` fills each map with the image's
score, so pixel metrics of this method carry no localisation information.
"""

import logging

import torch
from anomalib.models.components import TimmFeatureExtractor
from torch import nn

from bench.data.loading import TrainData
from bench.errors import ConfigError
from bench.methods.base import MethodAdapter, Option, Phases
from bench.methods.patchcore import nearest_neighbours
from bench.methods.training import train_epochs

logger = logging.getLogger(__name__)

# Gradient-norm clip and frozen levels of the PANDA code (`clip_grad_norm_(..., 1e-3)`, layer1-2 frozen).
GRADIENT_CLIP = 1e-3
FROZEN_LEVEL = 2


class Panda(MethodAdapter):
    name = "panda"
    summary = ("Compactness-loss adaptation of pooled features with early stopping, kNN score (Reiss et al. 2021); "
               "image scores only, no localisation")
    default_levels = (4,)
    produces_maps = False
    options = {
        "epochs": Option(int, 15, "adaptation epochs (passes over the training images); the short budget is "
                                  "PANDA's guard against feature collapse"),
        "lr": Option(float, 1e-2, "SGD learning rate"),
        "train_batch_size": Option(int, 32, "training images per optimiser step (--batch-size sets only the "
                                            "inference batch)"),
        "n_neighbors": Option(int, 2, "training features whose squared distances sum to the image score"),
    }

    @classmethod
    def check_options(cls, config: dict) -> None:
        for key in ("epochs", "train_batch_size", "n_neighbors"):
            if config[key] < 1:
                raise ConfigError(f"invalid option {key}={config[key]} for panda; pass 1 or more")
        if config["lr"] <= 0:
            raise ConfigError(f"invalid option lr={config['lr']} for panda; pass a positive learning rate")

    def __init__(self, architecture, levels, options) -> None:
        super().__init__(architecture, levels, options)
        self.layer = self.layer_names[-1]
        self.extractor = TimmFeatureExtractor(backbone=architecture.timm_name, layers=[self.layer],
                                              pre_trained=False, requires_grad=True)
        self.bank: torch.Tensor | None = None
        self.bank_squared_norms: torch.Tensor | None = None

    def backbone_module(self) -> nn.Module:
        return self.extractor.feature_extractor

    def _pooled(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)[self.layer].mean(dim=(2, 3))

    def _freeze_early_levels(self) -> list[nn.Parameter]:
        """Freeze every parameter up to the last one of level FROZEN_LEVEL; return the trainable ones."""
        named = list(self.extractor.feature_extractor.named_parameters())
        prefix = self.architecture.levels[FROZEN_LEVEL] + "."
        last_frozen = max((index for index, (name, _) in enumerate(named) if name.startswith(prefix)), default=-1)
        for index, (_, parameter) in enumerate(named):
            parameter.requires_grad = index > last_frozen
        return [parameter for _, parameter in named[last_frozen + 1:]]

    @torch.no_grad()
    def _features(self, train: TrainData, phases: Phases, description: str) -> torch.Tensor:
        self.extractor.eval()
        return torch.cat([self._pooled(images) for images in
                          phases.track(train.batches(), description, train.n_batches())])

    def fit(self, train: TrainData, phases: Phases) -> None:
        centre = self._features(train, phases, "features before adaptation").mean(dim=0)
        parameters = self._freeze_early_levels()
        optimizer = torch.optim.SGD(parameters, lr=self.config["lr"], momentum=0.9, weight_decay=5e-5)

        def step(images: torch.Tensor) -> float:
            # Eval mode throughout, as the PANDA code: batch-norm statistics stay those of pre-training.
            self.extractor.eval()
            optimizer.zero_grad()
            features = self._pooled(images)
            loss = ((features - centre) ** 2).sum(dim=1).mean() / features.shape[1]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP)
            optimizer.step()
            return loss.item()

        budget = {"epochs": self.config["epochs"], "train_batch_size": self.config["train_batch_size"],
                  "validation_fraction": 0.0, "patience": 1}
        train_epochs(train, phases, budget, step, None, self.extractor, "compactness adaptation")

        self.bank = self._features(train, phases, "features after adaptation")
        self.bank_squared_norms = (self.bank * self.bank).sum(1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.extractor.eval()
        k = min(self.config["n_neighbors"], len(self.bank))
        distances, _ = nearest_neighbours(self._pooled(images), self.bank, self.bank_squared_norms, k)
        scores = (distances**2).sum(dim=1)
        # NOTE: constant maps stand in for the localisation PANDA does not have (see module docstring).
        return scores, scores[:, None, None].expand(-1, *images.shape[-2:]).clone()
