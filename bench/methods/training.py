"""Fixed-budget training loops for the methods that train a network, with optional early stopping.

Early stopping never looks at the test split: it monitors the method's own training loss on a
seeded validation split carved from the training images (all normal), and restores the weights
of the best epoch. Without a validation split the loop runs exactly `epochs` epochs.
"""

import copy
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bench.data.loading import TrainData
from bench.errors import ConfigError
from bench.methods.base import Option, Phases

logger = logging.getLogger(__name__)


def training_options(epochs: int, lr: float, batch_size: int, patience: int) -> dict[str, Option]:
    """Return the options every trained method shares, with that method's published defaults."""
    return {
        "epochs": Option(int, epochs, f"training epochs (passes over the training images); default {epochs} "
                                      "follows the method's published setting, pass 1-5 on a CPU"),
        "lr": Option(float, lr, "learning rate of the optimiser"),
        "train_batch_size": Option(int, batch_size, "training images per optimiser step (--batch-size sets "
                                                    "only the inference batch)"),
        "validation_fraction": Option(float, 0.0, "fraction of the training images held out for early "
                                                  "stopping on the training loss, in [0, 0.5]; 0 = no early "
                                                  "stopping, train for all epochs"),
        "patience": Option(int, patience, "epochs without a lower validation loss before training stops "
                                          "(used only with validation_fraction > 0)"),
    }


def check_training_options(method: str, config: dict) -> None:
    """Raise ConfigError for an invalid epochs, lr, train_batch_size, validation_fraction or patience."""
    if config["epochs"] < 1:
        raise ConfigError(f"invalid option epochs={config['epochs']} for {method}; pass 1 or more")
    if config["lr"] <= 0:
        raise ConfigError(f"invalid option lr={config['lr']} for {method}; pass a positive learning rate")
    if config["train_batch_size"] < 1:
        raise ConfigError(f"invalid option train_batch_size={config['train_batch_size']} for {method}; pass 1 or more")
    if not 0 <= config["validation_fraction"] <= 0.5:
        raise ConfigError(f"invalid option validation_fraction={config['validation_fraction']} for {method}; "
                          "pass a fraction in [0, 0.5]")
    if config["patience"] < 1:
        raise ConfigError(f"invalid option patience={config['patience']} for {method}; pass 1 or more")


def validation_split(n_images: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split image indices 0..n_images-1 into (training, validation), both sorted, seeded by `seed`.

    A fraction of 0 keeps every image for training. Otherwise at least one image goes to each side.
    """
    if fraction == 0:
        return list(range(n_images)), []
    n_validation = max(1, round(n_images * fraction))
    if n_images - n_validation < 1:
        raise ConfigError(f"validation_fraction={fraction} leaves no training image out of {n_images}; "
                          "lower it or pass 0")
    order = np.random.default_rng(seed).permutation(n_images)
    return sorted(order[n_validation:].tolist()), sorted(order[:n_validation].tolist())


@dataclass
class TrainingResult:
    """Outcome of a training loop: epochs run, the epoch whose weights were kept, the loss histories."""

    epochs_run: int
    best_epoch: int
    train_losses: list[float]
    validation_losses: list[float]


def train_epochs(
    train: TrainData,
    phases: Phases,
    config: dict,
    step: Callable[[torch.Tensor], float],
    validation_loss: Callable[[torch.Tensor], float] | None,
    trained: nn.Module,
    description: str,
    normalised: bool = True,
) -> TrainingResult:
    """Run `step` on shuffled training batches for config["epochs"] epochs, with optional early stopping.

    `step(images)` runs one optimiser step on images (B, 3, S, S) and returns the batch's loss.
    With config["validation_fraction"] > 0, `validation_loss(images)` scores held-out batches
    after every epoch, training stops after config["patience"] epochs without improvement, and
    the state of `trained` (the modules the optimiser changes) from the best epoch is restored.
    `normalised=False` hands [0, 1] pixels to `step`, for methods that augment raw images.
    """
    batched = dataclasses.replace(train, batch_size=config["train_batch_size"])
    train_indices, validation_indices = validation_split(len(train), config["validation_fraction"], train.seed)
    # One loader for all epochs: its seeded generator advances, so each epoch gets a new order.
    loader = batched.loader(normalised=normalised, shuffle=True, indices=train_indices)
    validation_loader = (batched.loader(normalised=normalised, indices=validation_indices)
                         if validation_indices and validation_loss is not None else None)
    if validation_loader is not None:
        logger.info("%s: early stopping on %d held-out training images (patience %d)", description,
                    len(validation_indices), config["patience"])

    result = TrainingResult(epochs_run=0, best_epoch=0, train_losses=[], validation_losses=[])
    best_state = None
    best_loss = float("inf")
    epochs = config["epochs"]
    batches = _epoch_batches(loader, epochs)
    for epoch, number, images in phases.track(batches, description, epochs * len(loader)):
        if number == 0:
            result.epochs_run = epoch + 1
            result.train_losses.append(0.0)
        result.train_losses[-1] += step(images) * len(images) / len(train_indices)
        if number + 1 < len(loader):
            continue

        message = f"{description}: epoch {epoch + 1}/{epochs}, training loss {result.train_losses[-1]:.6g}"
        if validation_loader is None:
            logger.info(message)
            continue
        loss = _mean_loss(validation_loss, validation_loader)
        result.validation_losses.append(loss)
        logger.info("%s, validation loss %.6g", message, loss)
        if loss < best_loss:
            best_loss, result.best_epoch = loss, epoch + 1
            best_state = copy.deepcopy(trained.state_dict())
        elif epoch + 1 - result.best_epoch >= config["patience"]:
            logger.info("%s: early stop after epoch %d; keeping epoch %d", description, epoch + 1, result.best_epoch)
            break

    if best_state is not None:
        trained.load_state_dict(best_state)
    else:
        result.best_epoch = result.epochs_run
    return result


def _epoch_batches(loader, epochs: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    for epoch in range(epochs):
        for number, (images, _) in enumerate(loader):
            yield epoch, number, images


@torch.no_grad()
def _mean_loss(loss: Callable[[torch.Tensor], float], loader) -> float:
    total, count = 0.0, 0
    for images, _ in loader:
        total += loss(images) * len(images)
        count += len(images)
    return total / count


def steps_per_epoch(n_images: int, config: dict) -> int:
    """Return the optimiser steps of one epoch of `train_epochs` (the last batch may be smaller)."""
    train_indices, _ = validation_split(n_images, config["validation_fraction"], 0)
    return -(-len(train_indices) // config["train_batch_size"])
