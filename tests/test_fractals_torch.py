"""Torch renderer against the CPU renderer: coverage and density histogram of the same systems."""

import numpy as np
import pytest
import torch

from bench.fractals.render import render_density
from bench.fractals.systems import sample_sigma_systems
from bench.fractals.torch_render import colour_density_torch, render_density_torch

SIZE = 64
POINTS = 20_000
# Density bins: 1, 2, 3-4, 5-8, ... counts per hit pixel.
BINS = [1, 2, 3, 5, 9, 17, 33, 65, np.inf]


@pytest.fixture(scope="module")
def systems():
    return sample_sigma_systems(6, seed=21)


@pytest.fixture(scope="module")
def torch_density(systems):
    generator = torch.Generator().manual_seed(0)
    return render_density_torch(
        systems, list(range(len(systems))), size=SIZE, points=POINTS, chains=256, device="cpu", generator=generator
    ).numpy()


def histogram(density: np.ndarray) -> np.ndarray:
    hit = density[density > 0]
    return np.histogram(hit, bins=BINS)[0] / len(hit)


def test_torch_counts_all_points(torch_density):
    assert torch_density.shape == (6, SIZE, SIZE)
    assert np.all(torch_density.reshape(6, -1).sum(axis=1) >= POINTS)


def test_torch_coverage_matches_cpu(systems, torch_density):
    for index in range(len(systems)):
        cpu = render_density(systems.system(index), size=SIZE, points=POINTS, seed=index)
        cpu_coverage = (cpu > 0).mean()
        torch_coverage = (torch_density[index] > 0).mean()
        assert abs(torch_coverage - cpu_coverage) <= 0.05 * cpu_coverage, f"system {index}"


def test_torch_histogram_matches_cpu(systems, torch_density):
    for index in range(len(systems)):
        cpu = render_density(systems.system(index), size=SIZE, points=POINTS, seed=index)
        distance = np.abs(histogram(cpu) - histogram(torch_density[index])).sum()
        assert distance < 0.2, f"system {index}: histogram L1 distance {distance:.3f}"


def test_torch_differs_for_other_system(systems, torch_density):
    # The comparison above must be able to fail: another system's histogram is far away.
    distances = [np.abs(histogram(torch_density[0]) - histogram(torch_density[k])).sum() for k in range(1, 6)]
    assert max(distances) > 0.2


def test_colour_images(torch_density):
    images = colour_density_torch(torch.from_numpy(torch_density), generator=torch.Generator().manual_seed(1))
    assert images.shape == (6, 3, SIZE, SIZE)
    assert float(images.min()) >= 0.0
    assert float(images.max()) <= 1.0
    lit = (images.amax(dim=1) > 0).float().mean(dim=(1, 2))
    coverage = torch.from_numpy((torch_density > 0).mean(axis=(1, 2))).float()
    assert torch.allclose(lit, coverage)
