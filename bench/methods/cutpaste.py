"""CutPaste (Li et al., CVPR 2021), 3-way variant, written for bench from the paper.

The loaded backbone is fine-tuned to tell normal images from CutPaste and scar versions of them
(cross-entropy over 3 classes, an MLP head with 512 and 128 units per level). Two
representations share that backbone:

- image level: the deepest requested level, globally average-pooled and L2-normalised. A
  Gaussian density (mean, Ledoit-Wolf precision) on the training images gives the image score,
  the Mahalanobis distance.
- patch level, for localisation: the shallowest requested level, trained on the same 3-way task
  with random crops of `patch_size` px (CutPaste and scar inside the crop). At test time the
  feature map of the whole image is average-pooled over windows of one patch, stride 1, which
  evaluates every patch position at once. A Gaussian density on the training images' patch
  embeddings scores each position, and the map is upsampled and blurred (sigma 4).

The paper trains a separate network for the patch level and slides it over 64 px crops with
stride 4. Sharing the backbone and pooling one feature map costs one forward pass per image
instead, at the price of the feature map's stride (16 px for level 3).

Training as in Runinho/pytorch-cutpaste: SGD, lr 0.03, momentum 0.9, weight decay 3e-5, cosine
decay, 32 images (96 with their augmented versions) per step, 256 epochs over the training
images.
"""

import logging

import torch
import torch.nn.functional as F
from anomalib.models.components import GaussianBlur2d, TimmFeatureExtractor
from torch import nn

from bench.data.loading import TrainData
from bench.errors import ConfigError
from bench.methods.base import MethodAdapter, Option, Phases
from bench.methods.cutpaste_augment import REFERENCE_SIZE, three_way_batch
from bench.methods.density import GaussianDensity
from bench.methods.training import check_training_options, steps_per_epoch, train_epochs, training_options

logger = logging.getLogger(__name__)

# Standard deviation (pixels) of the blur on the upsampled patch map, as anomalib's PaDiM and PatchCore.
MAP_SIGMA = 4


def _projection_head(channels: int) -> nn.Sequential:
    """Return the MLP head (channels -> 512 -> 128) and a linear 3-way classifier."""
    return nn.Sequential(
        nn.Linear(channels, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
        nn.Linear(512, 128), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
        nn.Linear(128, 3),
    )


class Cutpaste(MethodAdapter):
    name = "cutpaste"
    summary = ("3-way CutPaste fine-tuning of the backbone, Gaussian density on its features (Li et al. 2021); "
               "256 epochs are slow on a CPU, pass e.g. --option epochs=2")
    default_levels = (3, 4)
    fine_tunes_backbone = True
    options = {
        **training_options(epochs=256, lr=0.03, batch_size=32, patience=10),
        "momentum": Option(float, 0.9, "SGD momentum"),
        "weight_decay": Option(float, 3e-5, "SGD weight decay"),
        "patch_size": Option(int, 64, "side of the patch-level crops in pixels of a 256 px image (scaled with "
                                      "--image-size)"),
    }

    @classmethod
    def check_options(cls, config: dict) -> None:
        check_training_options(cls.name, config)
        if config["patch_size"] < 1:
            raise ConfigError(f"invalid option patch_size={config['patch_size']} for cutpaste; pass 1 or more")

    def __init__(self, architecture, levels, options) -> None:
        super().__init__(architecture, levels, options)
        self.extractor = TimmFeatureExtractor(backbone=architecture.timm_name, layers=self.layer_names,
                                              pre_trained=False, requires_grad=True)
        self.image_layer, self.patch_layer = self.layer_names[-1], self.layer_names[0]
        channels = dict(zip(self.layer_names, self.extractor.out_dims))
        self.image_head = _projection_head(channels[self.image_layer])
        self.patch_head = _projection_head(channels[self.patch_layer])
        # Stride of the patch level in pixels: level j has stride 2^(j+1).
        self.patch_stride = 2 ** (min(levels) + 1)
        self.blur = GaussianBlur2d(sigma=MAP_SIGMA, channels=1)
        self.image_density: GaussianDensity | None = None
        self.patch_density: GaussianDensity | None = None
        self.window = 1

    def backbone_module(self) -> nn.Module:
        return self.extractor.feature_extractor

    def _patch_size(self, image_size: int) -> int:
        size = round(self.config["patch_size"] * image_size / REFERENCE_SIZE)
        return min(image_size, max(self.patch_stride, size))

    def _three_way_loss(self, images: torch.Tensor, layer: str, head: nn.Module, train: TrainData,
                        generator: torch.Generator) -> torch.Tensor:
        batch, labels = three_way_batch(images, generator)
        features = self.extractor(train.normalise(batch))[layer]
        return F.cross_entropy(head(features.mean(dim=(2, 3))), labels)

    def _loss(self, images: torch.Tensor, train: TrainData, generator: torch.Generator) -> torch.Tensor:
        """Return the image-level plus patch-level 3-way cross-entropy of raw images (B, 3, S, S)."""
        size = images.shape[-1]
        patch = self._patch_size(size)
        crops = []
        for image in images:
            top = int(torch.randint(size - patch + 1, (), generator=generator))
            left = int(torch.randint(size - patch + 1, (), generator=generator))
            crops.append(image[:, top:top + patch, left:left + patch])
        return (self._three_way_loss(images, self.image_layer, self.image_head, train, generator)
                + self._three_way_loss(torch.stack(crops), self.patch_layer, self.patch_head, train, generator))

    def fit(self, train: TrainData, phases: Phases) -> None:
        trained = nn.ModuleList([self.extractor, self.image_head, self.patch_head])
        optimizer = torch.optim.SGD(trained.parameters(), lr=self.config["lr"], momentum=self.config["momentum"],
                                    weight_decay=self.config["weight_decay"])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.config["epochs"] * steps_per_epoch(len(train), self.config))
        generator = torch.Generator().manual_seed(train.seed + 1)

        def step(images: torch.Tensor) -> float:
            trained.train()
            optimizer.zero_grad()
            loss = self._loss(images, train, generator)
            loss.backward()
            optimizer.step()
            schedule.step()
            return loss.item()

        def validation_loss(images: torch.Tensor) -> float:
            # The same augmentations in every epoch, so that epochs compare on equal terms.
            trained.eval()
            return self._loss(images, train, torch.Generator().manual_seed(train.seed + 2)).item()

        train_epochs(train, phases, self.config, step, validation_loss, trained, "fine-tuning (3-way CutPaste)",
                     normalised=False)
        trained.eval()
        self._fit_densities(train, phases)

    @torch.no_grad()
    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return L2-normalised image embeddings (B, C) and patch embeddings (B, C', h, w)."""
        features = self.extractor(images)
        image_embedding = F.normalize(features[self.image_layer].mean(dim=(2, 3)), dim=1)
        patches = F.avg_pool2d(features[self.patch_layer], kernel_size=self.window, stride=1)
        return image_embedding, F.normalize(patches, dim=1)

    def _fit_densities(self, train: TrainData, phases: Phases) -> None:
        self.window = max(1, self._patch_size(train.image_size) // self.patch_stride)
        image_embeddings, patch_embeddings = [], []
        for images in phases.track(train.batches(), "Gaussian densities (train)", train.n_batches()):
            image_embedding, patches = self._embed(images)
            image_embeddings.append(image_embedding)
            patch_embeddings.append(patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1]))
        self.image_density = GaussianDensity(torch.cat(image_embeddings))
        self.patch_density = GaussianDensity(torch.cat(patch_embeddings))
        logger.info("Gaussian densities on %d images and %d patches of %d px (window %d)", len(train),
                    sum(len(part) for part in patch_embeddings), self._patch_size(train.image_size), self.window)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.extractor.eval()
        image_embedding, patches = self._embed(images)
        scores = self.image_density.distance(image_embedding)

        batch, channels, height, width = patches.shape
        distances = self.patch_density.distance(patches.permute(0, 2, 3, 1).reshape(-1, channels))
        patch_map = distances.reshape(batch, 1, height, width)
        # A pooled cell scores the window that starts there; replicate padding re-centres the map
        # on the feature grid before upsampling.
        before, after = (self.window - 1) // 2, self.window // 2
        patch_map = F.pad(patch_map, (before, after, before, after), mode="replicate")
        patch_map = F.interpolate(patch_map, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return scores, self.blur(patch_map)[:, 0]
