"""FastFlow (Yu et al., 2021) through anomalib's torch model and loss, trained by a plain torch loop.

2D normalizing flows (8 affine coupling steps per level) map the frozen backbone's layer1-3
features to a standard normal; the anomaly map is the mean over levels of -exp(-|z|^2 / 2C),
upsampled to the input, and the image score its maximum (anomalib 2.7). Optimiser: Adam,
lr 1e-3, weight decay 1e-5, batch 32; anomalib's MVTec AD configuration trains up to 500
epochs with early stopping on the test split, which bench never does.
"""

import logging

import timm
import torch
from anomalib.models.image.fastflow.loss import FastflowLoss
from anomalib.models.image.fastflow.torch_model import FastflowModel
from torch import nn

from bench.data.loading import TrainData
from bench.methods.base import MethodAdapter, Option, Phases, scores_and_maps
from bench.methods.training import check_training_options, train_epochs, training_options

logger = logging.getLogger(__name__)

# Coupling-block kernels per backbone, from anomalib's FastFlow configuration (after the paper):
# 3x3 only for resnet18, alternating 3x3 and 1x1 for wide_resnet50_2.
CONV3X3_ONLY = {"resnet18": True, "wide_resnet50_2": False}


class Fastflow(MethodAdapter):
    name = "fastflow"
    summary = ("2D normalizing flows on frozen layer1-3 features (Yu et al. 2021); "
               "anomalib's 500 epochs take days on a CPU, pass e.g. --option epochs=2")
    default_levels = (1, 2, 3)
    fixed_levels = (1, 2, 3)
    supported_backbones = ("resnet18", "wide_resnet50_2")
    options = {
        **training_options(epochs=500, lr=1e-3, batch_size=32, patience=3),
        "weight_decay": Option(float, 1e-5, "Adam weight decay"),
        "flow_steps": Option(int, 8, "affine coupling steps per feature level"),
        "hidden_ratio": Option(float, 1.0, "hidden channels of a coupling subnet, as a fraction of its input channels"),
    }

    @classmethod
    def check_options(cls, config: dict) -> None:
        check_training_options(cls.name, config)

    def __init__(self, architecture, levels, options) -> None:
        super().__init__(architecture, levels, options)
        # The same extractor anomalib builds (out_indices 1-3 = layer1..layer3), created here because
        # the flows need the input size, which is known only in `fit`.
        self.encoder = timm.create_model(architecture.timm_name, pretrained=False, features_only=True,
                                         out_indices=[1, 2, 3])
        for parameter in self.encoder.parameters():
            parameter.requires_grad = False
        self.model: FastflowModel | None = None

    def backbone_module(self) -> nn.Module:
        return self.encoder

    def _build(self, image_size: int) -> FastflowModel:
        model = FastflowModel(input_size=(image_size, image_size), backbone=self.architecture.timm_name,
                              pre_trained=False, flow_steps=self.config["flow_steps"],
                              conv3x3_only=CONV3X3_ONLY[self.architecture.name],
                              hidden_ratio=self.config["hidden_ratio"])
        # Replace anomalib's freshly initialised extractor by the one the weights were loaded into.
        model.feature_extractor = self.encoder
        return model

    def fit(self, train: TrainData, phases: Phases) -> None:
        self.model = self._build(train.image_size)
        trained = nn.ModuleList([self.model.norms, self.model.fast_flow_blocks])
        optimizer = torch.optim.Adam(trained.parameters(), lr=self.config["lr"],
                                     weight_decay=self.config["weight_decay"])
        loss_function = FastflowLoss()

        def step(images: torch.Tensor) -> float:
            self.model.train()
            optimizer.zero_grad()
            loss = loss_function(*self.model(images))
            loss.backward()
            optimizer.step()
            return loss.item()

        def validation_loss(images: torch.Tensor) -> float:
            # Train mode makes the model return (hidden variables, log-Jacobians); no layer here
            # behaves differently between modes.
            self.model.train()
            return loss_function(*self.model(images)).item()

        train_epochs(train, phases, self.config, step, validation_loss, trained, "training flows")
        self.model.eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        output = self.model(images)
        return scores_and_maps(output)
