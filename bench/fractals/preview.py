"""Contact sheets: a grid of rendered fractal images for looking at a dataset."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from bench.errors import ConfigError
from bench.fractals.recipes import FractalImages


def contact_sheet(images: FractalImages, count: int = 16, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """Return a uint8 RGB grid of the first `count` images, spread evenly over the dataset.

    The images are those at indices round(k * len / count), so a sheet shows many classes.
    columns defaults to ceil(sqrt(count)); `gap` white pixels separate the tiles.
    """
    if count < 1:
        raise ConfigError(f"invalid image count {count}: use at least 1, for example 64")
    count = min(count, len(images))
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    size = images.spec.render.size
    sheet = np.full((rows * (size + gap) - gap, columns * (size + gap) - gap, 3), 255, dtype=np.uint8)
    for k in range(count):
        index = (k * len(images)) // count
        row, column = divmod(k, columns)
        top = row * (size + gap)
        left = column * (size + gap)
        sheet[top : top + size, left : left + size] = images.image(index)
    return sheet


def write_contact_sheet(images: FractalImages, path: str | Path, count: int = 16, columns: int | None = None) -> Path:
    """Write the contact sheet of `images` to a PNG file and return its path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"invalid contact sheet name {str(path)!r}: use the .png extension")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(images, count, columns)).save(path, optimize=True)
    return path
