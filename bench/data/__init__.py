"""Datasets: readers that validate a category before any run starts.

- mvtec: MVTec AD and any copy in its layout; every anomalous image needs a mask.
- visa: VisA after `bench data prepare visa`; `--root` is the prepared folder or the raw root.
- folder: users' own images in the MVTec AD layout, with optional and soft masks.

A `bench-dataset.toml` file in the folder that contains the categories may set
`mask_threshold` and category groups (see bench.data.settings).
"""

from pathlib import Path

from bench.data.base import Category, Sample
from bench.errors import DatasetError

DATASETS = ("mvtec", "visa", "folder")


def load_dataset(dataset: str, root: Path, category: str, mask_threshold: float | None = None) -> Category:
    """Load and validate one category of a dataset; every problem raises DatasetError.

    The mask threshold (see Sample) is `mask_threshold` when given, else the one in the
    dataset's `bench-dataset.toml`, else 0.5 for the folder dataset and 0 for MVTec AD and
    VisA. With a threshold above 0 every mask is decoded once to check that the threshold
    leaves each mask that has non-zero pixels with at least one anomalous pixel.
    """
    from bench.data.masks import verify_mask_threshold

    loaded = load_layout(dataset, root, category, mask_threshold)
    verify_mask_threshold(loaded)
    return loaded


def load_layout(dataset: str, root: Path, category: str, mask_threshold: float | None = None) -> Category:
    """Load one category as `load_dataset` does, but check only file headers, never mask pixels."""
    _check_dataset(dataset)
    root = Path(root).expanduser()

    if dataset == "visa":
        from bench.data.visa import load_visa, resolve_prepared_root

        prepared = resolve_prepared_root(root)
        return load_visa(prepared, category, resolve_mask_threshold(dataset, prepared, mask_threshold))

    threshold = resolve_mask_threshold(dataset, root, mask_threshold)
    if dataset == "folder":
        from bench.data.folder import load_folder

        return load_folder(root, category, threshold)

    from bench.data.mvtec import load_mvtec

    return load_mvtec(root, category, dataset=dataset, mask_threshold=threshold)


def list_dataset_categories(dataset: str, root: Path) -> list[str]:
    """Return the category names found under `root` for `dataset`."""
    _check_dataset(dataset)

    if dataset == "visa":
        from bench.data.visa import list_visa_categories

        return list_visa_categories(root)

    from bench.data.mvtec import list_categories

    return list_categories(root)


def resolve_mask_threshold(dataset: str, root: Path, mask_threshold: float | None = None) -> float:
    """Return `mask_threshold`, else the settings file's, else the dataset's default."""
    from bench.data.folder import DEFAULT_MASK_THRESHOLD
    from bench.data.settings import load_settings, parse_mask_threshold

    if mask_threshold is not None:
        return parse_mask_threshold(mask_threshold, "mask threshold")

    settings = load_settings(root)
    if settings.mask_threshold is not None:
        return settings.mask_threshold

    return DEFAULT_MASK_THRESHOLD if dataset == "folder" else 0.0


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset '{dataset}'; supported: {', '.join(DATASETS)}")


__all__ = [
    "Category",
    "Sample",
    "DATASETS",
    "load_dataset",
    "load_layout",
    "list_dataset_categories",
    "resolve_mask_threshold",
]
