"""Tests for the synthetic demo dataset and `bench data demo`."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.data.cli import app
from bench.data.demo import DEMO_CATEGORIES, DEMO_DEFECTS, MARKER_NAME, render_demo_image, write_demo_dataset
from bench.data.images import load_image, load_mask
from bench.data.mvtec import load_mvtec, summarise
from bench.errors import DatasetError

# Small datasets keep the tests fast. The default dataset is written once per module.
SMALL = {"size": 64, "n_train": 3, "n_test_good": 2, "n_test_per_defect": 2}


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory) -> Path:
    """A demo dataset written with the default parameters."""
    out = tmp_path_factory.mktemp("demo_default")
    write_demo_dataset(out)
    return out


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    """A small demo dataset with seed 0."""
    out = tmp_path_factory.mktemp("demo_small")
    write_demo_dataset(out, seed=0, **SMALL)
    return out


def test_demo_returns_names(tmp_path):
    names = write_demo_dataset(tmp_path, **SMALL)

    assert names == ["washer", "weave"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.txt", "washer", "weave"]


def test_demo_same_seed_identical(tmp_path, small_demo):
    write_demo_dataset(tmp_path, seed=0, **SMALL)

    first = _file_bytes(small_demo)
    second = _file_bytes(tmp_path)

    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name] and name != "README.txt"] == []


def test_demo_other_seed_differs(tmp_path, small_demo):
    write_demo_dataset(tmp_path, seed=1, **SMALL)

    first = _file_bytes(small_demo)
    second = _file_bytes(tmp_path)
    images = [name for name in first if name.endswith(".png") and "ground_truth" not in name]

    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in images)


def test_demo_images_independent_of_counts(tmp_path, small_demo):
    write_demo_dataset(tmp_path, seed=0, **{**SMALL, "n_train": 5})

    for name in DEMO_CATEGORIES:
        test_files = sorted((small_demo / name / "test").rglob("*.png"))
        for path in test_files:
            relative = path.relative_to(small_demo)
            assert path.read_bytes() == (tmp_path / relative).read_bytes(), relative


def test_demo_layout_loads(default_demo):
    for name in DEMO_CATEGORIES:
        rows = summarise(load_mvtec(default_demo, name))

        assert rows == [
            ("train", "good", 40, 0),
            ("test", "good", 10, 0),
            ("test", "hole", 5, 5),
            ("test", "scratch", 5, 5),
            ("test", "stain", 5, 5),
        ]


def test_demo_size_under_limit(default_demo):
    total_bytes = sum(path.stat().st_size for path in default_demo.rglob("*") if path.is_file())

    assert total_bytes < 10_000_000


def test_demo_image_size(default_demo):
    image = load_image(default_demo / "weave" / "train" / "good" / "000.png")

    assert image.size == (128, 128)


def test_demo_masks_equal_changes(small_demo):
    for name in DEMO_CATEGORIES:
        category = load_mvtec(small_demo, name)
        anomalous = [sample for sample in category.test if sample.label == 1]
        assert len(anomalous) == 6

        for sample in anomalous:
            index = int(sample.path.stem)
            rendered = render_demo_image(name, "test", sample.defect, index, seed=0, size=SMALL["size"])
            image = np.asarray(load_image(sample.path))
            mask = load_mask(sample.mask_path)
            changed = (image != rendered.clean).any(axis=2)

            assert np.array_equal(image, rendered.image), sample.path
            assert mask.any(), sample.mask_path
            assert np.array_equal(mask, changed), sample.mask_path


def test_demo_good_images_unchanged(small_demo):
    for name in DEMO_CATEGORIES:
        rendered = render_demo_image(name, "test", "good", 0, seed=0, size=SMALL["size"])
        image = np.asarray(load_image(small_demo / name / "test" / "good" / "000.png"))

        assert rendered.mask is None
        assert np.array_equal(rendered.image, rendered.clean)
        assert np.array_equal(image, rendered.clean)


def test_demo_defects_visible_not_trivial():
    for name in DEMO_CATEGORIES:
        for defect in DEMO_DEFECTS:
            for index in range(4):
                rendered = render_demo_image(name, "test", defect, index)
                change = np.abs(rendered.image.astype(int) - rendered.clean.astype(int)).max(axis=2)
                area = rendered.mask.mean()
                label = f"{name}/{defect}/{index}"

                # Visible: a mean change of at least 12 grey levels on the strongest channel.
                assert change[rendered.mask].mean() >= 12, label
                # Not trivial: the defect covers at most 3 % of the image.
                assert area <= 0.03, label


def test_demo_washer_defects_on_object():
    for defect in DEMO_DEFECTS:
        rendered = render_demo_image("washer", "test", defect, 0)
        background = rendered.clean[0, 0].astype(int)
        mask_pixels = rendered.clean[rendered.mask].astype(int)

        # The ring is brighter than the background everywhere a defect may go.
        assert (mask_pixels.mean(axis=1) > background.mean() + 40).all(), defect


def test_demo_train_images_vary():
    for name in DEMO_CATEGORIES:
        first = render_demo_image(name, "train", "good", 0).image
        second = render_demo_image(name, "train", "good", 1).image

        assert not np.array_equal(first, second), name


def test_demo_marker_and_readme(small_demo):
    marker = json.loads((small_demo / "weave" / MARKER_NAME).read_text())
    readme = (small_demo / "README.txt").read_text()

    assert marker["seed"] == 0
    assert marker["size"] == SMALL["size"]
    assert "Synthetic images generated by bench" in readme
    assert "Seed 0" in readme


def test_demo_existing_kept(tmp_path):
    write_demo_dataset(tmp_path, **SMALL)
    image = tmp_path / "washer" / "train" / "good" / "000.png"
    before = image.stat().st_mtime_ns

    names = write_demo_dataset(tmp_path, **SMALL)

    assert names == ["washer", "weave"]
    assert image.stat().st_mtime_ns == before


def test_demo_other_parameters_rejected(tmp_path):
    write_demo_dataset(tmp_path, seed=0, **SMALL)

    with pytest.raises(DatasetError) as caught:
        write_demo_dataset(tmp_path, seed=3, **SMALL)

    message = str(caught.value)
    assert message.startswith(f"demo category {tmp_path / 'washer'} was written with other parameters")
    assert "seed 0 != 3" in message
    assert message.endswith("pass another --out or delete the folder")


def test_demo_foreign_folder_rejected(tmp_path):
    (tmp_path / "weave").mkdir()

    with pytest.raises(DatasetError, match="has no readable .bench-demo.json"):
        write_demo_dataset(tmp_path, **SMALL)

    # The check runs before anything is written.
    assert not (tmp_path / "washer").exists()


def test_demo_leftover_temporary_replaced(tmp_path):
    leftover = tmp_path / ".tmp-weave"
    (leftover / "train" / "good").mkdir(parents=True)
    (leftover / "train" / "good" / "999.png").write_bytes(b"partial")

    write_demo_dataset(tmp_path, **SMALL)

    assert not leftover.exists()
    assert not (tmp_path / "weave" / "train" / "good" / "999.png").exists()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".tmp-")] == []


def test_demo_invalid_size(tmp_path):
    with pytest.raises(DatasetError, match="invalid demo image size 16"):
        write_demo_dataset(tmp_path, size=16)


def test_demo_negative_seed(tmp_path):
    with pytest.raises(DatasetError, match="invalid demo seed -1"):
        write_demo_dataset(tmp_path, seed=-1)


def test_demo_out_is_file(tmp_path):
    out = tmp_path / "demo"
    out.write_text("")

    with pytest.raises(DatasetError, match="demo output path is not a folder"):
        write_demo_dataset(out, **SMALL)


# bench data demo


def test_demo_command_prints_next_step(tmp_path):
    out = tmp_path / "demo"

    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--seed", "2", "--size", "64"])

    assert result.exit_code == 0, result.output
    assert "│ train │ good    │     40 │     0 │" in result.output
    assert "│ test  │ stain   │      5 │     5 │" in result.output
    assert "64x64 (65 images)" in result.output
    assert f"--dataset mvtec --root {out} --category washer" in result.output
    assert (out / "weave" / MARKER_NAME).is_file()


def test_demo_command_conflict(tmp_path):
    write_demo_dataset(tmp_path, seed=0, **SMALL)

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--size", "64"])

    assert isinstance(result.exception, DatasetError)
    assert "n_train 3 != 40" in str(result.exception)
