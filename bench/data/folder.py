"""Reader for users' own images in the MVTec AD folder layout, with optional and soft masks.

    <root>/<category>/train/good/<image>             normal training images
    <root>/<category>/test/good/<image>              normal test images
    <root>/<category>/test/<defect>/<image>          anomalous test images, any folder name
    <root>/<category>/ground_truth/<defect>/<mask>   optional masks: <stem>_mask.<ext> or <stem>.<ext>

It differs from the MVTec AD reader in four ways:

- Masks are optional. An anomalous image without one has no pixel ground truth, and the pixel
  metrics of its category are then stored as NULL with the reason.
- A mask may have any image extension and may be named like its image, without `_mask`.
- Masks may be soft. A pixel is anomalous where its value is above `mask_threshold` times the
  full scale of the mask (DEFAULT_MASK_THRESHOLD: above half intensity, 127.5 for 8-bit).
  Binary {0, 255} masks read the same with any threshold in [0, 1).
- Images may be grayscale, RGBA, 16-bit or palette PNG, JPEG, TIFF or BMP, and their sizes may
  differ within a category. Runs stretch every image to the square model input.
"""

import logging
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from bench.data.base import Category, Sample
from bench.data.images import IMAGE_EXTENSIONS, list_images, read_image_size
from bench.data.mvtec import _check_root, _find_category, _format_size, _load_test, _load_train
from bench.errors import DatasetError

logger = logging.getLogger(__name__)

DEFAULT_MASK_THRESHOLD = 0.5

MASK_SUFFIX = "_mask"


def load_folder(root: Path, category: str, mask_threshold: float = DEFAULT_MASK_THRESHOLD) -> Category:
    """Scan and validate one category of a folder dataset and return its samples.

    Raises DatasetError for a missing root, category, train/good or test folder, and for a
    split without images. It also raises for two images in one defect folder with the same
    stem, two mask files for one image, a mask whose size differs from its image, and any file
    that PIL cannot read. Pixel data is not decoded here, because `verify_mask_threshold`
    decodes the masks.
    """
    root = Path(root).expanduser().absolute()
    _check_root(root)
    category_dir = _find_category(root, category)

    train = _load_train(category_dir)
    test = _load_test(category_dir, _load_defect)
    test = [replace(sample, mask_threshold=mask_threshold) for sample in test]

    anomalous = [sample for sample in test if sample.label == 1]
    missing = [sample for sample in anomalous if sample.mask_path is None]
    if missing:
        logger.warning(
            "%d of %d anomalous test images of %s have no mask in %s: pixel metrics will be NULL",
            len(missing), len(anomalous), category, category_dir / "ground_truth",
        )

    return Category(dataset="folder", root=root, name=category, train=tuple(train), test=tuple(test),
                    mask_threshold=mask_threshold)


def find_mask_candidates(mask_dir: Path) -> dict[str, list[Path]]:
    """Map each image stem to the mask files in `mask_dir` that may belong to it."""
    candidates: dict[str, list[Path]] = defaultdict(list)
    if not mask_dir.is_dir():
        return candidates

    for mask in list_images(mask_dir):
        candidates[mask.stem].append(mask)
        if mask.stem.endswith(MASK_SUFFIX):
            candidates[mask.stem.removesuffix(MASK_SUFFIX)].append(mask)

    return candidates


def _load_defect(category_dir: Path, defect_dir: Path) -> list[Sample]:
    """Validate the images of one defect type and any masks they have."""
    defect = defect_dir.name
    images = list_images(defect_dir)
    _check_unique_stems(images, defect_dir)
    candidates = find_mask_candidates(category_dir / "ground_truth" / defect)

    samples = []
    for image in images:
        image_size = read_image_size(image)
        mask = _choose_mask(image, candidates.get(image.stem, []))

        if mask is not None:
            mask_size = read_image_size(mask, kind="mask")
            if mask_size != image_size:
                raise DatasetError(
                    f"mask size {_format_size(mask_size)} differs from image size {_format_size(image_size)}: "
                    f"{mask} (resize or replace the mask so that it matches {image})"
                )

        samples.append(Sample(path=image, label=1, defect=defect, mask_path=mask))

    return samples


def _choose_mask(image: Path, candidates: list[Path]) -> Path | None:
    """Return the one mask file of `image`, None without one, or raise DatasetError for several."""
    matches = [mask for mask in candidates if mask.stem in (f"{image.stem}{MASK_SUFFIX}", image.stem)]

    if len(matches) > 1:
        names = ", ".join(mask.name for mask in matches)
        raise DatasetError(
            f"{len(matches)} mask files match image {image}: {names} in {matches[0].parent} "
            "(keep one mask per image)"
        )

    return matches[0] if matches else None


def _check_unique_stems(images: list[Path], defect_dir: Path) -> None:
    """Raise DatasetError when two images share a stem, because their masks would share a name."""
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            raise DatasetError(
                f"images {seen[image.stem].name} and {image.name} in {defect_dir} have the same stem, so their "
                f"masks would have the same name (rename one; mask extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        seen[image.stem] = image
