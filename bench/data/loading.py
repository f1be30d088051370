"""Image and mask tensors for the methods: resizing and per-weights normalisation."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from bench.data.base import Sample
from bench.data.images import load_image, load_mask
from bench.data.masks import describe_missing_masks


class ImageDataset(Dataset):
    """Images resized to `size` x `size` and normalised with the backbone's training statistics.

    Items are (image (3, size, size) float32, index into `samples`). Images are stretched to a
    square, which keeps MVTec AD and VisA's whole field of view.
    """

    def __init__(self, samples: Sequence[Sample], size: int, mean: Sequence[float], std: Sequence[float],
                 normalise: bool = True) -> None:
        self.samples = list(samples)
        self.size = size
        self.normalise = normalise
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.samples[index].path).resize((self.size, self.size), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if not self.normalise:
            return pixels, index
        return (pixels - self.mean) / self.std, index


@dataclass(frozen=True)
class TrainData:
    """The training images of a run, as methods consume them.

    `loader()` may be iterated once per epoch. Methods that augment raw pixels (CutPaste) ask for
    `normalised=False` batches in [0, 1] and call `normalise` afterwards.
    """

    samples: tuple[Sample, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    batch_size: int
    seed: int

    def __len__(self) -> int:
        return len(self.samples)

    def loader(self, normalised: bool = True, shuffle: bool = False, indices: Sequence[int] | None = None,
               drop_last: bool = False) -> DataLoader:
        """Return a DataLoader of (images (B, 3, S, S), sample indices (B,)); shuffling is seeded."""
        dataset = ImageDataset(self.samples, self.image_size, self.mean, self.std, normalise=normalised)
        if indices is not None:
            dataset = Subset(dataset, list(indices))
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                          drop_last=drop_last)

    def batches(self) -> Iterator[torch.Tensor]:
        """Yield the normalised training images in file order, batches of shape (B, 3, S, S)."""
        for images, _ in self.loader():
            yield images

    def n_batches(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise [0, 1] images (B, 3, H, W) with the weights' training statistics."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std


def load_masks(samples: Sequence[Sample], height: int, width: int) -> np.ndarray | None:
    """Load ground-truth masks at (height, width) with nearest-neighbour resizing.

    Each mask is thresholded at its sample's `mask_threshold` at full resolution, then resized.
    Returns bool (N, height, width), all False for normal images, or None when an anomalous
    sample has no mask: counting its pixels as normal would bias every pixel metric.
    `describe_missing_masks(samples)` then gives the reason to store.
    """
    if describe_missing_masks(samples) is not None:
        return None

    masks = np.zeros((len(samples), height, width), dtype=bool)
    for row, sample in enumerate(samples):
        if sample.mask_path is None:
            continue
        mask = Image.fromarray(load_mask(sample.mask_path, sample.mask_threshold).astype(np.uint8) * 255)
        masks[row] = np.asarray(mask.resize((width, height), Image.NEAREST)) > 0
    return masks
