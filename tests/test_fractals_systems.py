"""IFS samplers: contraction, sigma-factor band, FractalDB filling rate, npz round trip."""

import numpy as np
import pytest

from bench.errors import ConfigError
from bench.fractals.systems import (
    filling_rate,
    load_systems,
    parse_map_range,
    sample_fractaldb_systems,
    sample_sigma_systems,
    sample_singular_values,
    save_systems,
)


@pytest.fixture(scope="module")
def sigma_systems():
    return sample_sigma_systems(300, seed=7, n_maps=(2, 8))


def test_sigma_maps_are_contractions(sigma_systems):
    singular = np.linalg.svd(sigma_systems.maps[:, :, :2], compute_uv=False)
    assert singular.max() <= 1.0 + 1e-12


def test_sigma_factor_in_band(sigma_systems):
    for index in range(len(sigma_systems)):
        system = sigma_systems.system(index)
        n = len(system)
        singular = np.linalg.svd(system[:, :, :2], compute_uv=False)
        sigma_factor = float((singular[:, 0] + 2.0 * singular[:, 1]).sum())
        assert (5 + n) / 2 - 1e-9 <= sigma_factor, f"system {index}: {sigma_factor} below band"
        assert sigma_factor <= (6 + n) / 2 + 1e-9, f"system {index}: {sigma_factor} above band"


def test_sigma_map_counts_cover_range(sigma_systems):
    counts = sigma_systems.n_maps()
    assert counts.min() == 2
    assert counts.max() == 8


def test_singular_values_hit_target():
    rng = np.random.default_rng(0)
    for n in range(1, 9):
        target = rng.uniform(0.0, 3.0 * n)
        values = sample_singular_values(n, target, rng)
        assert np.isclose((values[:, 0] + 2.0 * values[:, 1]).sum(), target)
        assert np.all(values[:, 0] >= values[:, 1] - 1e-12)
        assert values.max() <= 1.0 + 1e-12
        assert values.min() >= -1e-12


def test_sigma_prefix_is_stable():
    small = sample_sigma_systems(5, seed=3)
    large = sample_sigma_systems(20, seed=3)
    assert np.array_equal(small.maps, large.maps[: len(small.maps)])


def test_npz_round_trip(tmp_path, sigma_systems):
    path = save_systems(sigma_systems, tmp_path / "systems.npz")
    loaded = load_systems(path)
    assert np.array_equal(loaded.maps, sigma_systems.maps)
    assert np.array_equal(loaded.offsets, sigma_systems.offsets)
    assert loaded.settings == sigma_systems.settings
    assert loaded.settings["seed"] == 7
    assert loaded.settings["n_maps"] == [2, 8]


def test_fractaldb_meets_filling_rate():
    systems = sample_fractaldb_systems(3, seed=1, n_maps=(2, 4), size=128, points=20_000)
    assert len(systems) == 3
    for index in range(len(systems)):
        rate = filling_rate(systems.system(index), size=128, points=20_000)
        assert rate >= 0.2


def test_fractaldb_entries_in_range():
    systems = sample_fractaldb_systems(3, seed=2, n_maps=(2, 4), size=128, points=20_000)
    assert np.abs(systems.maps).max() <= 1.0


@pytest.mark.parametrize("text", ["9-2", "0-3", "two", "2-8-9", "1-99"])
def test_bad_map_range_rejected(text):
    with pytest.raises(ConfigError, match="map-count range"):
        parse_map_range(text)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_systems(tmp_path / "missing.npz")
