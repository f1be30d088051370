"""Tests for the validation report of `bench data check` on mvtec, folder and real data."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.data.check import ERROR, WARNING, check_category
from bench.data.cli import app
from bench.errors import DatasetError

_RNG = np.random.default_rng(0)


def _noise(path: Path, size: tuple[int, int] = (12, 10), mode: str = "RGB", **save) -> Path:
    """Write an image of random pixels, so that no two test images are byte-identical."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(_RNG.integers(0, 256, size=shape, dtype=np.uint8)).save(path, **save)
    return path


def _mask(path: Path, size: tuple[int, int] = (12, 10), value: int = 255, box: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    if box:
        pixels[2:5, 3:7] = value
    Image.fromarray(pixels).save(path)
    return path


def _make_widget(root: Path, name: str = "widget") -> Path:
    """Write a valid MVTec-layout category of distinct noise images: 3 train, 2 good, 2 crack."""
    category = root / name
    for index in range(3):
        _noise(category / "train" / "good" / f"{index:03d}.png")
    for index in range(2):
        _noise(category / "test" / "good" / f"{index:03d}.png")
        _noise(category / "test" / "crack" / f"{index:03d}.png")
        _mask(category / "ground_truth" / "crack" / f"{index:03d}_mask.png")
    return category


def _check(root: Path, *args: str):
    return CliRunner().invoke(app, ["check", "--root", str(root), *args])


def _messages(report, severity: str) -> list[str]:
    return [problem.message for problem in report.problems if problem.severity == severity]


def test_clean_category_no_problems(tmp_path):
    _make_widget(tmp_path)

    result = _check(tmp_path)

    assert result.exit_code == 0, result.output
    assert "image modes: RGB PNG (7 images)" in result.output
    assert "mask values: {0, 255} in 2 masks" in result.output
    assert "checked 1 category in" in result.output
    assert "no problems found" in result.output


def test_report_statistics(tmp_path):
    category = _make_widget(tmp_path)
    _noise(category / "train" / "good" / "gray.jpg", size=(20, 16), mode="L", format="JPEG")

    report = check_category("mvtec", tmp_path, "widget")

    assert report.problems == []
    assert report.sizes == {(12, 10): 7, (20, 16): 1}
    assert report.images == {("L", "JPEG"): 1, ("RGB", "PNG"): 7}
    assert report.mask_values.masks == 2
    assert report.mask_values.distinct == (0.0, 255.0)
    assert report.mask_values.soft == 0


def test_soft_masks_reported(tmp_path):
    category = _make_widget(tmp_path)
    for index in range(2):
        values = np.linspace(0, 255, 120).reshape(10, 12).round().astype(np.uint8)
        Image.fromarray(values).save(category / "ground_truth" / "crack" / f"{index:03d}_mask.png")

    result = _check(tmp_path, "--dataset", "folder")

    assert result.exit_code == 0, result.output
    assert "mask values: 0..255 in 2 masks, 2 soft; anomalous above 127.5 (mask threshold 0.5)" in result.output


def test_empty_mask_warning(tmp_path):
    category = _make_widget(tmp_path)
    empty = _mask(category / "ground_truth" / "crack" / "001_mask.png", box=False)

    report = check_category("mvtec", tmp_path, "widget")

    assert _messages(report, ERROR) == []
    assert _messages(report, WARNING) == [
        f"anomalous images with an all-zero mask: 1, the first {empty} "
        "(pixel metrics count every pixel of these images as normal)"
    ]
    assert report.mask_values.empty == 1


def test_orphan_mask_warning(tmp_path):
    category = _make_widget(tmp_path)
    orphan = _mask(category / "ground_truth" / "crack" / "007_mask.png")
    _mask(category / "ground_truth" / "dent" / "000_mask.png")

    report = check_category("mvtec", tmp_path, "widget")

    warnings = _messages(report, WARNING)
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"files in {category / 'ground_truth'} that are the mask of no test image: 2, the first {orphan} "
    )


def test_duplicate_warnings(tmp_path):
    category = _make_widget(tmp_path)
    train = category / "train" / "good"
    (category / "test" / "good" / "leak.png").write_bytes((train / "000.png").read_bytes())
    (train / "copy.png").write_bytes((train / "001.png").read_bytes())

    report = check_category("mvtec", tmp_path, "widget")

    warnings = _messages(report, WARNING)
    assert len(warnings) == 2
    assert warnings[0].startswith(
        f"test images byte-identical to a training image: 1, the first {category / 'test' / 'good' / 'leak.png'} "
        f"and {train / '000.png'}"
    )
    assert warnings[1].startswith(
        f"images byte-identical to another image of the same split: 1, the first {train / 'copy.png'} "
    )


def test_warnings_exit_zero(tmp_path):
    category = _make_widget(tmp_path)
    _mask(category / "ground_truth" / "crack" / "007_mask.png")

    result = _check(tmp_path)

    assert result.exit_code == 0, result.output
    assert "warning: files in" in result.output
    assert "checked 1 category in" in result.output
    assert "1 warning" in result.output


def test_missing_masks_folder_warning(tmp_path):
    category = _make_widget(tmp_path)
    for mask in (category / "ground_truth" / "crack").iterdir():
        mask.unlink()

    report = check_category("folder", tmp_path, "widget")

    assert _messages(report, WARNING) == [
        "2 of 2 anomalous test images have no mask (first: test/crack/000.png): pixel metrics will be NULL"
    ]
    assert report.mask_values is None


def test_threshold_that_empties_masks_is_error(tmp_path):
    category = _make_widget(tmp_path)
    for index in range(2):
        _mask(category / "ground_truth" / "crack" / f"{index:03d}_mask.png", value=1)

    result = _check(tmp_path, "--dataset", "folder")

    assert isinstance(result.exception, DatasetError)
    message = str(result.exception)
    assert message.startswith(
        f"masks that the mask threshold empties: 2, the first {category / 'ground_truth' / 'crack' / '000_mask.png'} "
        "has values 0..1 but none above the threshold 127.5"
    )
    assert "mask values: {0, 1} in 2 masks" in result.output
    assert "1 error" in result.output

    relaxed = _check(tmp_path, "--dataset", "folder", "--mask-threshold", "0")

    assert relaxed.exit_code == 0, relaxed.output


def test_broken_category_reported_with_others(tmp_path):
    _make_widget(tmp_path, "gadget")
    broken = _make_widget(tmp_path, "widget")
    (broken / "ground_truth" / "crack" / "001_mask.png").unlink()

    result = _check(tmp_path)

    assert isinstance(result.exception, DatasetError)
    assert str(result.exception).startswith(f"mask not found: {broken / 'ground_truth' / 'crack' / '001_mask.png'}")
    assert "gadget" in result.output
    assert "error: mask not found" in result.output
    assert "checked 2 categories" in result.output


def test_invalid_mask_threshold_option(tmp_path):
    _make_widget(tmp_path)

    result = _check(tmp_path, "--mask-threshold", "2")

    assert isinstance(result.exception, DatasetError)
    assert str(result.exception).startswith("invalid mask threshold: 2.0 ")


@pytest.mark.parametrize("dataset", ["mvtec", "folder"])
def test_bottle_report(mvtec_root, dataset):
    report = check_category(dataset, mvtec_root, "bottle")

    assert report.problems == []
    assert report.sizes == {(900, 900): 292}
    assert report.images == {("RGB", "PNG"): 292}
    assert report.mask_values.masks == 63
    assert report.mask_values.distinct == (0.0, 255.0)
    assert report.mask_values.empty == 0
