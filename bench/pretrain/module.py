"""The Lightning module that trains a timm classifier on fractal classes."""

from __future__ import annotations

import logging
import time

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

from bench.pretrain.config import STEP_GAMMA, STEP_MILESTONES, PretrainConfig
from bench.weights.architectures import get_architecture

logger = logging.getLogger(__name__)

# Key of bench's own section in a Lightning checkpoint, and the version of its layout.
CHECKPOINT_SECTION = "bench_pretrain"
CHECKPOINT_FORMAT = 1


def count_correct(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Count top-1 hits of a batch: the argmax equals the class, or for multi-hot targets is one of them.

    logits: (B, classes); targets: (B,) class indices or (B, classes) multi-hot. Returns a scalar
    int64 tensor on the logits' device.
    """
    predicted = logits.argmax(dim=1)
    if multi_label:
        return targets.gather(1, predicted[:, None]).sum().long()
    return (predicted == targets).sum()


class PretrainModule(L.LightningModule):
    """A timm model of `config.arch` with a `config.classes`-way head, trained with SGD.

    Inputs are float images in [0, 1], which the module normalises with the configuration's mean
    and std, stored as the buffers `mean` and `std`. The loss is cross-entropy, or binary
    cross-entropy over the multi-hot targets of the multi-instance recipe.
    """

    def __init__(self, config: PretrainConfig, channels_last: bool = False) -> None:
        super().__init__()
        self.config = config
        self.architecture = get_architecture(config.arch)
        model = self.architecture.create()
        model.reset_classifier(config.classes)
        self.channels_last = channels_last
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1))

        # Top-1 hits and images of epoch `counted_epoch` on this process, and the last finished
        # epoch's accuracy over all processes.
        self.counted_epoch = 0
        self.epoch_correct = 0
        self.epoch_seen = 0
        self.last_epoch_accuracy: float | None = None
        # (global step, accuracy) of every epoch finished in this session.
        self.epoch_history: list[tuple[int, float]] = []
        self.last_loss: torch.Tensor | None = None
        self._rng_to_restore: dict | None = None
        # Training wall time of earlier sessions of this run, and the start of this session's.
        self.previous_time_s = 0.0
        self._session_start: float | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the logits (B, classes) of images (B, 3, H, W) in [0, 1]."""
        normalised = (images - self.mean) / self.std
        if self.channels_last:
            normalised = normalised.contiguous(memory_format=torch.channels_last)
        return self.model(normalised)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the mean cross-entropy, or binary cross-entropy for multi-hot targets."""
        if self.config.multi_label:
            return F.binary_cross_entropy_with_logits(logits, targets)
        return F.cross_entropy(logits, targets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        epoch = self.trainer.global_step // self.config.steps_per_epoch
        if epoch != self.counted_epoch:
            # Counts of an epoch that was never closed (a resume at its very end) are dropped.
            self.counted_epoch, self.epoch_correct, self.epoch_seen = epoch, 0, 0
        logits = self(images)
        loss = self.loss(logits, targets)
        with torch.no_grad():
            # Device tensors, so counting does not wait for the GPU.
            self.epoch_correct = self.epoch_correct + count_correct(logits, targets, self.config.multi_label)
            self.epoch_seen += len(images)
        self.last_loss = loss.detach()
        return loss

    @property
    def train_time_s(self) -> float:
        """Training wall time of the run so far, over all sessions, in seconds."""
        session = time.perf_counter() - self._session_start if self._session_start is not None else 0.0
        return self.previous_time_s + session

    def on_train_start(self) -> None:
        self._session_start = time.perf_counter()
        if self._rng_to_restore is not None:
            # Restored here, after the data loaders exist, so that random layers (dropout, drop
            # path) continue with the interrupted run's random stream.
            torch.set_rng_state(self._rng_to_restore["torch"])
            if torch.cuda.is_available() and self._rng_to_restore.get("cuda"):
                torch.cuda.set_rng_state_all(self._rng_to_restore["cuda"])
            self._rng_to_restore = None

    def on_train_epoch_end(self) -> None:
        if self.trainer.global_step % self.config.steps_per_epoch or not self.epoch_seen:
            # Stopped inside an epoch (--stop-at-step): its counts continue after the resume.
            return
        counts = torch.tensor([float(self.epoch_correct), float(self.epoch_seen)], device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        if counts[1] > 0:
            self.last_epoch_accuracy = float(counts[0] / counts[1])
            self.epoch_history.append((self.trainer.global_step, self.last_epoch_accuracy))
        self.counted_epoch += 1
        self.epoch_correct = 0
        self.epoch_seen = 0

    def close_open_epoch(self, global_step: int) -> None:
        """Close the last epoch from this process's counts when training ended without closing it.

        That happens when a session resumes from a checkpoint written at the final step.
        """
        if self.epoch_seen and self.counted_epoch == global_step // self.config.steps_per_epoch - 1:
            self.last_epoch_accuracy = float(self.epoch_correct) / self.epoch_seen
            self.counted_epoch += 1
            self.epoch_correct = 0
            self.epoch_seen = 0

    def running_accuracy(self) -> float | None:
        """Return this process's top-1 accuracy over the current epoch so far, or None before any batch."""
        if not self.epoch_seen:
            return None
        return float(self.epoch_correct) / self.epoch_seen

    def configure_optimizers(self):
        config = self.config
        # No weight decay on normalisation weights and biases (all 1-D parameters).
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, momentum=config.momentum,
        )
        total = config.total_steps
        if config.schedule == "step":
            milestones = [max(1, round(fraction * total)) for fraction in STEP_MILESTONES]
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=STEP_GAMMA)
        else:
            # torch's defaults: warm-up over 30 % of the steps from lr / 25, cosine annealing to
            # lr / 1e4, momentum cycled between 0.85 and 0.95 (as in fastai's one-cycle policy).
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_SECTION] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "counted_epoch": self.counted_epoch,
            "epoch_correct": int(self.epoch_correct),
            "epoch_seen": int(self.epoch_seen),
            "last_epoch_accuracy": self.last_epoch_accuracy,
            "train_time_s": self.train_time_s,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        section = checkpoint[CHECKPOINT_SECTION]
        # NOTE: with DDP the checkpoint has the global-zero process's counts, which every process
        # restores, so the train accuracy of a resumed epoch weights that process's batches more.
        self.counted_epoch = section["counted_epoch"]
        self.epoch_correct = section["epoch_correct"]
        self.epoch_seen = section["epoch_seen"]
        self.last_epoch_accuracy = section["last_epoch_accuracy"]
        self.previous_time_s = section["train_time_s"]
        self._rng_to_restore = section["rng"]

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Return the model's tensors under timm's keys, without the fractal classification head."""
        return {
            key: tensor.detach().cpu().contiguous()
            for key, tensor in self.model.state_dict().items()
            if not key.startswith(self.architecture.head_prefixes)
        }


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, multi_label: bool) -> tuple[float, int, float]:
    """Score `model` on `loader`; returns (top-1 accuracy, images scored, chance accuracy).

    Chance is 1 / classes, or for multi-hot targets the mean fraction of classes present in an
    image (the hit rate of a uniformly random guess).
    """
    was_training = model.training
    model.eval()
    correct = 0
    seen = 0
    chance_sum = 0.0
    for images, targets in loader:
        logits = model(images.to(device))
        targets = targets.to(device)
        correct += int(count_correct(logits, targets, multi_label))
        seen += len(images)
        if multi_label:
            chance_sum += float((targets.sum(dim=1) / targets.shape[1]).sum())
        else:
            chance_sum += len(images) / logits.shape[1]
    model.train(was_training)
    seen_or_one = max(seen, 1)
    return correct / seen_or_one, seen, chance_sum / seen_or_one
