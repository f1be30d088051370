"""Tests for VisA preparation and reading, on raw VisA-layout trees built from the real split file's rows."""

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.data import list_dataset_categories, load_dataset
from bench.data.cli import app
from bench.data.demo import write_demo_dataset
from bench.data.images import load_mask
from bench.data.visa import (
    MARKER_NAME,
    PREPARING_NAME,
    PUBLISHED_1CLS_COUNTS,
    SPLIT_COLUMNS,
    count_split_rows,
    prepare_visa,
    read_split_csv,
)
from bench.errors import DatasetError

REPOSITORY = Path(__file__).resolve().parents[1]

# Objects and rows per object of the small trees: 5 training, 2 normal and 3 anomalous test
# images each, so 20 images and 6 masks in all.
OBJECTS = ("candle", "pcb1")
ROWS_PER_OBJECT = {("train", "normal"): 5, ("test", "normal"): 2, ("test", "anomaly"): 3}
IMAGE_SIZE = (16, 16)


def _mask_labels(index: int) -> np.ndarray:
    """Label-value mask as VisA stores it: 0 background, 1 and 2 two defect instances."""
    labels = np.zeros(IMAGE_SIZE[::-1], dtype=np.uint8)
    labels[2:5, 3:7] = 1
    labels[8 + index % 3 : 11, 8:12] = 2
    return labels


def build_raw_visa(root: Path, split_csv: Path) -> list[dict[str, str]]:
    """Write a raw VisA tree with the first rows of each object in OBJECTS, and return the rows.

    The split file goes to root/split_csv/1cls.csv with the real header. Images are 16x16
    JPEGs with distinct content. Masks are label-value PNGs, in mode L or, for every second
    row, in mode P.
    """
    with split_csv.open(newline="") as file:
        real_rows = list(csv.DictReader(file))

    rows = []
    for name in OBJECTS:
        for (split, label), count in ROWS_PER_OBJECT.items():
            matching = [row for row in real_rows if (row["object"], row["split"], row["label"]) == (name, split, label)]
            rows += matching[:count]

    rng = np.random.default_rng(0)
    for index, row in enumerate(rows):
        image = root / row["image"]
        image.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(*IMAGE_SIZE[::-1], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image, format="JPEG")

        if row["mask"]:
            mask = root / row["mask"]
            mask.parent.mkdir(parents=True, exist_ok=True)
            labels = Image.fromarray(_mask_labels(index))
            if index % 2:
                # The palette maps every index to black, so only a reader that takes the index
                # as the label finds the defect.
                labels = labels.convert("P")
                labels.putpalette([0] * 768)
                labels.putdata(list(_mask_labels(index).flatten()))
            labels.save(mask)

    reduced = root / "split_csv" / "1cls.csv"
    reduced.parent.mkdir(parents=True, exist_ok=True)
    with reduced.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(SPLIT_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)

    return rows


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


@pytest.fixture
def raw_visa(tmp_path, visa_split_csv) -> tuple[Path, list[dict[str, str]]]:
    """A raw VisA tree in tmp_path/visa and its split rows."""
    root = tmp_path / "visa"
    rows = build_raw_visa(root, visa_split_csv)
    return root, rows


# Split file


def test_real_split_file_counts(visa_split_csv):
    counts = count_split_rows(read_split_csv(visa_split_csv))

    assert counts == PUBLISHED_1CLS_COUNTS
    assert sum(train for train, _, _ in counts.values()) == 8659
    assert sum(normal for _, normal, _ in counts.values()) == 962
    assert sum(anomalous for _, _, anomalous in counts.values()) == 1200


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("candle,valid,normal,candle/a.JPG,", "invalid split 'valid' on line 2"),
        ("candle,test,broken,candle/a.JPG,", "invalid label 'broken' on line 2"),
        ("candle,train,anomaly,candle/a.JPG,candle/a.png", "anomalous training image on line 2"),
        ("candle,test,anomaly,candle/a.JPG,", "anomalous image without mask on line 2"),
        ("candle,test,normal,candle/a.JPG,candle/a.png", "normal image with a mask on line 2"),
        ("candle,test,normal,../a.JPG,", "invalid image path '../a.JPG' on line 2"),
        ("candle,test,normal,/data/a.JPG,", "invalid image path '/data/a.JPG' on line 2"),
    ],
)
def test_split_file_invalid_row(tmp_path, line, expected):
    path = tmp_path / "split.csv"
    path.write_text(",".join(SPLIT_COLUMNS) + "\n" + line + "\n")

    with pytest.raises(DatasetError) as caught:
        read_split_csv(path)

    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_split_file_duplicate_image(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("object,split,label,image,mask\ncandle,train,normal,c/a.JPG,\ncandle,test,normal,c/a.JPG,\n")

    with pytest.raises(DatasetError, match="image c/a.JPG is listed on lines 2 and 3"):
        read_split_csv(path)


def test_split_file_missing_column(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("object,split,label,image\ncandle,train,normal,c/a.JPG\n")

    with pytest.raises(DatasetError, match="missing column 'mask'"):
        read_split_csv(path)


# Preparation


def test_prepare_writes_mvtec_layout(raw_visa):
    root, rows = raw_visa

    result = prepare_visa(root)

    out = root / "visa_pytorch"
    assert result.out == out
    assert result.written == 26
    assert result.skipped == 0
    assert not result.already_complete
    assert result.counts == {
        name: {"train/good": 5, "test/good": 2, "test/bad": 3, "ground_truth/bad": 3} for name in OBJECTS
    }
    assert (out / MARKER_NAME).is_file()

    for row in rows:
        image = Path(row["image"])
        if row["split"] == "train":
            folder = "train/good"
        elif row["label"] == "normal":
            folder = "test/good"
        else:
            folder = "test/bad"
        copy = out / row["object"] / folder / image.name
        assert copy.read_bytes() == (root / image).read_bytes(), copy


def test_prepare_binarises_masks(raw_visa):
    root, rows = raw_visa

    prepare_visa(root)

    anomalous = [(index, row) for index, row in enumerate(rows) if row["mask"]]
    assert len(anomalous) == 6
    for index, row in anomalous:
        stem = Path(row["image"]).stem
        mask = root / "visa_pytorch" / row["object"] / "ground_truth" / "bad" / f"{stem}_mask.png"
        pixels = np.asarray(Image.open(mask))
        assert Image.open(mask).mode == "L"
        assert set(np.unique(pixels).tolist()) == {0, 255}
        assert ((pixels == 255) == (_mask_labels(index) > 0)).all(), mask


def test_prepared_visa_loads(raw_visa):
    root, _ = raw_visa
    prepare_visa(root)

    category = load_dataset("visa", root, "pcb1")

    assert category.dataset == "visa"
    assert category.root == root / "visa_pytorch"
    assert len(category.train) == 5
    assert [sample.defect for sample in category.test] == ["good", "good", "bad", "bad", "bad"]
    assert all(load_mask(sample.mask_path).any() for sample in category.test if sample.label == 1)
    assert list_dataset_categories("visa", root) == list(OBJECTS)
    assert list_dataset_categories("visa", root / "visa_pytorch") == list(OBJECTS)


def test_prepare_rerun_keeps_files(raw_visa):
    root, _ = raw_visa
    prepare_visa(root)
    before = {path: path.stat().st_mtime_ns for path in (root / "visa_pytorch").rglob("*") if path.is_file()}

    again = prepare_visa(root)

    assert again.already_complete
    assert again.written == 0
    after = {path: path.stat().st_mtime_ns for path in (root / "visa_pytorch").rglob("*") if path.is_file()}
    assert after == before


def test_prepare_custom_out(raw_visa, tmp_path):
    root, _ = raw_visa

    result = prepare_visa(root, out=tmp_path / "prepared", split_csv=root / "split_csv" / "1cls.csv")

    assert result.out == tmp_path / "prepared"
    assert not (root / "visa_pytorch").exists()
    assert len(load_dataset("visa", tmp_path / "prepared", "candle").test) == 5

    next((tmp_path / "prepared" / "candle" / "test" / "bad").iterdir()).unlink()
    with pytest.raises(DatasetError) as caught:
        load_dataset("visa", tmp_path / "prepared", "candle")
    assert f"run `bench data prepare visa --root {root} --out {tmp_path / 'prepared'}` again" in str(caught.value)


def test_interrupted_custom_preparation_names_command(raw_visa, tmp_path):
    root, _ = raw_visa
    split_csv = tmp_path / "my-split.csv"
    split_csv.write_bytes((root / "split_csv" / "1cls.csv").read_bytes())
    out = tmp_path / "prepared"

    def interrupt(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_visa(root, out=out, split_csv=split_csv, progress=interrupt)
    with pytest.raises(DatasetError) as caught:
        load_dataset("visa", out, "candle")

    command = f"bench data prepare visa --root {root} --out {out} --split-csv {split_csv}"
    assert f"is incomplete: {MARKER_NAME} is missing" in str(caught.value)
    assert f"(run `{command}` to finish it)" in str(caught.value)

    prepare_visa(root, out=out, split_csv=split_csv)
    assert len(load_dataset("visa", out, "candle").test) == 5
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == [MARKER_NAME]


def test_prepare_resumes_after_kill(raw_visa):
    root, _ = raw_visa
    out = root / "visa_pytorch"
    # The child kills itself with SIGKILL after its 10th file, as an out-of-memory kill or a
    # closed terminal would, so nothing in Python gets to clean up.
    code = (
        "import os, signal, sys\n"
        "from bench.data.visa import prepare_visa\n"
        "def stop(done, total):\n"
        "    if done == 10:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "prepare_visa(sys.argv[1], progress=stop)\n"
    )

    killed = subprocess.run([sys.executable, "-c", code, str(root)], cwd=REPOSITORY, capture_output=True, text=True,
                            timeout=120)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / MARKER_NAME).exists()
    assert (out / PREPARING_NAME).is_file()
    assert len([name for name in _files(out) if not name.startswith(".")]) == 10
    with pytest.raises(DatasetError, match="VisA preparation in .* is incomplete"):
        load_dataset("visa", root, "candle")

    # A file cut short and a temporary file, as a kill in the middle of a copy leaves them.
    first_copy = next(path for path in sorted(out.rglob("*.JPG")))
    first_copy.write_bytes(first_copy.read_bytes()[:50])
    stale = first_copy.with_name(f".{first_copy.name}.tmp")
    stale.write_bytes(b"partial")

    resumed = prepare_visa(root)

    assert not resumed.already_complete
    assert resumed.skipped == 9
    assert resumed.written == 17
    assert not stale.exists()
    assert (out / MARKER_NAME).is_file()
    originals = {path.name: path for path in root.rglob("*.JPG") if "Data" in path.parts}
    assert first_copy.read_bytes() == originals[first_copy.name].read_bytes()
    assert len(load_dataset("visa", root, "candle").test) == 5


def test_deleted_file_detected_and_restored(raw_visa):
    root, _ = raw_visa
    prepare_visa(root)
    deleted = sorted((root / "visa_pytorch" / "candle" / "train" / "good").iterdir())[0]
    deleted.unlink()

    with pytest.raises(DatasetError) as caught:
        load_dataset("visa", root, "candle")
    assert str(caught.value).startswith(
        "prepared VisA object 'candle' has 4 images in train/good, but its preparation wrote 5 "
        f"(run `bench data prepare visa --root {root}` again"
    )

    restored = prepare_visa(root)

    assert not restored.already_complete
    assert restored.written == 1
    assert deleted.is_file()


def test_unlisted_file_fails_check(raw_visa):
    root, _ = raw_visa
    prepare_visa(root)
    extra = root / "visa_pytorch" / "pcb1" / "test" / "good" / "extra.JPG"
    Image.new("RGB", IMAGE_SIZE).save(extra)
    (root / "visa_pytorch" / MARKER_NAME).unlink()

    with pytest.raises(DatasetError) as caught:
        prepare_visa(root)

    message = str(caught.value)
    assert message.startswith("VisA preparation check failed: object 'pcb1' has 3 files in test/good, "
                              "the split file lists 2, not listed extra.JPG")
    assert f"remove {root / 'visa_pytorch' / 'pcb1'}" in message
    assert not (root / "visa_pytorch" / MARKER_NAME).exists()


def test_missing_split_file(tmp_path):
    root = tmp_path / "visa"
    root.mkdir()

    with pytest.raises(DatasetError) as caught:
        prepare_visa(root)

    assert str(caught.value).startswith(f"VisA split file not found: {root / 'split_csv' / '1cls.csv'} ")
    assert not (root / "visa_pytorch").exists()


def test_missing_source_writes_nothing(raw_visa):
    root, rows = raw_visa
    missing = root / rows[3]["image"]
    missing.unlink()

    with pytest.raises(DatasetError) as caught:
        prepare_visa(root)

    assert str(caught.value).startswith(f"1 of 26 files that {root / 'split_csv' / '1cls.csv'} lists are missing")
    assert str(missing) in str(caught.value)
    assert not (root / "visa_pytorch").exists()


def test_mask_size_mismatch(raw_visa):
    root, rows = raw_visa
    mask = root / next(row["mask"] for row in rows if row["mask"])
    Image.new("L", (8, 8)).save(mask)

    with pytest.raises(DatasetError, match=r"mask size 8x8 differs from image size 16x16"):
        prepare_visa(root)

    assert not (root / "visa_pytorch" / MARKER_NAME).exists()


def test_changed_split_file_fails_check(raw_visa):
    root, _ = raw_visa
    prepare_visa(root)
    split_csv = root / "split_csv" / "1cls.csv"
    lines = split_csv.read_text().splitlines()
    # Drop pcb1's last anomalous row: its copied image and mask are then not listed.
    split_csv.write_text("\n".join(lines[:-1]) + "\n")

    with pytest.raises(DatasetError, match="object 'pcb1' has 3 files in test/bad, the split file lists 2"):
        prepare_visa(root)


# Reading unprepared folders


def test_unprepared_root_message(raw_visa):
    root, _ = raw_visa

    with pytest.raises(DatasetError) as caught:
        load_dataset("visa", root, "candle")

    assert str(caught.value).startswith(f"VisA in {root} is not prepared (run `bench data prepare visa --root {root}`")


def test_mvtec_layout_without_marker_message(tmp_path):
    root = tmp_path / "demo"
    write_demo_dataset(root, size=64, n_train=2, n_test_good=1, n_test_per_defect=1)

    with pytest.raises(DatasetError) as caught:
        load_dataset("visa", root, "weave")

    message = str(caught.value)
    assert message.startswith(f"{root} has category folders but no {MARKER_NAME}")
    assert "pass --dataset mvtec or --dataset folder" in message


def test_unknown_object_message(raw_visa):
    root, _ = raw_visa
    prepare_visa(root)

    with pytest.raises(DatasetError) as caught:
        load_dataset("visa", root, "candel")

    assert "object 'candel' not found" in str(caught.value)
    assert "did you mean 'candle'?" in str(caught.value)


def test_marker_of_other_format(raw_visa):
    root, _ = raw_visa
    prepare_visa(root)
    (root / "visa_pytorch" / MARKER_NAME).write_text(json.dumps({"format": "other"}))

    with pytest.raises(DatasetError, match="invalid VisA completion marker"):
        load_dataset("visa", root, "candle")


# CLI


def test_cli_prepare_and_check(raw_visa):
    root, _ = raw_visa

    prepared = CliRunner().invoke(app, ["prepare", "visa", "--root", str(root)])

    assert prepared.exit_code == 0, prepared.output
    assert "26 files written" in prepared.output
    assert "│ total  │         10 │         4 │        6 │" in prepared.output

    checked = CliRunner().invoke(app, ["check", "--dataset", "visa", "--root", str(root)])

    assert checked.exit_code == 0, checked.output
    assert "mask values: {0, 255} in 3 masks" in checked.output
    assert "checked 2 categories" in checked.output


def test_cli_prepare_missing_root(tmp_path):
    result = CliRunner().invoke(app, ["prepare", "visa", "--root", str(tmp_path / "absent")])

    assert isinstance(result.exception, DatasetError)
    assert str(result.exception).startswith(f"VisA root not found: {tmp_path / 'absent'}")
