"""Tests for the folder dataset: image modes and formats, optional and soft masks, the mask threshold."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from bench.data import list_dataset_categories, load_dataset, load_layout
from bench.data.images import load_mask
from bench.data.loading import ImageDataset, load_masks
from bench.data.masks import describe_missing_masks
from bench.data.settings import SETTINGS_FILE_NAME
from bench.errors import DatasetError


def _gray(path: Path, size: tuple[int, int], value: int = 128, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path, **save)
    return path


def _soft_mask(path: Path, size: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    """Write a Gaussian-edged 8-bit mask and return its values."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    distance = np.hypot(x - centre[0], y - centre[1])
    values = np.round(255 * np.exp(-((distance / radius) ** 2))).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)
    return values


def _make_parts(root: Path, n_train: int = 8, n_good: int = 3, n_bad: int = 3, masks: bool = True) -> Path:
    """Write category `parts`: grayscale JPEGs of several sizes, and a scratch defect with soft masks."""
    rng = np.random.default_rng(0)
    category = root / "parts"
    sizes = [(40, 32), (48, 48), (36, 44), (52, 40)]

    def texture(size: tuple[int, int]) -> np.ndarray:
        width, height = size
        return (100 + rng.normal(0, 8, size=(height, width))).clip(0, 255).astype(np.uint8)

    for index in range(n_train):
        size = sizes[index % len(sizes)]
        _save_gray(category / "train" / "good" / f"{index:03d}.jpg", texture(size))
    for index in range(n_good):
        _save_gray(category / "test" / "good" / f"{index:03d}.jpg", texture(sizes[index % len(sizes)]))
    for index in range(n_bad):
        size = sizes[index % len(sizes)]
        pixels = texture(size)
        pixels[8:16, 10:20] = 250
        _save_gray(category / "test" / "scratch" / f"{index:03d}.jpg", pixels)
        if masks:
            _soft_mask(category / "ground_truth" / "scratch" / f"{index:03d}_mask.png", size, (15, 12), 6.0)
    return root


def _save_gray(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


# Image modes and formats


def _write_l_png(path):
    Image.new("L", (12, 10), 77).save(path)


def _write_l_jpeg(path):
    Image.new("L", (10, 14), 77).save(path, format="JPEG", quality=100)


def _write_rgba_png(path):
    Image.new("RGBA", (9, 9), (200, 100, 50, 128)).save(path)


def _write_i16_png(path):
    Image.fromarray(np.full((8, 11), 32896, dtype=np.uint16)).save(path)


def _write_i16_tiff(path):
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(path)


def _write_palette(path):
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.save(path)


def _write_rgb_bmp(path):
    Image.new("RGB", (7, 5), (1, 2, 3)).save(path)


# (file name, writer, PIL mode as read back, expected RGB, tolerance): 16-bit values scale by
# 1/257 and alpha composites onto black.
MODE_CASES = [
    ("gray.png", _write_l_png, "L", (77, 77, 77), 0),
    ("gray.jpg", _write_l_jpeg, "L", (77, 77, 77), 1),
    ("alpha.png", _write_rgba_png, "RGBA", (100, 50, 25), 1),
    ("depth.png", _write_i16_png, "I;16", (128, 128, 128), 0),
    ("depth.tif", _write_i16_tiff, "I;16", (255, 255, 255), 0),
    ("palette.png", _write_palette, "P", (10, 20, 30), 0),
    ("palette.bmp", _write_palette, "P", (10, 20, 30), 0),
    ("colour.bmp", _write_rgb_bmp, "RGB", (1, 2, 3), 0),
]


@pytest.mark.parametrize(("name", "write", "mode", "expected", "tolerance"), MODE_CASES,
                         ids=[case[0] for case in MODE_CASES])
def test_image_mode_loads(tmp_path, name, write, mode, expected, tolerance):
    category = tmp_path / "modes"
    (category / "train" / "good").mkdir(parents=True)
    write(category / "train" / "good" / name)
    _gray(category / "test" / "good" / "000.png", (8, 8))
    assert Image.open(category / "train" / "good" / name).mode == mode

    loaded = load_dataset("folder", tmp_path, "modes")
    image, _ = ImageDataset(loaded.train, 16, (0, 0, 0), (1, 1, 1), normalise=False)[0]

    assert image.shape == (3, 16, 16)
    pixels = (image * 255).round().numpy()
    for channel, value in enumerate(expected):
        assert np.abs(pixels[channel] - value).max() <= tolerance, channel


# Layout and masks


def test_folder_loads_varying_sizes(tmp_path):
    _make_parts(tmp_path)

    category = load_dataset("folder", tmp_path, "parts")

    assert category.dataset == "folder"
    assert category.mask_threshold == 0.5
    assert len(category.train) == 8
    assert [sample.defect for sample in category.test] == ["good"] * 3 + ["scratch"] * 3
    assert all(sample.mask_threshold == 0.5 for sample in category.test)
    assert {Image.open(sample.path).size for sample in category.train} == {(40, 32), (48, 48), (36, 44), (52, 40)}
    assert list_dataset_categories("folder", tmp_path) == ["parts"]


def test_soft_masks_thresholded(tmp_path):
    _make_parts(tmp_path)
    values = _soft_mask(tmp_path / "parts" / "ground_truth" / "scratch" / "000_mask.png", (40, 32), (15, 12), 6.0)
    category = load_dataset("folder", tmp_path, "parts")

    masks = load_masks(category.test, 32, 40)

    assert masks is not None
    assert masks.shape == (6, 32, 40)
    assert not masks[:3].any()
    # 127.5 is half of the 8-bit full scale, so the Gaussian edge between 1 and 127 stays normal.
    assert (masks[3] == (values > 127.5)).all()
    assert 0 < masks[3].sum() < (values > 0).sum()


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("L", [0, 100, 128, 255], [False, False, True, True]),
        ("I;16", [0, 30000, 40000, 65535], [False, False, True, True]),
        ("1", [0, 1, 0, 1], [False, True, False, True]),
    ],
)
def test_load_mask_threshold_by_mode(tmp_path, mode, values, expected):
    path = tmp_path / "mask.png"
    if mode == "1":
        Image.fromarray(np.array([values], dtype=bool)).save(path)
    else:
        Image.fromarray(np.array([values], dtype=np.uint16 if mode == "I;16" else np.uint8)).save(path)
    assert Image.open(path).mode == mode

    assert load_mask(path, threshold=0.5).tolist() == [expected]
    assert load_mask(path).tolist() == [[value > 0 for value in values]]


def test_load_mask_colour_threshold(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.array([[[0, 0, 0], [0, 200, 0], [100, 100, 100]]], dtype=np.uint8)).save(path)

    assert load_mask(path, threshold=0.5).tolist() == [[False, True, False]]


def test_mask_threshold_from_settings(tmp_path):
    _make_parts(tmp_path)
    (tmp_path / SETTINGS_FILE_NAME).write_text("mask_threshold = 0.0\n")
    values = _soft_mask(tmp_path / "parts" / "ground_truth" / "scratch" / "000_mask.png", (40, 32), (15, 12), 6.0)

    category = load_dataset("folder", tmp_path, "parts")
    masks = load_masks(category.test, 32, 40)

    assert category.mask_threshold == 0.0
    assert (masks[3] == (values > 0)).all()


def test_mask_threshold_argument_wins(tmp_path):
    _make_parts(tmp_path)
    (tmp_path / SETTINGS_FILE_NAME).write_text("mask_threshold = 0.0\n")

    assert load_dataset("folder", tmp_path, "parts", mask_threshold=0.25).mask_threshold == 0.25


def test_zero_one_masks_rejected(tmp_path):
    _make_parts(tmp_path, masks=False)
    mask = tmp_path / "parts" / "ground_truth" / "scratch" / "000_mask.png"
    pixels = np.zeros((32, 40), dtype=np.uint8)
    pixels[5:9, 5:9] = 1
    mask.parent.mkdir(parents=True)
    Image.fromarray(pixels).save(mask)

    with pytest.raises(DatasetError) as caught:
        load_dataset("folder", tmp_path, "parts")

    message = str(caught.value)
    assert message.startswith(f"mask {mask} has values 0..1 but none above the threshold 127.5 (0.5 of full scale 255)")
    assert f"set mask_threshold = 0 in {tmp_path / SETTINGS_FILE_NAME}" in message
    assert load_dataset("folder", tmp_path, "parts", mask_threshold=0.0).mask_threshold == 0.0


def test_all_zero_mask_accepted(tmp_path):
    _make_parts(tmp_path)
    Image.new("L", (40, 32), 0).save(tmp_path / "parts" / "ground_truth" / "scratch" / "000_mask.png")

    category = load_dataset("folder", tmp_path, "parts")

    assert not load_masks(category.test, 8, 8)[3].any()


def test_masks_optional(tmp_path, caplog):
    _make_parts(tmp_path, masks=False)

    with caplog.at_level(logging.WARNING, logger="bench.data.folder"):
        category = load_dataset("folder", tmp_path, "parts")

    assert all(sample.mask_path is None for sample in category.test)
    assert load_masks(category.test, 16, 16) is None
    assert describe_missing_masks(category.test) == (
        "no pixel ground truth: 3 of 3 anomalous test images have no mask (first: test/scratch/000.jpg)"
    )
    assert "3 of 3 anomalous test images of parts have no mask" in caplog.text


def test_some_masks_missing(tmp_path):
    _make_parts(tmp_path)
    (tmp_path / "parts" / "ground_truth" / "scratch" / "001_mask.png").unlink()

    category = load_dataset("folder", tmp_path, "parts")

    assert [sample.mask_path is not None for sample in category.test[3:]] == [True, False, True]
    assert load_masks(category.test, 16, 16) is None
    assert "1 of 3 anomalous test images have no mask (first: test/scratch/001.jpg)" in describe_missing_masks(
        category.test
    )


def test_mask_name_variants(tmp_path):
    _make_parts(tmp_path, masks=False)
    mask_dir = tmp_path / "parts" / "ground_truth" / "scratch"
    _gray(mask_dir / "000.png", (40, 32), 255)
    _gray(mask_dir / "001_mask.bmp", (48, 48), 255)
    _gray(mask_dir / "002.tif", (36, 44), 255)

    category = load_dataset("folder", tmp_path, "parts")

    assert [sample.mask_path.name for sample in category.test[3:]] == ["000.png", "001_mask.bmp", "002.tif"]


def test_two_masks_for_one_image(tmp_path):
    _make_parts(tmp_path)
    _gray(tmp_path / "parts" / "ground_truth" / "scratch" / "001.png", (48, 48), 255)

    with pytest.raises(DatasetError) as caught:
        load_dataset("folder", tmp_path, "parts")

    assert str(caught.value).startswith(f"2 mask files match image {tmp_path / 'parts' / 'test' / 'scratch' / '001.jpg'}")


def test_images_with_same_stem(tmp_path):
    _make_parts(tmp_path)
    _gray(tmp_path / "parts" / "test" / "scratch" / "001.png", (48, 48))

    with pytest.raises(DatasetError, match="images 001.jpg and 001.png in .* have the same stem"):
        load_dataset("folder", tmp_path, "parts")


def test_mask_size_differs(tmp_path):
    _make_parts(tmp_path)
    mask = _gray(tmp_path / "parts" / "ground_truth" / "scratch" / "002_mask.png", (10, 10), 255)

    with pytest.raises(DatasetError) as caught:
        load_dataset("folder", tmp_path, "parts")

    assert str(caught.value).startswith(f"mask size 10x10 differs from image size 36x44: {mask}")


def test_layout_skips_pixel_check(tmp_path):
    _make_parts(tmp_path, masks=False)
    _gray(tmp_path / "parts" / "ground_truth" / "scratch" / "000_mask.png", (40, 32), 1)

    category = load_layout("folder", tmp_path, "parts")

    assert category.test[3].mask_path is not None


@pytest.mark.parametrize(("value", "expected"), [(1.0, "1.0"), (-0.1, "-0.1"), ("0.5", "'0.5'")])
def test_invalid_mask_threshold(tmp_path, value, expected):
    _make_parts(tmp_path)

    with pytest.raises(DatasetError, match=f"invalid mask threshold: {expected} "):
        load_dataset("folder", tmp_path, "parts", mask_threshold=value)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'kolektor'; supported: mvtec, visa, folder"):
        load_dataset("kolektor", tmp_path, "parts")


# End to end


def test_padim_folder_few_shot_run(tmp_path, monkeypatch):
    from bench.runners import local
    from bench.runners.cli import run

    root = _make_parts(tmp_path / "data")
    db = tmp_path / "results.db"
    train_sets = tmp_path / "train_sets.jsonl"
    train_data = local.TrainData

    # Runs may execute in a forked worker process, so the training paths go through a file.
    def record_train_data(samples, *args, **kwargs):
        with train_sets.open("a") as file:
            file.write(json.dumps([str(sample.path) for sample in samples]) + "\n")
        return train_data(samples, *args, **kwargs)

    monkeypatch.setattr(local, "TrainData", record_train_data)
    cli = typer.Typer()
    cli.command()(run)

    result = CliRunner().invoke(cli, [
        "--method", "padim", "--weights", "random", "--backbone", "resnet18", "--dataset", "folder",
        "--root", str(root), "--category", "parts", "--image-size", "64", "--train-shots", "4",
        "--db", str(db), "--runs-dir", str(tmp_path / "runs"), "--no-save-maps",
    ])

    assert result.exit_code == 0, result.output
    train_paths = {str(sample.path) for sample in load_dataset("folder", root, "parts").train}
    used = [json.loads(line) for line in train_sets.read_text().splitlines()]
    assert len(used) == 1
    assert len(used[0]) == 4
    assert len(set(used[0])) == 4
    assert set(used[0]) <= train_paths

    with create_engine(f"sqlite:///{db}").connect() as connection:
        (status, shots, config), = connection.execute(text("SELECT status, train_shots, config FROM runs")).all()
        metrics = dict(connection.execute(text("SELECT name, value FROM metrics")).all())

    assert status == "done"
    assert shots == 4
    config = json.loads(config) if isinstance(config, str) else config
    assert config["train_shots"] == 4
    assert config["dataset"] == "folder"
    assert config["resize_policy"] == "stretch"
    assert set(metrics) == {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max"}
    for name, value in metrics.items():
        assert value is not None and 0.0 <= value <= 1.0, name


def test_run_with_missing_mask_names_it(tmp_path):
    from bench.runners.cli import run

    root = _make_parts(tmp_path / "data")
    (root / "parts" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    db = tmp_path / "results.db"
    cli = typer.Typer()
    cli.command()(run)

    result = CliRunner().invoke(cli, [
        "--method", "padim", "--weights", "random", "--backbone", "resnet18", "--dataset", "folder",
        "--root", str(root), "--category", "parts", "--image-size", "64", "--db", str(db),
        "--runs-dir", str(tmp_path / "runs"), "--no-save-maps",
    ])

    assert result.exit_code == 0, result.output
    with create_engine(f"sqlite:///{db}").connect() as connection:
        reasons = dict(connection.execute(text("SELECT name, null_reason FROM metrics WHERE value IS NULL")).all())
    expected = "no pixel ground truth: 1 of 3 anomalous test images have no mask (first: test/scratch/001.jpg)"
    assert reasons == {"pixel_auroc": expected, "aupro": expected, "pixel_f1_max": expected}
