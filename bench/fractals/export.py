"""Write a recipe's images to disk as an ImageFolder tree, in parallel and resumably.

Layout: out/<class:05d>/<index:05d>.png with index counted within the class, plus out/manifest.json
(recipe, seed, sizes, render settings, SHA-256 of the systems file). Multi-instance exports also
write out/<class:05d>/labels.json mapping each image name to the sorted classes drawn in it.

Every file is written under a temporary name and moved into place with os.replace, so a killed
export leaves no truncated PNG under a final name. A rerun removes the temporary files, keeps the
PNGs that open, and renders only the missing ones.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bench.errors import ConfigError
from bench.fractals.recipes import FractalImages, RecipeSpec
from bench.fractals.systems import file_sha256, load_systems

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LABELS = "labels.json"
TEMPORARY_SUFFIX = ".partial"
# Fast zlib level: a 256 px image then encodes in about as long as it takes to render.
PNG_COMPRESS_LEVEL = 1
# Images per worker task; whole classes are kept together so a class's labels.json is written once.
TASK_IMAGES = 256


@dataclass(frozen=True)
class ExportResult:
    """Counts of an export run: images rendered now and images kept from an earlier run."""

    written: int
    kept: int
    total: int


def image_path(out: Path, label: int, within: int) -> Path:
    """Return the path of image `within` of class `label` under `out`."""
    return out / f"{label:05d}" / f"{within:05d}.png"


def write_atomically(path: Path, write) -> None:
    """Call write(temporary_path), then move the temporary file onto `path`."""
    temporary = path.with_name("." + path.name + TEMPORARY_SUFFIX)
    write(temporary)
    os.replace(temporary, path)


def is_valid_png(path: Path) -> bool:
    """Return whether `path` is a complete, readable PNG."""
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def remove_temporary_files(out: Path) -> int:
    """Delete temporary files left by a killed export; returns how many were removed."""
    removed = 0
    for path in out.rglob("." + "*" + TEMPORARY_SUFFIX):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def build_manifest(spec: RecipeSpec, systems_path: Path, systems_hash: str) -> dict:
    """Return the manifest that identifies an export's dataset."""
    return {
        "recipe": spec.name,
        "seed": spec.seed,
        "classes": spec.classes,
        "per_class": spec.per_class,
        "images": len(spec),
        "size": spec.render.size,
        "augment": spec.augment,
        "objects": list(spec.objects),
        "object_size": list(spec.object_size),
        "render": spec.render.to_dict(),
        "systems_file": str(systems_path),
        "systems_sha256": systems_hash,
        "layout": "<class:05d>/<index within class:05d>.png",
    }


def _check_manifest(out: Path, manifest: dict) -> None:
    """Raise ConfigError when out/ contains an export of a different dataset."""
    path = out / MANIFEST
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    keys = [key for key in manifest if key not in ("systems_file", "complete")]
    changed = [key for key in keys if previous.get(key) != manifest[key]]
    if changed:
        raise ConfigError(
            f"output folder {str(out)!r} already contains an export of another dataset (different "
            f"{', '.join(changed)}): choose another --out or delete the folder"
        )


def _write_manifest(out: Path, manifest: dict, complete: bool) -> None:
    data = dict(manifest, complete=complete)
    write_atomically(out / MANIFEST, lambda temporary: temporary.write_text(json.dumps(data, indent=2) + "\n"))


# Per-process state of the worker pool, set by _init_worker.
_images: FractalImages | None = None
_out: Path | None = None


def _init_worker(systems_path: str, spec: RecipeSpec, out: str) -> None:
    global _images, _out
    _images = FractalImages(load_systems(systems_path), spec)
    _out = Path(out)


def _export_classes(labels: range) -> tuple[int, int]:
    """Render the missing images of the given classes; returns (written, kept)."""
    images, out = _images, _out
    assert images is not None and out is not None
    spec = images.spec
    written = kept = 0
    for label in labels:
        folder = out / f"{label:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        drawn: dict[str, list[int]] = {}
        for within in range(spec.per_class):
            index = label * spec.per_class + within
            path = image_path(out, label, within)
            if is_valid_png(path):
                kept += 1
                if spec.multi_label:
                    # The labels of a kept image are recomputed, which costs one render.
                    drawn[path.name] = images.target(index)
                continue
            image, classes = images.render(index)
            write_atomically(
                path,
                lambda temporary: Image.fromarray(image).save(
                    temporary, format="PNG", compress_level=PNG_COMPRESS_LEVEL
                ),
            )
            drawn[path.name] = sorted(set(classes))
            written += 1
        if spec.multi_label:
            text = json.dumps(drawn, sort_keys=True) + "\n"
            write_atomically(folder / LABELS, lambda temporary: temporary.write_text(text))
    return written, kept


def export_images(
    systems_path: str | Path,
    spec: RecipeSpec,
    out: str | Path,
    workers: int = 1,
    progress=None,
) -> ExportResult:
    """Write every image of `spec` under `out`, resuming an interrupted export of the same dataset.

    `workers` processes render whole classes in parallel. `progress`, when given, is called with
    the number of images finished (written or kept) after each task. Raises ConfigError when `out`
    contains another dataset's export or `workers` is below 1.
    """
    if workers < 1:
        raise ConfigError(f"invalid worker count {workers}: use at least 1")
    systems_path = Path(systems_path)
    load_systems(systems_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(spec, systems_path, file_sha256(systems_path))
    _check_manifest(out, manifest)
    removed = remove_temporary_files(out)
    if removed:
        logger.info("removed %d temporary files of an interrupted export in %s", removed, out)
    _write_manifest(out, manifest, complete=False)

    classes_per_task = max(1, TASK_IMAGES // spec.per_class)
    tasks = [range(start, min(start + classes_per_task, spec.classes)) for start in range(0, spec.classes, classes_per_task)]
    written = kept = 0
    logger.info("exporting %d images of recipe %s to %s with %d workers", len(spec), spec.name, out, workers)
    if workers == 1:
        _init_worker(str(systems_path), spec, str(out))
        results = map(_export_classes, tasks)
        for task_written, task_kept in results:
            written += task_written
            kept += task_kept
            if progress is not None:
                progress(written + kept)
    else:
        # fork (where available) reuses the parent's compiled kernels and needs no main-module guard.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(
            workers, initializer=_init_worker, initargs=(str(systems_path), spec, str(out))
        ) as pool:
            for task_written, task_kept in pool.imap_unordered(_export_classes, tasks):
                written += task_written
                kept += task_kept
                if progress is not None:
                    progress(written + kept)

    _write_manifest(out, manifest, complete=True)
    logger.info("export finished: %d images written, %d kept", written, kept)
    return ExportResult(written=written, kept=kept, total=len(spec))
