"""Category groups for the spider chart, from `bench.data.groups` or a built-in copy.

The copy is used only when `bench.data.groups` cannot be imported, so reports keep working in a
tree without it.
"""

import logging
from pathlib import Path

from bench.errors import BenchError

logger = logging.getLogger(__name__)

# The study's groups: MVTec AD textures and objects; VisA printed circuit boards, objects with
# several instances per image and objects with one.
FALLBACK_GROUPS: dict[str, dict[str, list[str]]] = {
    "mvtec": {
        "textures": ["carpet", "grid", "leather", "tile", "wood"],
        "objects": ["bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush",
                    "transistor", "zipper"],
    },
    "visa": {
        "pcb": ["pcb1", "pcb2", "pcb3", "pcb4"],
        "multi-instance": ["candle", "capsules", "macaroni1", "macaroni2"],
        "single-instance": ["cashew", "chewinggum", "fryum", "pipe_fryum"],
    },
}
OTHER_GROUP = "other"


def category_groups(dataset: str, root: Path | None = None) -> dict[str, list[str]]:
    """Return {group: categories} for `dataset`; an unknown dataset has no groups."""
    try:
        from bench.data.groups import category_groups as data_groups
    except ImportError:
        logger.info("bench.data.groups not available; using the built-in category groups")
        return {name: list(members) for name, members in FALLBACK_GROUPS.get(dataset, {}).items()}

    if root is not None:
        try:
            return data_groups(dataset, root)
        except BenchError as error:
            logger.warning("cannot read the category groups of %s at %s (%s); using the built-in groups",
                           dataset, root, error)
    try:
        return data_groups(dataset)
    except BenchError as error:
        logger.warning("no category groups for %s: %s", dataset, error)
        return {}


def assign_groups(dataset: str, categories: list[str], root: Path | None = None) -> dict[str, list[str]]:
    """Split `categories` into the dataset's groups; categories no group lists go to "other".

    Groups without any of `categories` are left out.
    """
    groups = category_groups(dataset, root)
    assigned = {name: [category for category in members if category in categories]
                for name, members in groups.items()}
    assigned = {name: members for name, members in assigned.items() if members}
    listed = {category for members in assigned.values() for category in members}
    other = sorted(set(categories) - listed)
    if other:
        assigned[OTHER_GROUP] = other
    return assigned
