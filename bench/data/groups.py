"""Category groups that reports average over, such as MVTec AD's textures and objects."""

import logging
from pathlib import Path

from bench.data.settings import SETTINGS_FILE_NAME, load_settings, read_settings_file
from bench.errors import DatasetError

logger = logging.getLogger(__name__)

# MVTec AD splits its categories into textures and objects. VisA has printed circuit boards
# (complex structure), objects with several instances per image and objects with one.
BUILTIN_GROUPS: dict[str, dict[str, list[str]]] = {
    "mvtec": {
        "textures": ["carpet", "grid", "leather", "tile", "wood"],
        "objects": [
            "bottle", "cable", "capsule", "hazelnut", "metal_nut",
            "pill", "screw", "toothbrush", "transistor", "zipper",
        ],
    },
    "visa": {
        "pcb": ["pcb1", "pcb2", "pcb3", "pcb4"],
        "multi-instance": ["candle", "capsules", "macaroni1", "macaroni2"],
        "single-instance": ["cashew", "chewinggum", "fryum", "pipe_fryum"],
    },
    "folder": {},
}


def category_groups(dataset: str, root: Path | None = None, path: Path | None = None) -> dict[str, list[str]]:
    """Return the category groups of a dataset as {group name: category names}.

    The `[groups]` table of the settings file at `path` comes first. Without `path`, the one
    in `<root>/bench-dataset.toml` is used, and for VisA also the one in the prepared folder
    that `root` resolves to. Otherwise the built-in groups of `dataset` apply. Groups from a
    file replace the built-in ones entirely. A category that no group lists belongs to no group, and the folder dataset
    has no built-in groups. Raises DatasetError for an unknown dataset, a `path` without a
    `[groups]` table and any invalid settings file.
    """
    if dataset not in BUILTIN_GROUPS:
        raise DatasetError(f"unknown dataset {dataset!r} (supported: {', '.join(BUILTIN_GROUPS)})")

    if path is not None:
        settings = read_settings_file(path)
        if settings.groups is None:
            raise DatasetError(
                f"no [groups] table in settings file {settings.path} "
                '(add one with lines like metal = ["bolt", "washer"])'
            )
        return _copy(settings.groups)

    if root is not None:
        for folder in _settings_folders(dataset, Path(root).expanduser()):
            settings = load_settings(folder)
            if settings.groups is not None:
                _warn_unknown_categories(dataset, folder, settings.groups)
                return _copy(settings.groups)

    return _copy(BUILTIN_GROUPS[dataset])


def _settings_folders(dataset: str, root: Path) -> list[Path]:
    """List the folders whose settings file may hold the groups of `root`."""
    folders = [root]
    if dataset == "visa":
        from bench.data.visa import find_prepared_root

        prepared = find_prepared_root(root)
        if prepared is not None and prepared != root:
            folders.append(prepared)
    return folders


def _warn_unknown_categories(dataset: str, root: Path, groups: dict[str, list[str]]) -> None:
    """Log group members that are not category folders of `root`: usually a typo."""
    from bench.data import list_dataset_categories

    try:
        present = set(list_dataset_categories(dataset, root))
    except DatasetError:
        return

    unknown = sorted({category for members in groups.values() for category in members} - present)
    if unknown:
        logger.warning(
            "groups in %s name categories that %s does not contain: %s",
            root / SETTINGS_FILE_NAME, root, ", ".join(unknown),
        )


def _copy(groups: dict[str, list[str]]) -> dict[str, list[str]]:
    """Copy the lists, so that a caller's change never alters the built-in groups."""
    return {name: list(members) for name, members in groups.items()}
