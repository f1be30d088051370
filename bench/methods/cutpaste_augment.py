"""CutPaste and CutPaste-scar augmentations (Li et al., CVPR 2021) on [0, 1] image tensors.

Sizes follow the CutPaste paper as re-implemented in Runinho/pytorch-cutpaste. A CutPaste patch
covers 2-15 % of the image, with an aspect ratio log-uniform in [0.3, 1/0.3]. A scar is 2-16 px
wide and 10-25 px long (at 256 px, scaled with the image), rotated by -45..45 degrees. Each cut piece
gets a colour jitter of 0.1 in brightness, contrast, saturation and hue before it is pasted at a
random place of the same image. All randomness comes from the given torch.Generator.
"""

import math

import torch
import torchvision.transforms.v2.functional as TF

AREA_RATIO = (0.02, 0.15)
ASPECT_RATIO = 0.3
SCAR_WIDTH = (2.0, 16.0)
SCAR_LENGTH = (10.0, 25.0)
SCAR_ROTATION = (-45.0, 45.0)
JITTER = 0.1
# Scar sizes above are in pixels of a 256 px image.
REFERENCE_SIZE = 256


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _integer(high: int, generator: torch.Generator) -> int:
    """Draw an integer in 0..high (inclusive)."""
    return int(torch.randint(high + 1, (), generator=generator))


def colour_jitter(piece: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Jitter brightness, contrast and saturation by factors in [0.9, 1.1] and hue by [-0.1, 0.1]."""
    piece = TF.adjust_brightness(piece, _uniform(1 - JITTER, 1 + JITTER, generator))
    piece = TF.adjust_contrast(piece, _uniform(1 - JITTER, 1 + JITTER, generator))
    piece = TF.adjust_saturation(piece, _uniform(1 - JITTER, 1 + JITTER, generator))
    return TF.adjust_hue(piece, _uniform(-JITTER, JITTER, generator)).clamp(0, 1)


def cut_paste(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return a copy of `image` (3, H, W) with a jittered rectangle of itself pasted elsewhere."""
    _, height, width = image.shape
    area = _uniform(*AREA_RATIO, generator) * height * width
    aspect = math.exp(_uniform(math.log(ASPECT_RATIO), -math.log(ASPECT_RATIO), generator))
    cut_width = min(width - 1, max(1, round(math.sqrt(area * aspect))))
    cut_height = min(height - 1, max(1, round(math.sqrt(area / aspect))))

    top, left = _integer(height - cut_height, generator), _integer(width - cut_width, generator)
    piece = colour_jitter(image[:, top:top + cut_height, left:left + cut_width], generator)
    top, left = _integer(height - cut_height, generator), _integer(width - cut_width, generator)
    augmented = image.clone()
    augmented[:, top:top + cut_height, left:left + cut_width] = piece
    return augmented


def scar(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return a copy of `image` (3, H, W) with a thin, rotated, jittered strip of itself pasted elsewhere."""
    _, height, width = image.shape
    scale = min(height, width) / REFERENCE_SIZE
    cut_width = min(width - 1, max(1, round(_uniform(*SCAR_WIDTH, generator) * scale)))
    cut_height = min(height - 1, max(1, round(_uniform(*SCAR_LENGTH, generator) * scale)))

    top, left = _integer(height - cut_height, generator), _integer(width - cut_width, generator)
    piece = colour_jitter(image[:, top:top + cut_height, left:left + cut_width], generator)
    # An alpha channel marks the strip's pixels after the rotation enlarges the canvas.
    with_alpha = torch.cat([piece, torch.ones_like(piece[:1])])
    rotated = TF.rotate(with_alpha, _uniform(*SCAR_ROTATION, generator), expand=True)
    rotated = rotated[:, :height, :width]
    mask = rotated[3:] > 0.5

    piece_height, piece_width = rotated.shape[1:]
    top, left = _integer(height - piece_height, generator), _integer(width - piece_width, generator)
    augmented = image.clone()
    region = augmented[:, top:top + piece_height, left:left + piece_width]
    augmented[:, top:top + piece_height, left:left + piece_width] = torch.where(mask, rotated[:3], region)
    return augmented


def three_way_batch(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images, cut-paste versions, scar versions) stacked as (3B, 3, H, W) and labels 0/1/2 (3B,)."""
    cut = torch.stack([cut_paste(image, generator) for image in images])
    scarred = torch.stack([scar(image, generator) for image in images])
    labels = torch.arange(3).repeat_interleave(len(images))
    return torch.cat([images, cut, scarred]), labels
