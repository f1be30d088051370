"""Recipes and the torch Dataset: sizes, classes, labels, and data independent of worker count."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bench.errors import ConfigError
from bench.fractals.recipes import FractalDataset, FractalImages, make_recipe
from bench.fractals.systems import SystemSet, sample_sigma_systems

SIZE = 64
POINTS = 20_000


@pytest.fixture(scope="module")
def systems():
    return sample_sigma_systems(24, seed=5)


def dataset(systems, recipe, **options):
    return FractalDataset(systems, recipe=recipe, size=SIZE, points=POINTS, seed=3, **options)


@pytest.mark.parametrize(
    ("recipe", "classes", "per_class"),
    [("single", 6, 3), ("multi-system", 4, 5), ("ofdb", 8, 2), ("multi-instance", 5, 2)],
)
def test_recipe_sizes(systems, recipe, classes, per_class):
    data = dataset(systems, recipe, classes=classes, per_class=per_class)
    assert len(data) == classes * per_class
    assert data.classes == classes


@pytest.mark.parametrize("recipe", ["single", "multi-system", "ofdb", "multi-instance"])
def test_item_tensor(systems, recipe):
    data = dataset(systems, recipe, classes=4, per_class=2)
    image, _ = data[3]
    assert image.shape == (3, SIZE, SIZE)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0.0
    assert float(image.max()) <= 1.0
    assert float(image.std()) > 0.01


@pytest.mark.parametrize("recipe", ["single", "multi-system", "ofdb"])
def test_class_targets(systems, recipe):
    data = dataset(systems, recipe, classes=4, per_class=3)
    targets = [data[i][1] for i in range(len(data))]
    assert targets == [i // 3 for i in range(12)]


def test_multi_system_groups(systems):
    spec = make_recipe("multi-system", len(systems), classes=4, per_class=6, size=SIZE, points=POINTS)
    images = FractalImages(systems, spec)
    groups = [{images.system_of(c * 6 + k) for k in range(6)} for c in range(4)]
    assert groups == [set(range(6 * c, 6 * c + 6)) for c in range(4)]


def test_ofdb_instance_fixed(systems):
    data = dataset(systems, "ofdb", classes=3, per_class=4, augment=False)
    first = data[0][0]
    assert torch.equal(first, data[1][0])
    assert not torch.equal(first, data[4][0])


def test_ofdb_views_differ(systems):
    data = dataset(systems, "ofdb", classes=3, per_class=4)
    assert not torch.equal(data[0][0], data[1][0])


def test_epoch_changes_views(systems):
    data = dataset(systems, "single", classes=3, per_class=2)
    before = data[2][0]
    data.set_epoch(1)
    assert not torch.equal(before, data[2][0])
    data.set_epoch(0)
    assert torch.equal(before, data[2][0])


def test_multi_instance_target(systems):
    data = dataset(systems, "multi-instance", classes=12, per_class=2)
    for index in range(len(data)):
        _, target = data[index]
        assert target.shape == (12,)
        assert target.dtype == torch.float32
        assert 1 <= int(target.sum()) <= 5
        assert target[index // 2] == 1.0


def test_multi_instance_labels_match_drawn(systems):
    """Swapping the systems of undrawn classes must leave the image unchanged, and swapping a drawn one must not."""
    classes = 12
    spec = make_recipe("multi-instance", len(systems), classes=classes, per_class=2, size=SIZE, points=POINTS, seed=9)
    original = FractalImages(systems, spec)
    other = sample_sigma_systems(classes, seed=99)
    checked = 0
    for index in range(0, 2 * classes, 3):
        image, drawn = original.render(index)
        image = image.copy()
        undrawn = [c for c in range(classes) if c not in drawn]
        swapped = SystemSet.from_list(
            [other.system(c) if c in undrawn else systems.system(c) for c in range(len(systems))]
        )
        assert np.array_equal(FractalImages(swapped, spec).render(index)[0], image), f"image {index}"

        changed = SystemSet.from_list(
            [other.system(c) if c == drawn[0] else systems.system(c) for c in range(len(systems))]
        )
        assert not np.array_equal(FractalImages(changed, spec).render(index)[0], image), f"image {index}"
        checked += 1
    assert checked == 8


def test_same_data_any_workers(systems):
    data = dataset(systems, "single", classes=4, per_class=3)
    serial = list(DataLoader(data, batch_size=4, num_workers=0))
    parallel = list(DataLoader(data, batch_size=4, num_workers=2))
    for (images_a, targets_a), (images_b, targets_b) in zip(serial, parallel):
        assert torch.equal(images_a, images_b)
        assert torch.equal(targets_a, targets_b)


def test_unknown_recipe_rejected(systems):
    with pytest.raises(ConfigError, match="unknown recipe 'bogus'"):
        dataset(systems, "bogus")


def test_too_many_classes_rejected(systems):
    with pytest.raises(ConfigError, match="25 classes exceed the 24 systems"):
        dataset(systems, "single", classes=25)


def test_bad_size_rejected(systems):
    with pytest.raises(ConfigError, match="invalid image size 0"):
        FractalDataset(systems, recipe="single", size=0)
