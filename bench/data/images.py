"""Image and mask file access shared by the dataset readers.

Every function raises DatasetError, not a PIL error, for a file that cannot be read, so the
CLI can report the path on one line.
"""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.errors import DatasetError

# Matched case-insensitively against the file suffix.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

# Single-channel integer modes whose values span 0..65535.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

# PIL raises these for files it cannot identify, parse or finish reading.
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def is_image_file(path: Path) -> bool:
    """Check whether `path` is a visible regular file with an image extension."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """List the visible image files directly inside `folder`, sorted by name."""
    return sorted((path for path in folder.iterdir() if is_image_file(path)), key=lambda path: path.name)


def read_image_size(path: Path, verify: bool = True, kind: str = "image") -> tuple[int, int]:
    """Read (width, height) from the file header and, with `verify`, check that the file is intact.

    The pixel data is not decoded. With `verify`, `Image.verify` reads the whole file, so a
    truncated PNG or one with a bad chunk checksum raises DatasetError here and not halfway
    through a run. `kind` ("image" or "mask") names the file in the error message.
    """
    try:
        with Image.open(path) as image:
            size = image.size
            if verify:
                image.verify()
    except _READ_ERRORS as exc:
        raise DatasetError(
            f"cannot read {kind} file {path}: {_describe(exc)} (replace the file or remove it from the dataset)"
        ) from exc

    return size


def load_image(path: Path) -> Image.Image:
    """Load an image file as 8-bit RGB.

    16-bit grayscale (I;16) is scaled from 0..65535 to 0..255, so no value is clipped. 32-bit
    integer (I) is treated the same way when its values lie in 0..65535, and float (F) when its
    values lie in 0..1; other ranges raise DatasetError. Alpha (RGBA, LA, or P with
    transparency) is composited onto black, so fully transparent pixels read as black whatever
    colour they store.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image, path)
    except _READ_ERRORS as exc:
        raise DatasetError(
            f"cannot read image file {path}: {_describe(exc)} (replace the file or remove it from the dataset)"
        ) from exc


def load_mask(path: Path, threshold: float = 0.0) -> np.ndarray:
    """Load a ground-truth mask as a bool (H, W) array that is True where the mask is anomalous.

    A pixel is anomalous where its value from `read_mask_values` is greater than `threshold`
    times the full scale of the file's mode. The default 0.0 counts every non-zero pixel, which
    is the MVTec AD rule: its masks are 8-bit grayscale with values {0, 255}. A threshold of 0.5
    reads soft masks (values between 0 and the full scale) as anomalous above half intensity.
    """
    values, full_scale = read_mask_values(path)
    return values > threshold * full_scale


def read_mask_values(path: Path) -> tuple[np.ndarray, float]:
    """Read a mask's pixel intensities as an (H, W) array, with the full scale of its mode.

    The full scale is 1 for 1-bit and float masks, 65535 for 16-bit and 32-bit integer masks
    and 255 otherwise. A colour mask's intensity is the maximum of its colour channels, so a
    pixel counts where any channel does. Alpha is ignored, and palette masks (P, PA) are read
    by colour, because palette indices carry no intensity.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("P", "PA"):
                mode = "RGBA" if mode == "PA" else "RGB"
                image = image.convert(mode)
            pixels = np.asarray(image)
    except _READ_ERRORS as exc:
        raise DatasetError(
            f"cannot read mask file {path}: {_describe(exc)} (replace the file or remove it from the dataset)"
        ) from exc

    if pixels.ndim == 3:
        # Only the colour channels count: RGBA and LA carry alpha last.
        if mode in ("RGBA", "RGBa", "LA", "La"):
            pixels = pixels[..., :-1]
        pixels = pixels.max(axis=2)

    return pixels, mask_full_scale(mode)


def load_label_mask(path: Path) -> np.ndarray:
    """Load a mask that stores label values (0 background, k > 0 defect k) as bool (H, W), True where k > 0.

    Palette masks are read by index, not by colour, because the index is the label. Colour
    masks count where any colour channel is non-zero, and alpha is ignored.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            pixels = np.asarray(image)
    except _READ_ERRORS as exc:
        raise DatasetError(
            f"cannot read mask file {path}: {_describe(exc)} (replace the file or remove it from the dataset)"
        ) from exc

    if pixels.ndim == 3:
        # RGBA, LA and PA carry alpha last; PA's first channel is the palette index.
        if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
            pixels = pixels[..., :-1]
        return (pixels > 0).any(axis=2)

    return pixels > 0


def mask_full_scale(mode: str) -> float:
    """Return the value of full intensity for a PIL mode: 1, 255 or 65535."""
    if mode in ("1", "F"):
        return 1.0
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        return 65535.0
    return 255.0


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Convert an opened image of any PIL mode to RGB as `load_image` documents."""
    mode = image.mode

    if mode == "RGB":
        return image.copy()

    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.uint32)
        return _gray_to_rgb(_scale_sixteen_bit(values))

    if mode == "I":
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise DatasetError(
                f"unsupported value range {values.min()}..{values.max()} in 32-bit image {path} "
                "(save it as 8-bit or 16-bit grayscale)"
            )
        return _gray_to_rgb(_scale_sixteen_bit(values.astype(np.uint32)))

    if mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            raise DatasetError(
                f"unsupported value range in float image {path}: expected 0..1 "
                "(save it as 8-bit or 16-bit grayscale)"
            )
        return _gray_to_rgb(np.round(values * 255.0).astype(np.uint8))

    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")

    # L, 1, P without transparency, CMYK, YCbCr, LAB, HSV: PIL's own conversion is exact.
    return image.convert("RGB")


def _scale_sixteen_bit(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 to 0..255 by dividing by 257 with rounding, so 65535 maps to 255."""
    return ((values + 128) // 257).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    """Stack one 8-bit channel into an RGB image."""
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=2))


def _describe(exc: BaseException) -> str:
    """Return the exception message, or its type name when the message is empty."""
    # PIL's own message repeats the path, which the caller already names.
    if isinstance(exc, UnidentifiedImageError):
        return "unknown or damaged image format"

    text = str(exc).strip().replace("\n", " ")
    return text or type(exc).__name__
