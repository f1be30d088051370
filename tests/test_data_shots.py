"""Tests for few-shot training sets: `select_train_samples` draws exactly K seeded images."""

from pathlib import Path

import pytest

from bench.data.base import Category, Sample
from bench.errors import ConfigError
from bench.runners.local import select_train_samples


def _category(n_train: int) -> Category:
    train = tuple(Sample(path=Path(f"/data/widget/train/good/{index:03d}.png"), label=0, defect="good")
                  for index in range(n_train))
    test = (Sample(path=Path("/data/widget/test/good/000.png"), label=0, defect="good"),)
    return Category(dataset="folder", root=Path("/data"), name="widget", train=train, test=test)


@pytest.mark.parametrize("shots", [1, 2, 5, 16, 20])
def test_shots_exact_count(shots):
    category = _category(20)

    chosen = select_train_samples(category, shots, seed=0)

    assert len(chosen) == shots
    assert len({sample.path for sample in chosen}) == shots
    assert set(chosen) <= set(category.train)


def test_shots_in_file_order():
    chosen = select_train_samples(_category(20), 6, seed=3)

    assert [sample.path.name for sample in chosen] == sorted(sample.path.name for sample in chosen)


def test_shots_same_seed_same_images():
    category = _category(50)

    assert select_train_samples(category, 5, seed=7) == select_train_samples(category, 5, seed=7)


def test_shots_other_seed_other_images():
    category = _category(50)

    draws = {select_train_samples(category, 5, seed=seed) for seed in range(5)}

    assert len(draws) > 1


def test_shots_none_uses_all():
    category = _category(7)

    assert select_train_samples(category, None, seed=0) == category.train


@pytest.mark.parametrize("shots", [0, -1, 8])
def test_shots_out_of_range(shots):
    with pytest.raises(ConfigError, match=f"invalid --train-shots {shots}; widget has 7 training images, so pass 1 to 7"):
        select_train_samples(_category(7), shots, seed=0)
