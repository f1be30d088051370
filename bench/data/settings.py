"""Per-dataset settings read from `bench-dataset.toml` in the folder that contains the categories.

    # Mask pixels above this fraction of full scale are anomalous; 0 counts every non-zero pixel.
    mask_threshold = 0.5

    # Category groups for reports; these replace the built-in groups of the dataset.
    [groups]
    metal = ["bolt", "washer"]
    plastic = ["cap"]

Both keys are optional, and any other key raises DatasetError, so a typo never goes unnoticed.
"""

import tomllib
from dataclasses import dataclass
from pathlib import Path

from bench.errors import DatasetError

SETTINGS_FILE_NAME = "bench-dataset.toml"

_KEYS = ("mask_threshold", "groups")


@dataclass(frozen=True)
class DatasetSettings:
    """Validated contents of a settings file; None marks a key the file does not set."""

    path: Path | None = None
    mask_threshold: float | None = None
    groups: dict[str, list[str]] | None = None


def load_settings(root: Path) -> DatasetSettings:
    """Read `<root>/bench-dataset.toml`, or return empty settings when the file does not exist."""
    path = Path(root).expanduser() / SETTINGS_FILE_NAME
    if path.exists() and not path.is_file():
        raise DatasetError(f"settings path {path} is not a file: remove it or replace it with a TOML file")
    if not path.is_file():
        return DatasetSettings()
    return read_settings_file(path)


def read_settings_file(path: Path) -> DatasetSettings:
    """Parse and validate one settings file.

    Raises DatasetError, naming the file, for a missing or unparsable file, an unknown key, a
    `mask_threshold` outside [0, 1), and `groups` that are not lists of category names or that
    put one category in two groups.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"settings file not found: {path} (pass the path of an existing TOML file)")

    try:
        with path.open("rb") as file:
            values = tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise DatasetError(f"invalid TOML in settings file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"invalid TOML in settings file {path}: it is not UTF-8 text ({exc.reason} at byte "
                           f"{exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read settings file {path}: {exc.strerror or exc}") from exc

    unknown = sorted(set(values) - set(_KEYS))
    if unknown:
        raise DatasetError(
            f"unknown key {unknown[0]!r} in settings file {path} (allowed keys: {', '.join(_KEYS)})"
        )

    threshold = values.get("mask_threshold")
    if threshold is not None:
        threshold = parse_mask_threshold(threshold, f"mask_threshold in {path}")

    groups = values.get("groups")
    if groups is not None:
        groups = _parse_groups(groups, path)

    return DatasetSettings(path=path, mask_threshold=threshold, groups=groups)


def parse_mask_threshold(value: object, source: str) -> float:
    """Return `value` as a mask threshold in [0, 1), or raise DatasetError naming `source`."""
    # bool is an int subclass, and `true` is never meant as a threshold.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise DatasetError(
            f"invalid {source}: {value!r} (expected a number >= 0 and < 1, a fraction of the mask's full "
            "scale; 0 counts every non-zero pixel, 0.5 suits soft masks)"
        )
    return float(value)


def _parse_groups(groups: object, path: Path) -> dict[str, list[str]]:
    """Validate the `[groups]` table: names map to lists of distinct category names."""
    if not isinstance(groups, dict):
        raise DatasetError(
            f"invalid groups in settings file {path}: expected a table such as "
            '[groups] with lines like metal = ["bolt", "washer"]'
        )

    owner: dict[str, str] = {}
    parsed: dict[str, list[str]] = {}
    for name, categories in groups.items():
        valid = (
            isinstance(categories, list)
            and categories
            and all(isinstance(category, str) and category for category in categories)
        )
        if not valid:
            raise DatasetError(
                f"invalid group {name!r} in settings file {path}: expected a non-empty list of category "
                f'names such as ["bolt", "washer"], got {categories!r}'
            )

        for category in categories:
            if category in owner:
                raise DatasetError(
                    f"category {category!r} is in groups {owner[category]!r} and {name!r} in settings file "
                    f"{path} (put each category in one group, so that group means count it once)"
                )
            owner[category] = name

        parsed[name] = list(categories)

    return parsed
