"""Reader and validator for datasets in the MVTec AD folder layout.

    <root>/<category>/train/good/<image>                    normal training images
    <root>/<category>/test/good/<image>                     normal test images
    <root>/<category>/test/<defect>/<image>                 anomalous test images
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png pixel masks of the anomalous images

`load_mvtec` checks the whole layout and every file header before a run starts, so a broken
copy fails at once with a message that names the file. Nothing is ever downloaded.
"""

import difflib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench.data.base import Category, Sample
from bench.data.images import IMAGE_EXTENSIONS, list_images, read_image_size
from bench.errors import DatasetError

logger = logging.getLogger(__name__)

GOOD = "good"

_EXTENSION_LIST = ", ".join(sorted(IMAGE_EXTENSIONS))


def list_categories(root: Path) -> list[str]:
    """List the sub-folders of `root` that contain `train/good`, sorted by name.

    Raises DatasetError when `root` is not an existing folder.
    """
    root = Path(root).expanduser()
    _check_root(root)

    names = [
        child.name
        for child in root.iterdir()
        if not child.name.startswith(".") and (child / "train" / GOOD).is_dir()
    ]
    return sorted(names)


def load_mvtec(root: Path, category: str, dataset: str = "mvtec", mask_threshold: float = 0.0) -> Category:
    """Scan and validate one category and return its training and test samples.

    Training samples come from train/good. Test samples come from test/good (label 0, no mask)
    and from every other test/<defect> folder (label 1, mask at
    ground_truth/<defect>/<stem>_mask.png). Images are sorted by file name, hidden files and
    folders are skipped, and sample paths are absolute. `dataset` is recorded in the returned
    Category as the dataset name, and `mask_threshold` in it and in every test sample (see
    Sample: 0.0 counts every non-zero mask pixel).

    Raises DatasetError for a missing root, category, split folder or mask, a split without
    images, a mask whose size differs from its image, and any image or mask that PIL cannot
    read. Every file is read once to check it; pixel data is not decoded.
    """
    root = Path(root).expanduser().absolute()
    _check_root(root)
    category_dir = _find_category(root, category)

    train = _load_train(category_dir)
    test = _load_test(category_dir, _load_defect)
    test = [replace(sample, mask_threshold=mask_threshold) for sample in test]

    return Category(dataset=dataset, root=root, name=category, train=tuple(train), test=tuple(test),
                    mask_threshold=mask_threshold)


def summarise(category: Category) -> list[tuple[str, str, int, int]]:
    """Count images and masks per split and defect type as (split, defect, images, masks) rows.

    Rows are ordered train first, then test/good, then the defect types by name.
    """
    rows = [("train", GOOD, len(category.train), _count_masks(category.train))]

    test_by_defect: dict[str, list[Sample]] = {}
    for sample in category.test:
        test_by_defect.setdefault(sample.defect, []).append(sample)

    defects = sorted(test_by_defect, key=lambda defect: (defect != GOOD, defect))
    for defect in defects:
        samples = test_by_defect[defect]
        rows.append(("test", defect, len(samples), _count_masks(samples)))

    return rows


def count_image_sizes(category: Category) -> dict[tuple[int, int], int]:
    """Count the (width, height) sizes of all training and test images, read from file headers."""
    sizes = Counter(read_image_size(sample.path, verify=False) for sample in category.train + category.test)
    return dict(sorted(sizes.items()))


def _check_root(root: Path) -> None:
    """Raise DatasetError unless `root` is an existing folder."""
    if not root.exists():
        raise DatasetError(
            f"dataset root not found: {root} (pass --root with the folder that contains the category folders)"
        )

    if not root.is_dir():
        raise DatasetError(
            f"dataset root is not a folder: {root} (pass --root with the folder that contains the category folders)"
        )


def _find_category(root: Path, category: str) -> Path:
    """Return the folder of `category` inside `root`, or raise DatasetError with the available names."""
    if not category or category in (".", "..") or "/" in category or "\\" in category or category.startswith("."):
        raise DatasetError(
            f"invalid category name {category!r}: expected the name of a folder inside {root}, such as 'bottle'"
        )

    category_dir = root / category
    if category_dir.is_dir():
        return category_dir

    available = list_categories(root)
    message = f"category {category!r} not found in {root}"

    matches = difflib.get_close_matches(category, available, n=1, cutoff=0.6)
    if matches:
        message += f"; did you mean {matches[0]!r}?"

    if available:
        separator = " " if matches else "; "
        message += f"{separator}available: {', '.join(available)}"
    elif (root / "train" / GOOD).is_dir():
        message += f"; {root} contains train/good itself, so pass its parent folder as --root"
    else:
        message += "; no folder in it contains train/good (pass --root with the folder that contains the category folders)"

    raise DatasetError(message)


def _load_train(category_dir: Path) -> list[Sample]:
    """Validate train/good and return its images as normal samples."""
    train_dir = category_dir / "train" / GOOD
    if not train_dir.is_dir():
        raise DatasetError(
            f"training folder not found: {train_dir} (an MVTec AD category needs train/good with normal images)"
        )

    images = list_images(train_dir)
    if not images:
        raise DatasetError(
            f"no image files in training folder {train_dir} (expected normal images with extension {_EXTENSION_LIST})"
        )

    for image in images:
        read_image_size(image)

    return [Sample(path=image, label=0, defect=GOOD) for image in images]


def _load_test(category_dir: Path, load_defect: Callable[[Path, Path], list[Sample]]) -> list[Sample]:
    """Validate test/ and return normal test samples first, then defects by name.

    `load_defect(category_dir, defect_dir)` validates one defect folder with its masks.
    """
    test_dir = category_dir / "test"
    if not test_dir.is_dir():
        raise DatasetError(
            f"test folder not found: {test_dir} (an MVTec AD category needs test/good and one folder per defect type)"
        )

    good_dir = test_dir / GOOD
    good_images = list_images(good_dir) if good_dir.is_dir() else []
    for image in good_images:
        read_image_size(image)

    samples = [Sample(path=image, label=0, defect=GOOD) for image in good_images]

    defect_dirs = sorted(
        (child for child in test_dir.iterdir() if child.is_dir() and not child.name.startswith(".") and child.name != GOOD),
        key=lambda child: child.name,
    )
    for defect_dir in defect_dirs:
        samples.extend(load_defect(category_dir, defect_dir))

    if not samples:
        raise DatasetError(
            f"no test images in {test_dir} (add test/good and test/<defect> folders with images with "
            f"extension {_EXTENSION_LIST})"
        )
    if not good_images or len(samples) == len(good_images):
        # Runs still work: AUROC and AUPRO are stored as undefined with the reason.
        missing = f"normal images in {good_dir}" if not good_images else f"anomalous images in {test_dir}/<defect>"
        logger.warning("no %s: image AUROC and AUPRO will be undefined", missing)

    return samples


def _load_defect(category_dir: Path, defect_dir: Path) -> list[Sample]:
    """Validate the images of one defect type and their masks. An empty folder yields no samples."""
    defect = defect_dir.name
    mask_dir = category_dir / "ground_truth" / defect
    images = list_images(defect_dir)

    mask_paths = [mask_dir / f"{image.stem}_mask.png" for image in images]
    missing = [mask for mask in mask_paths if not mask.is_file()]
    if missing:
        raise DatasetError(
            f"mask not found: {missing[0]} ({len(missing)} of {len(images)} masks missing for defect {defect!r}, "
            "and each test/<defect>/<stem>.<ext> needs ground_truth/<defect>/<stem>_mask.png)"
        )

    samples = []
    for image, mask in zip(images, mask_paths):
        image_size = read_image_size(image)
        mask_size = read_image_size(mask, kind="mask")
        if mask_size != image_size:
            raise DatasetError(
                f"mask size {_format_size(mask_size)} differs from image size {_format_size(image_size)}: {mask} "
                f"(resize or replace the mask so that it matches {image})"
            )

        samples.append(Sample(path=image, label=1, defect=defect, mask_path=mask))

    return samples


def _count_masks(samples: list[Sample] | tuple[Sample, ...]) -> int:
    return sum(1 for sample in samples if sample.mask_path is not None)


def _format_size(size: tuple[int, int]) -> str:
    """Format (width, height) as WxH."""
    return f"{size[0]}x{size[1]}"
