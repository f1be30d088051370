"""Dataset records shared by every dataset reader: one sample per image."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One image of a category, with its ground truth.

    `label` is 0 for a normal image and 1 for an anomalous one. `defect` is the test folder name
    ("good" for normal images). `mask_path` is None for normal images and for anomalous images
    whose dataset has no pixel ground truth. A mask pixel is anomalous where its value is greater
    than `mask_threshold` times the full scale of the mask's mode (255 for 8-bit, 65535 for
    16-bit), so the default 0.0 counts every non-zero pixel.
    """

    path: Path
    label: int
    defect: str
    mask_path: Path | None = None
    mask_threshold: float = 0.0


@dataclass(frozen=True)
class Category:
    """A validated category: training images (all normal) and labelled test images.

    `mask_threshold` is the threshold that every test sample's `mask_threshold` carries, kept
    here so that a run can record it.
    """

    dataset: str
    root: Path
    name: str
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]
    mask_threshold: float = 0.0
