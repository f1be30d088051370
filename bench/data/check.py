"""The validation report of `bench data check`: counts, image and mask statistics, problems.

A problem is an error when a run would fail or its metrics would be wrong: an unreadable file,
a missing required mask, a threshold that erases a mask. It is a warning when the data is
usable but probably not what the user meant: an empty mask, an orphan mask, duplicate images.
"""

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data import load_layout
from bench.data.base import Category, Sample
from bench.data.images import list_images, read_mask_values
from bench.data.masks import describe_erased_mask, describe_missing_masks
from bench.data.settings import SETTINGS_FILE_NAME
from bench.errors import DatasetError

ERROR = "error"
WARNING = "warning"

# Up to this many distinct mask values are listed one by one; more are shown as a range.
MAX_LISTED_MASK_VALUES = 8


@dataclass(frozen=True)
class Problem:
    """One finding of the check; `severity` is ERROR or WARNING."""

    severity: str
    message: str


@dataclass(frozen=True)
class MaskValues:
    """Pixel values over all masks of a category.

    `distinct` lists the values when there are at most MAX_LISTED_MASK_VALUES of them, else it
    is None. `soft` counts masks with values between 0 and the full scale, and `empty` those
    without any non-zero pixel.
    """

    masks: int
    minimum: float
    maximum: float
    distinct: tuple[float, ...] | None
    full_scales: tuple[float, ...]
    soft: int
    empty: int


@dataclass
class CategoryReport:
    """Everything `bench data check` reports for one category.

    `category` is None when the category failed to load, and `problems` then contains the error.
    `images` counts (PIL mode, file format) pairs, such as ("RGB", "PNG").
    """

    name: str
    category: Category | None = None
    sizes: dict[tuple[int, int], int] = field(default_factory=dict)
    images: dict[tuple[str, str], int] = field(default_factory=dict)
    mask_values: MaskValues | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == WARNING]


def check_category(dataset: str, root: Path, name: str, mask_threshold: float | None = None) -> CategoryReport:
    """Load one category and collect its statistics and problems; loading errors become problems."""
    report = CategoryReport(name=name)
    try:
        category = load_layout(dataset, root, name, mask_threshold)
    except DatasetError as exc:
        report.problems.append(Problem(ERROR, str(exc)))
        return report

    report.category = category
    _read_image_headers(category, report)
    _check_masks(category, report)
    _check_test_labels(category, report)
    _check_orphan_masks(category, report)
    _check_duplicates(category, report)
    return report


def describe_mask_values(values: MaskValues, threshold: float) -> str:
    """Describe mask values in one line, such as "{0, 255} in 63 masks"."""
    if values.distinct is not None:
        shown = "{" + ", ".join(f"{value:g}" for value in values.distinct) + "}"
    else:
        shown = f"{values.minimum:g}..{values.maximum:g}"

    text = f"{shown} in {values.masks} masks"
    if values.soft:
        cutoffs = ", ".join(f"{threshold * scale:g}" for scale in values.full_scales)
        text += f", {values.soft} soft; anomalous above {cutoffs} (mask threshold {threshold:g})"
    if values.empty:
        text += f", {values.empty} all zero"
    return text


def _read_image_headers(category: Category, report: CategoryReport) -> None:
    """Count image sizes and (mode, format) pairs from the file headers."""
    sizes: Counter[tuple[int, int]] = Counter()
    images: Counter[tuple[str, str]] = Counter()

    for sample in category.train + category.test:
        with Image.open(sample.path) as image:
            sizes[image.size] += 1
            images[(image.mode, image.format or "unknown")] += 1

    report.sizes = dict(sorted(sizes.items()))
    report.images = dict(sorted(images.items()))


def _check_masks(category: Category, report: CategoryReport) -> None:
    """Decode every mask: value ranges, masks without defect pixels and masks the threshold erases."""
    masked = [sample for sample in category.test if sample.mask_path is not None]
    if not masked:
        return

    distinct: set[float] = set()
    scales: set[float] = set()
    minimum, maximum = np.inf, -np.inf
    soft = 0
    empty: list[Sample] = []
    erased: list[tuple[Sample, str]] = []

    for sample in masked:
        values, full_scale = read_mask_values(sample.mask_path)
        scales.add(full_scale)
        minimum = min(minimum, float(values.min()))
        maximum = max(maximum, float(values.max()))

        if len(distinct) <= MAX_LISTED_MASK_VALUES:
            distinct.update(float(value) for value in np.unique(values)[: MAX_LISTED_MASK_VALUES + 1])
        if ((values != 0) & (values != full_scale)).any():
            soft += 1

        if not values.any():
            empty.append(sample)
            continue

        problem = describe_erased_mask(values, full_scale, sample.mask_threshold)
        if problem is not None:
            erased.append((sample, problem))

    listed = tuple(sorted(distinct)) if len(distinct) <= MAX_LISTED_MASK_VALUES else None
    report.mask_values = MaskValues(masks=len(masked), minimum=minimum, maximum=maximum, distinct=listed,
                                    full_scales=tuple(sorted(scales)), soft=soft, empty=len(empty))

    if erased:
        sample, problem = erased[0]
        report.problems.append(Problem(
            ERROR,
            f"masks that the mask threshold empties: {len(erased)}, the first {sample.mask_path} "
            f"{problem} (for masks that store 0/1 or label values, set mask_threshold = 0 in "
            f"{category.root / SETTINGS_FILE_NAME}, or try --mask-threshold 0)",
        ))

    if empty:
        report.problems.append(Problem(
            WARNING,
            f"anomalous images with an all-zero mask: {len(empty)}, the first {empty[0].mask_path} "
            "(pixel metrics count every pixel of these images as normal)",
        ))


def _check_test_labels(category: Category, report: CategoryReport) -> None:
    """Warn about a test split with one label and about anomalous images without masks."""
    labels = {sample.label for sample in category.test}
    if labels == {1}:
        report.problems.append(Problem(
            WARNING, "no normal test images in test/good: image AUROC, F1 and AUPRO will be NULL"))
    if labels == {0}:
        report.problems.append(Problem(
            WARNING, "no anomalous test images in test/<defect>: image AUROC and F1 and all pixel metrics will be NULL"))

    reason = describe_missing_masks(category.test)
    if reason is not None:
        report.problems.append(Problem(WARNING, f"{reason.removeprefix('no pixel ground truth: ')}: pixel metrics will be NULL"))


def _check_orphan_masks(category: Category, report: CategoryReport) -> None:
    """Warn about image files in ground_truth/ that are the mask of no test image."""
    ground_truth = category.root / category.name / "ground_truth"
    if not ground_truth.is_dir():
        return

    used = {sample.mask_path for sample in category.test if sample.mask_path is not None}
    orphans = [
        mask
        for folder in sorted(ground_truth.iterdir())
        if folder.is_dir() and not folder.name.startswith(".")
        for mask in list_images(folder)
        if mask not in used
    ]
    if orphans:
        names = "<stem>_mask.<ext> or <stem>.<ext>" if category.dataset == "folder" else "<stem>_mask.png"
        report.problems.append(Problem(
            WARNING,
            f"files in {ground_truth} that are the mask of no test image: {len(orphans)}, the first {orphans[0]} "
            f"(name each mask {names} after its image test/<defect>/<stem>.<ext>, or remove it)",
        ))


def _check_duplicates(category: Category, report: CategoryReport) -> None:
    """Warn about test images that are byte-identical to a training image, and about copies within a split."""
    by_digest: dict[str, list[Sample]] = {}
    for sample in category.train + category.test:
        with sample.path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        by_digest.setdefault(digest, []).append(sample)

    train_paths = {sample.path for sample in category.train}
    leaked: list[tuple[Sample, Sample]] = []
    copies: list[tuple[Sample, Sample]] = []
    for samples in by_digest.values():
        train = [sample for sample in samples if sample.path in train_paths]
        test = [sample for sample in samples if sample.path not in train_paths]
        if train:
            leaked += [(sample, train[0]) for sample in test]
        for split in (train, test):
            copies += [(sample, split[0]) for sample in split[1:]]

    if leaked:
        image, original = leaked[0]
        report.problems.append(Problem(
            WARNING,
            f"test images byte-identical to a training image: {len(leaked)}, the first {image.path} and "
            f"{original.path} (their scores are optimistic; remove one copy)",
        ))

    if copies:
        image, original = copies[0]
        report.problems.append(Problem(
            WARNING,
            f"images byte-identical to another image of the same split: {len(copies)}, the first {image.path} and "
            f"{original.path} (remove the copies)",
        ))
