"""Image and mask tensors for the methods: resizing and per-weights normalisation."""

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bench.data.base import Sample
from bench.data.images import load_image, load_mask


class ImageDataset(Dataset):
    """Images resized to `size` x `size` and normalised with the backbone's training statistics.

    Items are (image (3, size, size) float32, index into `samples`). Images are stretched to a
    square, which keeps MVTec AD and VisA's whole field of view.
    """

    def __init__(self, samples: Sequence[Sample], size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.samples = list(samples)
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.samples[index].path).resize((self.size, self.size), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std, index


def load_masks(samples: Sequence[Sample], height: int, width: int) -> np.ndarray | None:
    """Load ground-truth masks at (height, width) with nearest-neighbour resizing.

    Returns bool (N, height, width), all False for normal images, or None when an anomalous
    sample has no mask: counting its pixels as normal would bias every pixel metric.
    """
    if any(sample.label == 1 and sample.mask_path is None for sample in samples):
        return None
    masks = np.zeros((len(samples), height, width), dtype=bool)
    for row, sample in enumerate(samples):
        if sample.mask_path is None:
            continue
        mask = Image.fromarray(load_mask(sample.mask_path).astype(np.uint8) * 255)
        masks[row] = np.asarray(mask.resize((width, height), Image.NEAREST)) > 0
    return masks
