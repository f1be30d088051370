"""Dataset records shared by every dataset reader: one sample per image."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One image of a category, with its ground truth.

    `label` is 0 for a normal image and 1 for an anomalous one. `defect` is the test folder name
    ("good" for normal images). `mask_path` is None for normal images and for anomalous images
    whose dataset has no pixel ground truth.
    """

    path: Path
    label: int
    defect: str
    mask_path: Path | None = None


@dataclass(frozen=True)
class Category:
    """A validated category: training images (all normal) and labelled test images."""

    dataset: str
    root: Path
    name: str
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]
