"""Datasets: readers that validate a category before any run starts."""

from pathlib import Path

from bench.data.base import Category, Sample
from bench.errors import DatasetError

DATASETS = ("mvtec",)


def load_dataset(dataset: str, root: Path, category: str) -> Category:
    """Load and validate one category of a dataset; every problem raises DatasetError."""
    if dataset == "mvtec":
        from bench.data.mvtec import load_mvtec

        return load_mvtec(root, category, dataset=dataset)
    raise DatasetError(f"unknown dataset '{dataset}'; supported: {', '.join(DATASETS)}")


def list_dataset_categories(dataset: str, root: Path) -> list[str]:
    """Return the category names found under `root` for `dataset`."""
    if dataset == "mvtec":
        from bench.data.mvtec import list_categories

        return list_categories(root)
    raise DatasetError(f"unknown dataset '{dataset}'; supported: {', '.join(DATASETS)}")


__all__ = ["Category", "Sample", "DATASETS", "load_dataset", "list_dataset_categories"]
