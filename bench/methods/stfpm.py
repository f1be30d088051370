"""STFPM (Wang et al., BMVC 2021) through anomalib's torch model and loss, trained by a plain loop.

A frozen teacher and a randomly initialised student of the same architecture; the student
learns to match the teacher's L2-normalised features at each level. The anomaly map is the
product over levels of 0.5 |t - s|^2, upsampled; the image score is its maximum. Optimiser as
anomalib 2.7: SGD, lr 0.4, momentum 0.9, weight decay 1e-3; anomalib's MVTec AD configuration
trains 100 epochs, batch 32.

anomalib's `STFPMModel` always builds its teacher with `pre_trained=True`, which downloads from
the Hugging Face hub. `_OfflineStfpmModel` builds the same modules without that download; bench
then loads the registered weights into the teacher.
"""

import logging
from collections.abc import Sequence

import torch
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.image.stfpm.anomaly_map import AnomalyMapGenerator
from anomalib.models.image.stfpm.loss import STFPMLoss
from anomalib.models.image.stfpm.torch_model import STFPMModel
from torch import nn

from bench.data.loading import TrainData
from bench.methods.base import MethodAdapter, Option, Phases, scores_and_maps
from bench.methods.training import check_training_options, train_epochs, training_options

logger = logging.getLogger(__name__)


class _OfflineStfpmModel(STFPMModel):
    """anomalib 2.7's STFPMModel with a teacher built from timm's initialisation, no download.

    Sets the attributes `STFPMModel.forward` reads (tiler, teacher_model, student_model,
    anomaly_map_generator) exactly as `STFPMModel.__init__` does, except `pre_trained=False`.
    """

    def __init__(self, layers: Sequence[str], backbone: str) -> None:
        nn.Module.__init__(self)
        self.tiler = None
        self.backbone = backbone
        self.teacher_model = TimmFeatureExtractor(backbone=backbone, pre_trained=False, layers=layers).eval()
        self.student_model = TimmFeatureExtractor(backbone=backbone, pre_trained=False, layers=layers,
                                                  requires_grad=True)
        for parameter in self.teacher_model.parameters():
            parameter.requires_grad = False
        self.anomaly_map_generator = AnomalyMapGenerator()


class Stfpm(MethodAdapter):
    name = "stfpm"
    summary = ("Student-teacher feature pyramid matching (Wang et al. 2021); "
               "anomalib's 100 epochs are slow on a CPU, pass e.g. --option epochs=2")
    default_levels = (1, 2, 3)
    options = {
        **training_options(epochs=100, lr=0.4, batch_size=32, patience=5),
        "momentum": Option(float, 0.9, "SGD momentum"),
        "weight_decay": Option(float, 1e-3, "SGD weight decay"),
    }

    @classmethod
    def check_options(cls, config: dict) -> None:
        check_training_options(cls.name, config)

    def __init__(self, architecture, levels, options) -> None:
        super().__init__(architecture, levels, options)
        self.model = _OfflineStfpmModel(layers=self.layer_names, backbone=architecture.timm_name)

    def backbone_module(self) -> nn.Module:
        return self.model.teacher_model.feature_extractor

    def fit(self, train: TrainData, phases: Phases) -> None:
        student = self.model.student_model
        optimizer = torch.optim.SGD(student.parameters(), lr=self.config["lr"], momentum=self.config["momentum"],
                                    weight_decay=self.config["weight_decay"])
        loss_function = STFPMLoss()

        def step(images: torch.Tensor) -> float:
            self.model.train()
            optimizer.zero_grad()
            loss = loss_function(*self.model(images))
            loss.backward()
            optimizer.step()
            return loss.item()

        def validation_loss(images: torch.Tensor) -> float:
            self.model.eval()
            teacher_features = self.model.teacher_model(images)
            student_features = self.model.student_model(images)
            return loss_function(teacher_features, student_features).item()

        train_epochs(train, phases, self.config, step, validation_loss, student, "training student")
        self.model.eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        output = self.model(images)
        return scores_and_maps(output)
