"""VisA: preparation of the raw release into the MVTec AD layout, and the reader of the result.

The raw release, as extracted:

    <root>/<object>/Data/Images/Normal/<name>.JPG
    <root>/<object>/Data/Images/Anomaly/<name>.JPG
    <root>/<object>/Data/Masks/Anomaly/<name>.png     label values: 0 background, k > 0 defect k
    <root>/split_csv/1cls.csv                          header object,split,label,image,mask

`prepare_visa` writes the images of the split file in the MVTec AD layout:

    <out>/<object>/train/good/<name>.JPG               copied byte for byte
    <out>/<object>/test/good/<name>.JPG
    <out>/<object>/test/bad/<name>.JPG
    <out>/<object>/ground_truth/bad/<stem>_mask.png    binarised: 255 where the label is > 0
    <out>/.bench-visa.json                             completion marker, written last

Masks are binarised as VisA's own preparation script does (amazon-science/spot-diff,
utils/prepare_data.py): every non-zero value of the decoded array becomes 255, so palette masks
count by index. Unlike that script, masks are named <stem>_mask.png, as the MVTec AD reader
expects.

`load_visa` reads a prepared folder with the MVTec AD reader and accepts it only with its
completion marker, so an interrupted preparation is never used by mistake.
"""

import csv
import difflib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from bench.data.base import Category
from bench.data.images import list_images, load_label_mask, read_image_size
from bench.data.mvtec import _check_root, list_categories, load_mvtec
from bench.errors import DatasetError

logger = logging.getLogger(__name__)

MARKER_NAME = ".bench-visa.json"
# Written when a preparation starts and removed when it has finished, so that the error for an
# interrupted one can give the exact command (root, out and split file) that finishes it.
PREPARING_NAME = ".bench-visa-preparing.json"
MARKER_FORMAT = "bench-visa-prepared"
MARKER_VERSION = 1

# Default output folder inside the raw root, the name anomalib uses for the same layout.
DEFAULT_OUT_NAME = "visa_pytorch"
DEFAULT_SPLIT_CSV = Path("split_csv") / "1cls.csv"

SPLIT_COLUMNS = ("object", "split", "label", "image", "mask")

# Prepared folders, in the order the counts are reported.
TRAIN_GOOD = "train/good"
TEST_GOOD = "test/good"
TEST_BAD = "test/bad"
MASKS_BAD = "ground_truth/bad"
FOLDERS = (TRAIN_GOOD, TEST_GOOD, TEST_BAD, MASKS_BAD)

# Rows per object of the VisA 1cls split (training normal, test normal, test anomalous) as
# released in amazon-science/spot-diff split_csv/1cls.csv: 8,659, 962 and 1,200 in total.
PUBLISHED_1CLS_COUNTS: dict[str, tuple[int, int, int]] = {
    "candle": (900, 100, 100),
    "capsules": (542, 60, 100),
    "cashew": (450, 50, 100),
    "chewinggum": (453, 50, 100),
    "fryum": (450, 50, 100),
    "macaroni1": (900, 100, 100),
    "macaroni2": (900, 100, 100),
    "pcb1": (904, 100, 100),
    "pcb2": (901, 100, 100),
    "pcb3": (905, 101, 100),
    "pcb4": (904, 101, 100),
    "pipe_fryum": (450, 50, 100),
}

_TEMPORARY_SUFFIX = ".tmp"

# Position of each image folder in the (training normal, test normal, test anomalous) counts.
_FOLDER_COLUMNS = {TRAIN_GOOD: 0, TEST_GOOD: 1, TEST_BAD: 2}


@dataclass(frozen=True)
class SplitRow:
    """One row of a VisA split file; `image` and `mask` are paths relative to the raw root."""

    line: int
    object: str
    split: str
    label: str
    image: str
    mask: str | None


@dataclass(frozen=True)
class _PlannedFile:
    """One output file: an image copy, or a binarised mask that must match `image_source` in size."""

    source: Path
    target: Path
    image_source: Path | None = None

    @property
    def is_mask(self) -> bool:
        return self.image_source is not None


@dataclass(frozen=True)
class VisaPreparation:
    """Outcome of `prepare_visa`.

    `counts` maps object → prepared folder (FOLDERS) → number of files. `written` and `skipped`
    count the files written now and those kept from an earlier preparation.
    `already_complete` is True when a completion marker was found and the counts matched, so
    nothing was written. `empty_masks` counts the masks written now that have no defect pixel.
    """

    out: Path
    split_csv: Path
    counts: dict[str, dict[str, int]]
    written: int
    skipped: int
    already_complete: bool
    empty_masks: int


def read_split_csv(path: Path) -> list[SplitRow]:
    """Read and validate a VisA split file, such as split_csv/1cls.csv.

    Raises DatasetError naming the file and line for a missing column, an unknown split or
    label, and an anomalous training image. It also raises for an anomalous image without mask,
    a normal image with one, a path that is absolute or leaves the root, and an image listed
    twice.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"VisA split file not found: {path} (pass --split-csv with the path of split_csv/1cls.csv "
            "from the VisA release)"
        )

    rows: list[SplitRow] = []
    first_line: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        missing = [column for column in SPLIT_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(
                f"invalid VisA split file {path}: missing column {missing[0]!r} "
                f"(expected the header {','.join(SPLIT_COLUMNS)})"
            )

        for record in reader:
            row = _parse_row(record, reader.line_num, path)
            if row.image in first_line:
                raise DatasetError(
                    f"invalid VisA split file {path}: image {row.image} is listed on lines "
                    f"{first_line[row.image]} and {row.line} (list each image once)"
                )
            first_line[row.image] = row.line
            rows.append(row)

    if not rows:
        raise DatasetError(f"invalid VisA split file {path}: no rows after the header")

    return rows


def count_split_rows(rows: list[SplitRow]) -> dict[str, tuple[int, int, int]]:
    """Count (training normal, test normal, test anomalous) rows per object, sorted by object."""
    counts: dict[str, list[int]] = {}
    for row in rows:
        counts.setdefault(row.object, [0, 0, 0])[_FOLDER_COLUMNS[_image_folder(row)]] += 1
    return {name: tuple(counts[name]) for name in sorted(counts)}


def prepare_visa(
    root: Path,
    out: Path | None = None,
    split_csv: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VisaPreparation:
    """Convert the raw VisA release under `root` into the MVTec AD layout under `out`.

    `out` defaults to `<root>/visa_pytorch` and `split_csv` to `<root>/split_csv/1cls.csv`.
    Every file is written to a hidden temporary name and then renamed, so a killed preparation
    leaves only complete files. A rerun keeps them, checking image copies by byte size and masks
    by their header, and writes the rest. The completion marker is written last, after the
    files in each prepared folder are checked against the split file by name.
    With a marker from the same split file, a rerun only repeats that check, and prepares again
    when it fails. `progress(done, total)` is called after each file.

    Raises DatasetError, before anything is written, for a missing root or split file, an
    invalid split file, and any listed image or mask that is not under `root`. During the
    preparation it raises DatasetError for an unreadable file and a mask whose size differs
    from its image, and at the end when a prepared folder contains other files than the split
    file lists.
    """
    root = Path(root).expanduser().absolute()
    _check_visa_root(root)
    split_csv = Path(split_csv).expanduser().absolute() if split_csv is not None else root / DEFAULT_SPLIT_CSV
    out = Path(out).expanduser().absolute() if out is not None else root / DEFAULT_OUT_NAME
    if out.exists() and not out.is_dir():
        raise DatasetError(f"VisA output path is not a folder: {out} (pass another --out)")

    rows = read_split_csv(split_csv)
    _warn_unpublished_counts(rows, split_csv)
    planned, expected = _plan(rows, root, out, split_csv)
    _check_sources(planned, root, split_csv)
    digest = _sha256(split_csv)

    marker = out / MARKER_NAME
    if marker.is_file():
        if _marker_matches(marker, digest) and not _compare(out, expected):
            return VisaPreparation(out, split_csv, _counts(expected), written=0, skipped=len(planned),
                                   already_complete=True, empty_masks=0)
        logger.warning("prepared VisA in %s does not match %s any more: preparing it again", out, split_csv)
        marker.unlink()
    out.mkdir(parents=True, exist_ok=True)
    preparing = {"root": str(root), "split_csv": str(split_csv)}
    (out / PREPARING_NAME).write_text(json.dumps(preparing, indent=2) + "\n")

    _remove_temporary_files(out, expected)

    written = skipped = empty_masks = 0
    for done, file in enumerate(planned, start=1):
        if _is_complete(file):
            skipped += 1
        else:
            empty_masks += _write(file)
            written += 1

        if progress is not None:
            progress(done, len(planned))

    problems = _compare(out, expected)
    if problems:
        name, problem = problems[0]
        more = f", and {len(problems) - 1} more folders differ" if len(problems) > 1 else ""
        raise DatasetError(
            f"VisA preparation check failed: {problem}{more} (remove {out / name} and run "
            f"`{_prepare_command(preparing, out)}` again)"
        )

    if empty_masks:
        logger.warning("%d VisA masks written now have no defect pixel", empty_masks)

    # Flush the files before the marker, so that a power loss cannot leave a marker on disk
    # that vouches for files that are not.
    if hasattr(os, "sync"):
        os.sync()
    _write_marker(marker, root, split_csv, digest, _counts(expected))
    (out / PREPARING_NAME).unlink(missing_ok=True)

    return VisaPreparation(out, split_csv, _counts(expected), written=written, skipped=skipped,
                           already_complete=False, empty_masks=empty_masks)


def find_prepared_root(root: Path) -> Path | None:
    """Return `root` or `<root>/visa_pytorch`, whichever contains a completion marker, or None."""
    root = Path(root).expanduser().absolute()
    for folder in (root, root / DEFAULT_OUT_NAME):
        if (folder / MARKER_NAME).is_file():
            return folder
    return None


def resolve_prepared_root(root: Path) -> Path:
    """Return the prepared VisA folder for `root` (the prepared folder or the raw root that contains it).

    Raises DatasetError, with the command to run, for a raw release that is not prepared, a
    preparation without completion marker (interrupted, or still running), and a folder that
    is neither.
    """
    root = Path(root).expanduser().absolute()
    _check_root(root)

    prepared = find_prepared_root(root)
    if prepared is not None:
        return prepared

    default_out = root / DEFAULT_OUT_NAME
    if default_out.is_dir():
        command = _interrupted_command(default_out) or f"bench data prepare visa --root {root}"
        raise _incomplete_preparation(default_out, command)

    command = _interrupted_command(root)
    if command is not None:
        raise _incomplete_preparation(root, command)

    if list_categories(root):
        raise DatasetError(
            f"{root} has category folders but no {MARKER_NAME}, which `bench data prepare visa` writes when it "
            "has finished: for another dataset in the MVTec AD layout pass --dataset mvtec or --dataset folder; "
            f"for VisA, finish the preparation with `bench data prepare visa --root <raw VisA folder> --out {root}`"
        )

    if _raw_objects(root):
        raise DatasetError(
            f"VisA in {root} is not prepared (run `bench data prepare visa --root {root}` first, "
            "which writes the MVTec AD layout to its visa_pytorch folder)"
        )

    raise DatasetError(
        f"no VisA found in {root}: expected a folder prepared by `bench data prepare visa` (with {MARKER_NAME}) "
        "or the raw release with <object>/Data/Images (pass --root with the VisA folder)"
    )


def list_visa_categories(root: Path) -> list[str]:
    """List the objects recorded in the completion marker of the prepared VisA folder for `root`."""
    prepared = resolve_prepared_root(root)
    return sorted(_read_marker(prepared / MARKER_NAME)["objects"])


def load_visa(root: Path, category: str, mask_threshold: float = 0.0) -> Category:
    """Load one object of a prepared VisA folder (or of the raw root that contains it).

    Raises DatasetError when the preparation is missing or incomplete, for an object that it
    does not contain, for every problem that `load_mvtec` finds, and when the image or mask
    counts differ from those that the completion marker records.
    """
    prepared = resolve_prepared_root(root)
    marker = _read_marker(prepared / MARKER_NAME)
    recorded = marker["objects"]

    if category not in recorded:
        message = f"object {category!r} not found in prepared VisA {prepared}"
        matches = difflib.get_close_matches(category, list(recorded), n=1, cutoff=0.6)
        if matches:
            message += f"; did you mean {matches[0]!r}?"
        raise DatasetError(f"{message} (available: {', '.join(sorted(recorded))})")

    # Counting before the MVTec AD reader runs turns a deleted file into a hint to prepare again.
    for folder in FOLDERS:
        directory = prepared / category / folder
        count = len(list_images(directory)) if directory.is_dir() else 0
        expected = recorded[category].get(folder)
        if count != expected:
            raise DatasetError(
                f"prepared VisA object {category!r} has {count} images in {folder}, but its preparation wrote "
                f"{expected} (run `{_prepare_command(marker, prepared)}` again to restore the missing files)"
            )

    return load_mvtec(prepared, category, dataset="visa", mask_threshold=mask_threshold)


def _parse_row(record: dict[str, str | None], line: int, path: Path) -> SplitRow:
    """Validate one split file record."""
    values = {column: (record.get(column) or "").strip() for column in SPLIT_COLUMNS}
    where = f"line {line} of VisA split file {path}"

    name = values["object"]
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise DatasetError(f"invalid object name {name!r} on {where} (expected a folder name such as 'candle')")

    if values["split"] not in ("train", "test"):
        raise DatasetError(f"invalid split {values['split']!r} on {where} (expected 'train' or 'test')")

    if values["label"] not in ("normal", "anomaly"):
        raise DatasetError(f"invalid label {values['label']!r} on {where} (expected 'normal' or 'anomaly')")

    if values["split"] == "train" and values["label"] == "anomaly":
        raise DatasetError(
            f"anomalous training image on {where} (the one-class setting trains on normal images only)"
        )

    if values["label"] == "anomaly" and not values["mask"]:
        raise DatasetError(f"anomalous image without mask on {where} (fill in the mask column)")

    if values["label"] == "normal" and values["mask"]:
        raise DatasetError(f"normal image with a mask on {where} (leave the mask column empty)")

    for column in ("image", "mask"):
        if values[column]:
            _check_relative(values[column], column, where)

    return SplitRow(line=line, object=name, split=values["split"], label=values["label"],
                    image=values["image"], mask=values["mask"] or None)


def _image_folder(row: SplitRow) -> str:
    """Return the prepared folder of a row's image: train/good, test/good or test/bad."""
    if row.split == "train":
        return TRAIN_GOOD
    if row.label == "normal":
        return TEST_GOOD
    return TEST_BAD


def _check_relative(text: str, column: str, where: str) -> None:
    """Raise DatasetError unless `text` is a relative path that stays inside the root."""
    relative = PurePosixPath(text)
    if not text or relative.is_absolute() or ".." in relative.parts or "\\" in text:
        raise DatasetError(
            f"invalid {column} path {text!r} on {where} (expected a path relative to the VisA root, "
            "such as candle/Data/Images/Normal/0000.JPG)"
        )


def _plan(rows: list[SplitRow], root: Path, out: Path, split_csv: Path
          ) -> tuple[list[_PlannedFile], dict[str, dict[str, set[str]]]]:
    """List the output files in split file order, with the file names each prepared folder must hold."""
    planned: list[_PlannedFile] = []
    expected: dict[str, dict[str, set[str]]] = {}
    owner: dict[Path, int] = {}

    for row in rows:
        names = expected.setdefault(row.object, {folder: set() for folder in FOLDERS})
        folder = _image_folder(row)
        image_source = root / row.image
        outputs = [(folder, _PlannedFile(image_source, out / row.object / folder / image_source.name))]
        if row.mask is not None:
            mask_name = f"{image_source.stem}_mask.png"
            outputs.append((MASKS_BAD, _PlannedFile(root / row.mask, out / row.object / MASKS_BAD / mask_name,
                                                    image_source=image_source)))

        for target_folder, file in outputs:
            if file.target in owner:
                raise DatasetError(
                    f"lines {owner[file.target]} and {row.line} of VisA split file {split_csv} both write "
                    f"{file.target} (give the images distinct file names)"
                )
            owner[file.target] = row.line
            names[target_folder].add(file.target.name)
            planned.append(file)

    return planned, expected


def _check_sources(planned: list[_PlannedFile], root: Path, split_csv: Path) -> None:
    """Raise DatasetError naming the first listed source file that does not exist."""
    missing = [file.source for file in planned if not file.source.is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(planned)} files that {split_csv} lists are missing under {root}, the first "
            f"{missing[0]} (extract the complete VisA release into {root}, or pass --root with the folder that "
            "contains the object folders)"
        )


def _is_complete(file: _PlannedFile) -> bool:
    """Check whether an earlier run already wrote `file`: equal byte size for images, a readable header for masks."""
    if not file.target.is_file():
        return False

    if not file.is_mask:
        return file.target.stat().st_size == file.source.stat().st_size

    try:
        read_image_size(file.target, kind="mask")
    except DatasetError:
        return False
    return True


def _write(file: _PlannedFile) -> int:
    """Write one output file through a temporary name; return 1 for a mask without defect pixels, else 0."""
    file.target.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.target.with_name(f".{file.target.name}{_TEMPORARY_SUFFIX}")

    if not file.is_mask:
        # Reading the header rejects a file that is not an image before it enters the dataset.
        read_image_size(file.source, verify=False)
        shutil.copyfile(file.source, temporary)
        os.replace(temporary, file.target)
        return 0

    mask = load_label_mask(file.source)
    image_width, image_height = read_image_size(file.image_source, verify=False)
    if mask.shape != (image_height, image_width):
        raise DatasetError(
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {image_width}x{image_height}: "
            f"{file.source} (replace the mask or the image {file.image_source} from the VisA release)"
        )

    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(temporary, format="PNG")
    os.replace(temporary, file.target)
    return 0 if mask.any() else 1


def _compare(out: Path, expected: dict[str, dict[str, set[str]]]) -> list[tuple[str, str]]:
    """Compare the image files in each prepared folder with the names the split file lists.

    Returns (object, description) for each folder that differs.
    """
    problems = []
    for name, folders in expected.items():
        for folder, names in folders.items():
            directory = out / name / folder
            found = {path.name for path in list_images(directory)} if directory.is_dir() else set()
            if found == names:
                continue

            problem = (
                f"object {name!r} has {len(found)} files in {folder}, the split file lists {len(names)}"
            )
            missing = sorted(names - found)
            extra = sorted(found - names)
            if missing:
                problem += f", missing {missing[0]}"
            if extra:
                problem += f", not listed {extra[0]}"
            problems.append((name, problem))

    return problems


def _counts(expected: dict[str, dict[str, set[str]]]) -> dict[str, dict[str, int]]:
    return {name: {folder: len(names) for folder, names in folders.items()} for name, folders in sorted(expected.items())}


def _remove_temporary_files(out: Path, expected: dict[str, dict[str, set[str]]]) -> None:
    """Delete temporary files that a killed preparation left in the prepared folders."""
    for name in expected:
        for folder in FOLDERS:
            directory = out / name / folder
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                if path.name.startswith(".") and path.name.endswith(_TEMPORARY_SUFFIX) and path.is_file():
                    path.unlink()


def _write_marker(marker: Path, root: Path, split_csv: Path, digest: str, counts: dict[str, dict[str, int]]) -> None:
    """Write the completion marker through a temporary name."""
    content = {
        "format": MARKER_FORMAT,
        "version": MARKER_VERSION,
        "root": str(root),
        "split_csv": str(split_csv),
        "split_sha256": digest,
        "objects": counts,
    }
    marker.parent.mkdir(parents=True, exist_ok=True)
    temporary = marker.with_name(f"{marker.name}{_TEMPORARY_SUFFIX}")
    temporary.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(temporary, marker)


def _read_marker(marker: Path) -> dict:
    """Read a completion marker, or raise DatasetError when it is unreadable or of another format."""
    try:
        content = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"invalid VisA completion marker {marker}: {exc} (run `bench data prepare visa` again)"
        ) from exc

    valid = (
        isinstance(content, dict)
        and content.get("format") == MARKER_FORMAT
        and content.get("version") == MARKER_VERSION
        and isinstance(content.get("objects"), dict)
    )
    if not valid:
        raise DatasetError(
            f"invalid VisA completion marker {marker}: not written by this version of bench "
            "(run `bench data prepare visa` again)"
        )
    return content


def _incomplete_preparation(prepared: Path, command: str) -> DatasetError:
    return DatasetError(f"VisA preparation in {prepared} is incomplete: {MARKER_NAME} is missing because it was "
                        f"interrupted or is still running (run `{command}` to finish it)")


def _interrupted_command(prepared: Path) -> str | None:
    """Return the command that finishes the interrupted preparation into `prepared`, or None if none started."""
    try:
        started = json.loads((prepared / PREPARING_NAME).read_text())
    except (OSError, ValueError):
        return None
    return _prepare_command(started, prepared) if isinstance(started, dict) else None


def _prepare_command(marker: dict, prepared: Path) -> str:
    """Return the `bench data prepare visa` command that wrote `prepared`, from its marker."""
    root = marker.get("root")
    if not isinstance(root, str):
        return "bench data prepare visa"

    command = f"bench data prepare visa --root {root}"
    if Path(root) / DEFAULT_OUT_NAME != prepared:
        command += f" --out {prepared}"
    if marker.get("split_csv") != str(Path(root) / DEFAULT_SPLIT_CSV):
        command += f" --split-csv {marker.get('split_csv')}"
    return command


def _marker_matches(marker: Path, digest: str) -> bool:
    """Check whether a marker is valid and was written for the split file with SHA-256 `digest`."""
    try:
        content = _read_marker(marker)
    except DatasetError as exc:
        logger.warning("%s", exc)
        return False
    return content.get("split_sha256") == digest


def _warn_unpublished_counts(rows: list[SplitRow], split_csv: Path) -> None:
    """Log objects whose row counts differ from the published 1cls split: a truncated or edited file."""
    for name, counts in count_split_rows(rows).items():
        published = PUBLISHED_1CLS_COUNTS.get(name)
        if published is not None and counts != published:
            logger.warning(
                "%s lists %d/%d/%d training normal/test normal/test anomalous images for %s, "
                "the published VisA 1cls split %d/%d/%d",
                split_csv, *counts, name, *published,
            )


def _check_visa_root(root: Path) -> None:
    """Raise DatasetError unless `root` is an existing folder."""
    if not root.is_dir():
        state = "not found" if not root.exists() else "not a folder"
        raise DatasetError(
            f"VisA root {state}: {root} (pass --root with the folder that contains split_csv and the object folders)"
        )


def _raw_objects(root: Path) -> list[str]:
    """List the sub-folders of `root` in the raw VisA layout (<object>/Data/Images)."""
    return sorted(
        child.name for child in root.iterdir()
        if not child.name.startswith(".") and (child / "Data" / "Images").is_dir()
    )


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
