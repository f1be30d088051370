"""Reading checkpoints and loading them into a backbone module, with strict key checks."""

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from bench.errors import WeightsError
from bench.weights.architectures import Architecture, get_architecture
from bench.weights.efficientnet_lite import convert_to_timm, is_efficientnet_pytorch_state_dict
from bench.weights.registry import IMAGENET, RANDOM, WeightsRecord

logger = logging.getLogger(__name__)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint safely (`weights_only=True`) and return its backbone state dict and metadata.

    Accepted layouts: a plain state dict, `{"backbone": state_dict, "meta": {...}}` as written by
    `bench pretrain`, or `{"state_dict": state_dict}`. Keys in the `efficientnet_pytorch` naming are
    converted to timm's.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        detail = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        raise WeightsError(f"cannot read weights file {path} as a PyTorch checkpoint ({detail}); "
                           "pass a file written by torch.save, such as a state dict") from None
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"weights file {path} holds a {type(checkpoint).__name__}, not a state dict")

    meta = checkpoint.get("meta", {}) if isinstance(checkpoint.get("meta"), dict) else {}
    state_dict = checkpoint.get("backbone") or checkpoint.get("state_dict") or checkpoint
    state_dict = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    if not state_dict:
        raise WeightsError(f"weights file {path} contains no tensors")
    if is_efficientnet_pytorch_state_dict(state_dict):
        state_dict = convert_to_timm(state_dict)
    return state_dict, meta


def _backbone_reference(architecture: Architecture) -> dict[str, torch.Tensor]:
    # Every feature level of the architecture: the keys an AD method may need from a checkpoint.
    model = timm.create_model(architecture.timm_name, pretrained=False, features_only=True)
    return model.state_dict()


def validate_backbone_state(state_dict: dict[str, torch.Tensor], architecture: Architecture, path: Path | str) -> None:
    """Raise WeightsError unless the state dict provides every backbone tensor of `architecture` with its shape."""
    reference = _backbone_reference(architecture)
    missing = [key for key in reference if key not in state_dict]
    if missing:
        raise WeightsError(
            f"weights {path} do not fit {architecture.name}: {len(missing)} of {len(reference)} backbone "
            f"tensors missing (first: {missing[0]}); pass the --arch the checkpoint was trained with"
        )
    wrong_shapes = [key for key in reference if tuple(state_dict[key].shape) != tuple(reference[key].shape)]
    if wrong_shapes:
        key = wrong_shapes[0]
        raise WeightsError(
            f"weights {path} do not fit {architecture.name}: {len(wrong_shapes)} tensors have other shapes "
            f"(first: {key} {tuple(state_dict[key].shape)} != {tuple(reference[key].shape)})"
        )


def backbone_state_dict(record: WeightsRecord) -> dict[str, torch.Tensor] | None:
    """Return the backbone tensors of `record`, or None for `random` (keep the seeded initialisation)."""
    architecture = get_architecture(record.arch)
    if record.name == RANDOM and record.path is None:
        return None

    if record.path is not None:
        state_dict, _ = read_checkpoint(record.path)
    elif record.source.startswith("timm:"):
        tag = record.source.removeprefix("timm:")
        try:
            state_dict = timm.create_model(tag, pretrained=True).state_dict()
        except Exception as error:  # hub and network errors come in many types
            raise WeightsError(
                f"cannot load {IMAGENET} weights '{tag}' for {record.arch} ({type(error).__name__}); offline, "
                f"download them elsewhere and register the file: bench weights add {IMAGENET} --arch {record.arch} --file {record.arch}.pth"
            ) from None
    else:
        raise WeightsError(f"weights '{record.name}' for {record.arch} have no file and no known source ({record.source})")

    validate_backbone_state(state_dict, architecture, record.path or record.source)
    return state_dict


def load_into(module: nn.Module, record: WeightsRecord) -> int:
    """Load `record` into a timm feature extractor `module` and return how many tensors were loaded.

    Every tensor of `module` must come from the checkpoint: a missing key raises WeightsError, so a
    silently half-initialised backbone cannot happen. Checkpoint keys the module does not use (the
    classifier head, deeper stages than the requested layers) are ignored.
    """
    state_dict = backbone_state_dict(record)
    if state_dict is None:
        return 0
    own = module.state_dict()
    subset = {key: state_dict[key] for key in own if key in state_dict}
    missing = [key for key in own if key not in subset]
    if missing:
        raise WeightsError(f"weights '{record.name}' lack {len(missing)} tensors of the {record.arch} feature extractor (first: {missing[0]})")
    module.load_state_dict(subset, strict=True)
    logger.info("loaded %d tensors of weights %s (%s) into the backbone", len(subset), record.name, record.arch)
    return len(subset)
