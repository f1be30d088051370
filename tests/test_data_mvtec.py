"""Tests for the MVTec AD layout reader, the image loaders and `bench data check`."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.data.cli import app
from bench.data.images import load_image, load_mask
from bench.data.mvtec import count_image_sizes, list_categories, load_mvtec, summarise
from bench.errors import DatasetError


def _write_image(path: Path, size: tuple[int, int] = (8, 6), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def _write_mask(path: Path, size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    pixels[1:3, 2:5] = 255
    Image.fromarray(pixels).save(path)
    return path


def _make_category(
    root: Path,
    name: str = "widget",
    n_train: int = 3,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
) -> Path:
    """Write a valid MVTec-layout category of tiny images and return its folder."""
    category_dir = root / name
    for index in range(n_train):
        _write_image(category_dir / "train" / "good" / f"{index:03d}.png")

    for index in range(n_good):
        _write_image(category_dir / "test" / "good" / f"{index:03d}.png")

    for defect, count in (defects if defects is not None else {"crack": 2, "hole": 1}).items():
        for index in range(count):
            _write_image(category_dir / "test" / defect / f"{index:03d}.png", value=40)
            _write_mask(category_dir / "ground_truth" / defect / f"{index:03d}_mask.png")

    return category_dir


def _load_error(root: Path, category: str) -> str:
    with pytest.raises(DatasetError) as caught:
        load_mvtec(root, category)
    return str(caught.value)


# Layout reader


def test_list_categories_sorted(tmp_path):
    _make_category(tmp_path, "zipper")
    _make_category(tmp_path, "bottle")
    _make_category(tmp_path, ".cache")
    (tmp_path / "notes").mkdir()
    (tmp_path / "readme.txt").write_text("not a category")

    assert list_categories(tmp_path) == ["bottle", "zipper"]


def test_list_categories_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="dataset root not found"):
        list_categories(tmp_path / "absent")


def test_load_valid_category(tmp_path):
    _make_category(tmp_path)

    category = load_mvtec(tmp_path, "widget")

    assert category.dataset == "mvtec"
    assert category.name == "widget"
    assert category.root == tmp_path
    assert len(category.train) == 3
    assert len(category.test) == 5
    assert all(sample.path.is_absolute() for sample in category.train + category.test)
    assert all(sample.label == 0 and sample.defect == "good" for sample in category.train)
    assert all(sample.mask_path is None for sample in category.train)


def test_load_test_labels_and_masks(tmp_path):
    category_dir = _make_category(tmp_path)

    test = load_mvtec(tmp_path, "widget").test

    assert [sample.defect for sample in test] == ["good", "good", "crack", "crack", "hole"]
    assert [sample.label for sample in test] == [0, 0, 1, 1, 1]
    assert test[0].mask_path is None
    assert test[2].mask_path == category_dir / "ground_truth" / "crack" / "000_mask.png"
    assert test[4].mask_path == category_dir / "ground_truth" / "hole" / "000_mask.png"


def test_load_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    _make_category(tmp_path / "data")
    monkeypatch.chdir(tmp_path)

    category = load_mvtec(Path("data"), "widget")

    assert category.root == tmp_path / "data"
    assert category.train[0].path == tmp_path / "data" / "widget" / "train" / "good" / "000.png"


def test_load_extensions_and_hidden_files(tmp_path):
    category_dir = _make_category(tmp_path, n_train=1)
    train_dir = category_dir / "train" / "good"
    _write_image(train_dir / "b.JPG")
    _write_image(train_dir / "a.tiff")
    _write_image(train_dir / ".hidden.png")
    (train_dir / "notes.txt").write_text("not an image")
    (category_dir / "test" / ".ipynb_checkpoints").mkdir()

    category = load_mvtec(tmp_path, "widget")

    assert [sample.path.name for sample in category.train] == ["000.png", "a.tiff", "b.JPG"]
    assert {sample.defect for sample in category.test} == {"good", "crack", "hole"}


def test_load_ignores_empty_defect_folder(tmp_path):
    category_dir = _make_category(tmp_path)
    (category_dir / "test" / "scratch").mkdir()

    category = load_mvtec(tmp_path, "widget")

    assert "scratch" not in {sample.defect for sample in category.test}


def test_load_records_dataset_name(tmp_path):
    _make_category(tmp_path)

    assert load_mvtec(tmp_path, "widget", dataset="mvtec_copy").dataset == "mvtec_copy"


# Layout errors


def test_missing_root_message(tmp_path):
    root = tmp_path / "absent"

    message = _load_error(root, "widget")

    assert message == (
        f"dataset root not found: {root} (pass --root with the folder that contains the category folders)"
    )


def test_root_is_file(tmp_path):
    root = tmp_path / "archive.tar"
    root.write_bytes(b"")

    assert _load_error(root, "widget").startswith(f"dataset root is not a folder: {root}")


def test_category_typo_suggestion(tmp_path):
    _make_category(tmp_path, "bottle")
    _make_category(tmp_path, "cable")

    message = _load_error(tmp_path, "botle")

    assert message == f"category 'botle' not found in {tmp_path}; did you mean 'bottle'? available: bottle, cable"


def test_category_without_close_match(tmp_path):
    _make_category(tmp_path, "bottle")

    message = _load_error(tmp_path, "zipper")

    assert message == f"category 'zipper' not found in {tmp_path}; available: bottle"


def test_root_is_category_folder(tmp_path):
    category_dir = _make_category(tmp_path, "bottle")

    message = _load_error(category_dir, "bottle")

    assert "contains train/good itself, so pass its parent folder as --root" in message


def test_invalid_category_name(tmp_path):
    _make_category(tmp_path)

    assert _load_error(tmp_path, "../widget").startswith("invalid category name '../widget'")


def test_train_folder_missing(tmp_path):
    category_dir = tmp_path / "widget"
    (category_dir / "train").mkdir(parents=True)

    message = _load_error(tmp_path, "widget")

    assert message.startswith(f"training folder not found: {category_dir / 'train' / 'good'}")


def test_train_folder_empty(tmp_path):
    category_dir = _make_category(tmp_path, n_train=0)
    train_dir = category_dir / "train" / "good"
    train_dir.mkdir(parents=True)
    (train_dir / "list.txt").write_text("000.png")
    _write_image(train_dir / ".hidden.png")

    message = _load_error(tmp_path, "widget")

    assert message.startswith(f"no image files in training folder {train_dir}")
    assert ".png" in message


def test_test_folder_missing(tmp_path):
    _write_image(tmp_path / "widget" / "train" / "good" / "000.png")

    message = _load_error(tmp_path, "widget")

    assert message.startswith(f"test folder not found: {tmp_path / 'widget' / 'test'}")


def test_test_good_missing_is_allowed(tmp_path):
    _make_category(tmp_path, n_good=0)

    category = load_mvtec(tmp_path, "widget")

    assert {sample.label for sample in category.test} == {1}


def test_test_without_defects_is_allowed(tmp_path):
    _make_category(tmp_path, defects={})

    category = load_mvtec(tmp_path, "widget")

    assert {sample.label for sample in category.test} == {0}


def test_test_without_images(tmp_path):
    category_dir = _make_category(tmp_path, n_good=0, defects={})
    (category_dir / "test" / "good").mkdir(parents=True)

    message = _load_error(tmp_path, "widget")

    assert message.startswith(f"no test images in {tmp_path / 'widget' / 'test'}")


def test_missing_mask_names_path(tmp_path):
    category_dir = _make_category(tmp_path)
    expected = category_dir / "ground_truth" / "crack" / "001_mask.png"
    expected.unlink()

    message = _load_error(tmp_path, "widget")

    assert message.startswith(f"mask not found: {expected} ")
    assert "1 of 2 masks missing for defect 'crack'" in message


def test_missing_ground_truth_folder(tmp_path):
    category_dir = _make_category(tmp_path, defects={"hole": 1})
    for mask in (category_dir / "ground_truth" / "hole").iterdir():
        mask.unlink()
    (category_dir / "ground_truth" / "hole").rmdir()

    message = _load_error(tmp_path, "widget")

    assert message.startswith(f"mask not found: {category_dir / 'ground_truth' / 'hole' / '000_mask.png'}")


def test_mask_size_mismatch(tmp_path):
    category_dir = _make_category(tmp_path)
    mask = _write_mask(category_dir / "ground_truth" / "hole" / "000_mask.png", size=(8, 5))

    message = _load_error(tmp_path, "widget")

    assert message.startswith(f"mask size 8x5 differs from image size 8x6: {mask} ")
    assert str(category_dir / "test" / "hole" / "000.png") in message


def test_corrupt_image(tmp_path):
    category_dir = _make_category(tmp_path)
    broken = category_dir / "train" / "good" / "001.png"
    broken.write_bytes(b"this is not a PNG file")

    message = _load_error(tmp_path, "widget")

    assert message.startswith(f"cannot read image file {broken}: ")


def test_truncated_image(tmp_path):
    category_dir = _make_category(tmp_path)
    truncated = category_dir / "test" / "good" / "000.png"
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:400])

    message = _load_error(tmp_path, "widget")

    assert message.startswith(f"cannot read image file {truncated}: ")


def test_corrupt_mask(tmp_path):
    category_dir = _make_category(tmp_path)
    broken = category_dir / "ground_truth" / "crack" / "000_mask.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")

    message = _load_error(tmp_path, "widget")

    assert message.startswith(f"cannot read mask file {broken}: ")


# Summary


def test_summarise_rows(tmp_path):
    _make_category(tmp_path, defects={"scratch": 1, "crack": 2})

    rows = summarise(load_mvtec(tmp_path, "widget"))

    assert rows == [
        ("train", "good", 3, 0),
        ("test", "good", 2, 0),
        ("test", "crack", 2, 2),
        ("test", "scratch", 1, 1),
    ]


def test_count_image_sizes(tmp_path):
    category_dir = _make_category(tmp_path)
    _write_image(category_dir / "train" / "good" / "big.png", size=(10, 12))

    sizes = count_image_sizes(load_mvtec(tmp_path, "widget"))

    assert sizes == {(8, 6): 8, (10, 12): 1}


# Real MVTec AD bottle category


def test_bottle_counts(mvtec_root):
    rows = summarise(load_mvtec(mvtec_root, "bottle"))

    assert rows == [
        ("train", "good", 209, 0),
        ("test", "good", 20, 0),
        ("test", "broken_large", 20, 20),
        ("test", "broken_small", 22, 22),
        ("test", "contamination", 21, 21),
    ]


def test_bottle_masks_exist(mvtec_root):
    category = load_mvtec(mvtec_root, "bottle")
    anomalous = [sample for sample in category.test if sample.label == 1]

    assert len(anomalous) == 63
    assert all(sample.mask_path is not None and sample.mask_path.is_file() for sample in anomalous)
    assert all(sample.mask_path.name == f"{sample.path.stem}_mask.png" for sample in anomalous)
    assert all(sample.mask_path.parent.name == sample.defect for sample in anomalous)


def test_bottle_image_and_mask_load(mvtec_root):
    category = load_mvtec(mvtec_root, "bottle")
    sample = next(sample for sample in category.test if sample.defect == "broken_large")

    image = load_image(sample.path)
    mask = load_mask(sample.mask_path)

    assert image.mode == "RGB"
    assert image.size == (900, 900)
    assert mask.shape == (900, 900)
    assert mask.dtype == bool
    assert 0 < mask.sum() < mask.size


# Image and mask loading


def test_load_image_gray(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)).save(path)

    pixels = np.asarray(load_image(path))

    assert pixels.shape == (1, 3, 3)
    assert pixels[0, :, 0].tolist() == [0, 77, 255]
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_load_image_sixteen_bit_scaled(tmp_path):
    path = tmp_path / "depth.png"
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"

    pixels = np.asarray(load_image(path))

    # 1000 / 257 rounds to 4; clipping to 8 bits would give 255.
    assert pixels[0, :, 0].tolist() == [0, 4, 128, 255]
    assert (pixels[..., 1] == pixels[..., 0]).all()


def test_load_image_rgba_composited(tmp_path):
    path = tmp_path / "alpha.png"
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], dtype=np.uint8)
    Image.fromarray(rgba).save(path)

    pixels = np.asarray(load_image(path)).astype(int)

    assert pixels[0, 0].tolist() == [200, 100, 50]
    assert pixels[0, 1].tolist() == [0, 0, 0]
    assert np.abs(pixels[0, 2] - np.array([100, 50, 25])).max() <= 1


def test_load_image_palette(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(path)

    pixels = np.asarray(load_image(path))

    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 1].tolist() == [10, 20, 30]


def test_load_image_int32_out_of_range(tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(path)

    with pytest.raises(DatasetError, match="unsupported value range 0..70000"):
        load_image(path)


def test_load_image_corrupt(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image")

    with pytest.raises(DatasetError, match="cannot read image file"):
        load_image(path)


def test_load_mask_binarised(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.array([[0, 1, 128, 255]], dtype=np.uint8)).save(path)

    mask = load_mask(path)

    assert mask.dtype == bool
    assert mask.tolist() == [[False, True, True, True]]


def test_load_mask_rgba_ignores_alpha(tmp_path):
    path = tmp_path / "mask_rgba.png"
    rgba = np.array([[[0, 0, 0, 255], [0, 0, 9, 0], [0, 0, 0, 0]]], dtype=np.uint8)
    Image.fromarray(rgba).save(path)

    assert load_mask(path).tolist() == [[False, True, False]]


# bench data check


def test_check_prints_counts(tmp_path):
    _make_category(tmp_path, "widget")
    _make_category(tmp_path, "gadget", defects={"dent": 4})

    result = CliRunner().invoke(app, ["check", "--dataset", "mvtec", "--root", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert "gadget" in result.output
    assert "widget" in result.output
    assert "│ test  │ dent   │      4 │     4 │" in result.output
    assert "8x6 (9 images)" in result.output
    assert "checked 2 categories" in result.output


def test_check_one_category(tmp_path):
    _make_category(tmp_path, "widget")
    _make_category(tmp_path, "gadget")

    result = CliRunner().invoke(app, ["check", "--root", str(tmp_path), "--category", "widget"])

    assert result.exit_code == 0, result.output
    assert "gadget" not in result.output
    assert "checked 1 category" in result.output


def test_check_typo_error(tmp_path):
    _make_category(tmp_path, "bottle")

    result = CliRunner().invoke(app, ["check", "--root", str(tmp_path), "--category", "botle"])

    assert isinstance(result.exception, DatasetError)
    assert str(result.exception) == f"category 'botle' not found in {tmp_path}; did you mean 'bottle'? available: bottle"


def test_check_missing_mask_error(tmp_path):
    category_dir = _make_category(tmp_path)
    (category_dir / "ground_truth" / "hole" / "000_mask.png").unlink()

    result = CliRunner().invoke(app, ["check", "--root", str(tmp_path)])

    assert isinstance(result.exception, DatasetError)
    assert str(result.exception).startswith("mask not found: ")


def test_check_empty_root(tmp_path):
    result = CliRunner().invoke(app, ["check", "--root", str(tmp_path)])

    assert isinstance(result.exception, DatasetError)
    assert str(result.exception).startswith(f"no category folders found in {tmp_path}")


def test_check_category_folder_as_root(tmp_path):
    (tmp_path / "bottle" / "train" / "good").mkdir(parents=True)

    result = CliRunner().invoke(app, ["check", "--root", str(tmp_path / "bottle")])

    assert isinstance(result.exception, DatasetError)
    assert "it contains train/good itself, so pass its parent folder as --root and --category bottle" in str(result.exception)


def test_check_unsupported_dataset(tmp_path):
    result = CliRunner().invoke(app, ["check", "--dataset", "kolektor", "--root", str(tmp_path)])

    assert isinstance(result.exception, DatasetError)
    assert str(result.exception) == "unsupported dataset 'kolektor' (supported: mvtec, visa, folder)"


def test_check_bottle(mvtec_root):
    result = CliRunner().invoke(app, ["check", "--root", str(mvtec_root), "--category", "bottle"])

    assert result.exit_code == 0, result.output
    assert "│ train │ good          │    209 │     0 │" in result.output
    assert "│ test  │ broken_small  │     22 │    22 │" in result.output
    assert "900x900 (292 images)" in result.output
