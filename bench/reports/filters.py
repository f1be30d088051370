"""The first convolution's filters of backbone weights, drawn as an image grid.

Weights resolve through the registry like a run's `--weights`, so any registered name works,
as do the built-ins: `imagenet` (where its file or network is available) and `random`, which is
timm's initialisation seeded with `--seed`.
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from sqlalchemy.orm import Session

from bench.errors import WeightsError
from bench.reports.figures import save_figure

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FilterPanel:
    """The first convolution of one set of weights: its label, state-dict key and weight (out, 3, k, k)."""

    label: str
    key: str
    weight: np.ndarray


def first_conv(state_dict: dict[str, torch.Tensor]) -> tuple[str, np.ndarray]:
    """Return the key and weight of the first 4-D tensor with 3 input channels: the stem convolution."""
    for key, tensor in state_dict.items():
        if tensor.ndim == 4 and tensor.shape[1] == 3:
            return key, tensor.detach().float().cpu().numpy()
    raise WeightsError("no convolution with 3 input channels in the backbone state dict")


def load_filters(session: Session, weights: str, arch: str, seed: int = 0) -> FilterPanel:
    """Resolve `weights` for `arch` and return its first convolution; `random` is timm's init seeded with `seed`."""
    from bench.weights.architectures import get_architecture
    from bench.weights.loading import backbone_state_dict
    from bench.weights.registry import resolve_weights

    record = resolve_weights(session, weights, arch)
    state_dict = backbone_state_dict(record)
    label = f"{weights} ({arch})"
    if state_dict is None:
        torch.manual_seed(seed)
        state_dict = get_architecture(arch).create().state_dict()
        label = f"{weights} ({arch}, timm init, seed {seed})"
    key, weight = first_conv(state_dict)
    logger.info("first convolution of %s: %s %s", label, key, weight.shape)
    return FilterPanel(label, key, weight)


def normalise_filters(weight: np.ndarray) -> np.ndarray:
    """Scale each filter (3, k, k) on its own to [0, 1]; a constant filter becomes mid-grey (0.5)."""
    flat = weight.reshape(len(weight), -1)
    low = flat.min(axis=1)[:, None, None, None]
    span = (flat.max(axis=1) - flat.min(axis=1))[:, None, None, None]
    scaled = np.where(span > 0, (weight - low) / np.where(span > 0, span, 1), 0.5)
    return scaled.astype(np.float32)


def filter_mosaic(weight: np.ndarray, gap: int = 1) -> np.ndarray:
    """Tile normalised filters into one RGB image (rows of ceil(sqrt(n)) filters) on a white background."""
    scaled = normalise_filters(weight).transpose(0, 2, 3, 1)
    count, height, width, _ = scaled.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    mosaic = np.ones((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), dtype=np.float32)
    for index in range(count):
        top = (index // columns) * (height + gap)
        left = (index % columns) * (width + gap)
        mosaic[top:top + height, left:left + width] = scaled[index]
    return mosaic


def filters_figure(panels: list[FilterPanel], out: Path) -> list[Path]:
    """Draw one mosaic of first-convolution filters per panel, side by side."""
    if not panels:
        raise WeightsError("no weights given; pass --weights NAME once per set of weights")
    figure = Figure(figsize=(3.6 * len(panels), 4.2))
    for position, panel in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), position + 1)
        axes.imshow(filter_mosaic(panel.weight), interpolation="nearest")
        count, channels, height, width = panel.weight.shape
        axes.set_title(f"{panel.label}\n{panel.key}: {count}×{channels}×{height}×{width}", fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
    figure.suptitle("First convolution filters, RGB, each filter scaled to [0, 1] on its own", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    return save_figure(figure, out)
