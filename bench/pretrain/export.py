"""Files of a finished pre-training: the backbone checkpoint, the filter image, and checkpoint checks."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.errors import WeightsError
from bench.pretrain.config import PretrainConfig
from bench.pretrain.module import CHECKPOINT_FORMAT, CHECKPOINT_SECTION
from bench.reports.filters import filter_mosaic, first_conv
from bench.weights.architectures import get_architecture
from bench.weights.loading import validate_backbone_state

logger = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.pth"
FILTERS_FILE = "filters.png"
# Format tag of backbone.pth's metadata.
BACKBONE_FORMAT = "bench-pretrain/1"
# Side of one filter pixel in filters.png, in image pixels.
FILTER_PIXEL = 12


def save_backbone(path: Path, backbone: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write {"backbone": state_dict, "meta": meta} to `path` atomically; returns the path."""
    temporary = path.with_name("." + path.name + ".partial")
    torch.save({"backbone": backbone, "meta": meta}, temporary)
    os.replace(temporary, path)
    return path


def save_filters(path: Path, backbone: dict[str, torch.Tensor]) -> Path:
    """Write the first convolution's filters as a PNG grid, each filter scaled to [0, 1] on its own.

    A filter of k x k weights becomes k * FILTER_PIXEL pixels square, with a one-pixel white gap
    between filters before scaling.
    """
    _, weight = first_conv(backbone)
    mosaic = filter_mosaic(weight)
    pixels = np.round(mosaic * 255).astype(np.uint8)
    pixels = pixels.repeat(FILTER_PIXEL, axis=0).repeat(FILTER_PIXEL, axis=1)
    temporary = path.with_name("." + path.name + ".partial")
    Image.fromarray(pixels).save(temporary, format="PNG")
    os.replace(temporary, path)
    return path


def read_training_checkpoint(path: Path) -> tuple[dict, PretrainConfig]:
    """Read a `last.ckpt` of `bench pretrain` and return the checkpoint and its configuration.

    Raises WeightsError when the file is missing, unreadable (truncated, corrupted), not written by
    `bench pretrain`, or when its weights do not fit its architecture.
    """
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} not found: pass the last.ckpt of a `bench pretrain` run folder")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise WeightsError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {first_line}): the file is truncated or "
            f"corrupted; resume from an intact last.ckpt or start the run again"
        ) from None
    section = checkpoint.get(CHECKPOINT_SECTION) if isinstance(checkpoint, dict) else None
    if not isinstance(section, dict) or "config" not in section:
        raise WeightsError(f"{path} is not a `bench pretrain` checkpoint (no {CHECKPOINT_SECTION} section): "
                           f"pass the last.ckpt of a `bench pretrain` run folder")
    if section.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"checkpoint {path} has format {section.get('format')}, but this bench reads format "
                           f"{CHECKPOINT_FORMAT}: resume it with the bench version that wrote it")
    config = PretrainConfig.from_dict(section["config"])
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise WeightsError(f"checkpoint {path} has no model weights (state_dict): start the run again")
    model_state = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    validate_backbone_state(model_state, get_architecture(config.arch), path)
    return checkpoint, config
