"""Backbone architectures and their feature hierarchy.

Hierarchy level j in 1..4 is the feature map at stride 2**(j+1) (4, 8, 16, 32 pixels), so a layer
ablation such as "layers 2,3" means the same depth of the network for every architecture.
"""

from dataclasses import dataclass

import timm
from torch import nn

from bench.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Architecture:
    """A backbone known to bench: its timm model and the module name of each hierarchy level."""

    name: str
    timm_name: str
    levels: dict[int, str]
    # The checkpoint key prefixes of the classification head, which AD methods never use.
    head_prefixes: tuple[str, ...]

    def layer_names(self, levels: list[int]) -> list[str]:
        """Map hierarchy levels (1..4) to this architecture's module names, in level order."""
        return [self.levels[level] for level in sorted(levels)]

    def create(self) -> nn.Module:
        """Create the full classification model with timm's default initialisation, no download."""
        return timm.create_model(self.timm_name, pretrained=False)


_RESNET_LEVELS = {1: "layer1", 2: "layer2", 3: "layer3", 4: "layer4"}

ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": Architecture("resnet18", "resnet18", _RESNET_LEVELS, ("fc.",)),
    "resnet50": Architecture("resnet50", "resnet50", _RESNET_LEVELS, ("fc.",)),
    "wide_resnet50_2": Architecture("wide_resnet50_2", "wide_resnet50_2", _RESNET_LEVELS, ("fc.",)),
    # The TF port with "SAME" padding, which is what the Google checkpoints were trained with.
    "efficientnet_lite0": Architecture(
        "efficientnet_lite0",
        "tf_efficientnet_lite0",
        {1: "blocks.1", 2: "blocks.2", 3: "blocks.4", 4: "blocks.6"},
        ("classifier.",),
    ),
}


def get_architecture(name: str) -> Architecture:
    """Look up an architecture by name; an unknown name raises ConfigError listing the known ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConfigError(f"unknown backbone '{name}'; supported backbones: {known}") from None


def parse_levels(text: str, label: str = "--layers") -> list[int]:
    """Parse a hierarchy specification such as "1,2,3" into sorted unique levels in 1..4.

    `label` names the input in error messages, for example "value in key 'layers'" for a grid file.
    """
    try:
        levels = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"invalid {label} '{text}'; pass hierarchy levels 1..4 such as 2,3") from None
    if not levels or levels[0] < 1 or levels[-1] > 4:
        raise ConfigError(f"invalid {label} '{text}'; levels must be in 1..4 (stride 4, 8, 16, 32)")
    return levels
