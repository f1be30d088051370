"""Reverse Distillation (Deng & Li, CVPR 2022) through anomalib's torch model, trained by a plain loop.

A frozen encoder (teacher) gives layer1-3 features; a one-class bottleneck and a mirrored
decoder (student) learn to reconstruct them. The anomaly map is the per-level 1 - cosine
similarity of encoder and decoder features, upsampled, summed over levels (anomalib 2.7's
default) and blurred (sigma 4). The image score is its maximum. Optimiser as anomalib 2.7: Adam, lr 0.005,
betas (0.5, 0.99) on bottleneck and decoder; anomalib's MVTec AD configuration trains 200
epochs, batch 32.
"""

import logging

import torch
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode, AnomalyMapGenerator
from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel
from torch import nn

from bench.data.loading import TrainData
from bench.errors import ConfigError
from bench.methods.base import MethodAdapter, Option, Phases, scores_and_maps
from bench.methods.training import check_training_options, train_epochs, training_options

logger = logging.getLogger(__name__)

MAP_MODES = ("add", "multiply")


class ReverseDistillation(MethodAdapter):
    name = "reverse_distillation"
    summary = ("Teacher encoder and student decoder with a one-class bottleneck (Deng & Li 2022); "
               "anomalib's 200 epochs are slow on a CPU, pass e.g. --option epochs=2")
    default_levels = (1, 2, 3)
    fixed_levels = (1, 2, 3)
    # Backbones with a mirrored decoder in anomalib 2.7 (`get_decoder`), among bench's architectures.
    supported_backbones = ("resnet18", "resnet50", "wide_resnet50_2")
    options = {
        **training_options(epochs=200, lr=0.005, batch_size=32, patience=3),
        "anomaly_map_mode": Option(str, "add", "how per-level distance maps combine: add or multiply"),
    }

    @classmethod
    def check_options(cls, config: dict) -> None:
        check_training_options(cls.name, config)
        if config["anomaly_map_mode"] not in MAP_MODES:
            raise ConfigError(f"invalid option anomaly_map_mode={config['anomaly_map_mode']}; "
                              f"choose one of {', '.join(MAP_MODES)}")

    def __init__(self, architecture, levels, options) -> None:
        super().__init__(architecture, levels, options)
        self.mode = AnomalyMapGenerationMode(self.config["anomaly_map_mode"])
        # The input size only sizes the anomaly map; `fit` sets the real one.
        self.model = ReverseDistillationModel(backbone=architecture.timm_name, input_size=(256, 256),
                                              layers=self.layer_names, anomaly_map_mode=self.mode,
                                              pre_trained=False)

    def backbone_module(self) -> nn.Module:
        return self.model.encoder.feature_extractor

    def _loss(self, images: torch.Tensor, loss_function: nn.Module) -> torch.Tensor:
        encoder_features = list(self.model.encoder(images).values())
        decoder_features = self.model.decoder(self.model.bottleneck(encoder_features))
        return loss_function(encoder_features, decoder_features)

    def fit(self, train: TrainData, phases: Phases) -> None:
        self.model.anomaly_map_generator = AnomalyMapGenerator(image_size=(train.image_size, train.image_size),
                                                               mode=self.mode)
        trained = nn.ModuleList([self.model.bottleneck, self.model.decoder])
        optimizer = torch.optim.Adam(trained.parameters(), lr=self.config["lr"], betas=(0.5, 0.99))
        loss_function = ReverseDistillationLoss()

        def step(images: torch.Tensor) -> float:
            trained.train()
            optimizer.zero_grad()
            loss = self._loss(images, loss_function)
            loss.backward()
            optimizer.step()
            return loss.item()

        def validation_loss(images: torch.Tensor) -> float:
            trained.eval()
            return self._loss(images, loss_function).item()

        train_epochs(train, phases, self.config, step, validation_loss, trained, "training decoder")
        self.model.eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        output = self.model(images)
        return scores_and_maps(output)
