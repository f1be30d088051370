"""CPU renderer: image shape and content, seeding, batch calls, other processes, divergence."""

import hashlib
from dataclasses import replace
import subprocess
import sys

import numpy as np
import pytest

from bench.fractals.render import (
    RenderConfig,
    image_seed,
    render_batch,
    render_coverage,
    render_density,
    render_image,
)
from bench.fractals.systems import sample_sigma_systems

SIZE = 64
POINTS = 20_000
CONFIG = RenderConfig(size=SIZE, points=POINTS)


@pytest.fixture(scope="module")
def systems():
    return sample_sigma_systems(12, seed=11)


def digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_image_shape_and_dtype(systems):
    image = render_image(systems.system(0), seed=1, config=CONFIG)
    assert image.shape == (SIZE, SIZE, 3)
    assert image.dtype == np.uint8


def test_plain_coverage_nontrivial(systems):
    for index in range(len(systems)):
        coverage = render_coverage(systems.system(index), size=SIZE, points=POINTS)
        assert 0.02 < coverage < 0.95, f"system {index}: coverage {coverage}"


def test_fractal_pixels_on_black(systems):
    config = RenderConfig(size=SIZE, points=POINTS, background=False, blur_p=0.0)
    image = render_image(systems.system(1), seed=5, config=config)
    lit = (image.max(axis=2) > 0).mean()
    assert 0.02 < lit < 0.95


def test_colours_vary_across_images(systems):
    config = RenderConfig(size=SIZE, points=POINTS, background=False, blur_p=0.0)
    means = [render_image(systems.system(1), seed=s, config=config).reshape(-1, 3).max(axis=0) for s in range(6)]
    assert len({tuple(m) for m in means}) > 1


def test_background_fills_canvas(systems):
    config = RenderConfig(size=SIZE, points=POINTS, background=True)
    image = render_image(systems.system(2), seed=3, config=config)
    assert (image.max(axis=2) > 0).mean() == 1.0


def test_same_seed_same_bytes(systems):
    first = render_image(systems.system(3), seed=42, config=CONFIG).copy()
    render_image(systems.system(4), seed=7, config=CONFIG)
    second = render_image(systems.system(3), seed=42, config=CONFIG)
    assert np.array_equal(first, second)


def test_other_seed_other_image(systems):
    first = render_image(systems.system(3), seed=42, config=CONFIG).copy()
    second = render_image(systems.system(3), seed=43, config=CONFIG)
    assert not np.array_equal(first, second)


def test_batch_matches_single(systems):
    indices = np.arange(len(systems))
    seeds = np.array([image_seed(5, "test", i) for i in indices], dtype=np.uint64)
    batch = render_batch(systems, indices, seeds, CONFIG)
    for b in indices:
        single = render_image(systems.system(int(b)), int(seeds[b]), CONFIG)
        assert np.array_equal(batch[b], single), f"image {b}"


def test_image_seed_is_stable():
    assert image_seed(0, "single/view/0", 5) == image_seed(0, "single/view/0", 5)
    assert image_seed(0, "single/view/0", 5) != image_seed(0, "single/view/0", 6)
    assert image_seed(0, "single/view/0", 5) != image_seed(1, "single/view/0", 5)


def test_same_bytes_in_other_process(systems, tmp_path):
    from bench.fractals.systems import save_systems

    path = save_systems(systems, tmp_path / "systems.npz")
    expected = [digest(render_image(systems.system(i), seed=100 + i, config=CONFIG)) for i in range(4)]
    script = (
        "import hashlib\n"
        "from bench.fractals.render import RenderConfig, render_image\n"
        "from bench.fractals.systems import load_systems\n"
        f"systems = load_systems({str(path)!r})\n"
        f"config = RenderConfig(size={SIZE}, points={POINTS})\n"
        "for i in range(4):\n"
        "    image = render_image(systems.system(i), seed=100 + i, config=config)\n"
        "    print(hashlib.sha256(image.tobytes()).hexdigest())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.split() == expected


def dihedral_variants(image: np.ndarray) -> list[np.ndarray]:
    variants = []
    for transposed in (image, image.transpose(1, 0, 2)):
        for rows in (False, True):
            for columns in (False, True):
                variant = transposed[::-1] if rows else transposed
                variants.append(variant[:, ::-1] if columns else variant)
    return variants


def test_flips_are_dihedral_copies(systems):
    plain = RenderConfig(size=SIZE, points=POINTS, background=False).without_augmentation()
    flipped = replace(plain, flips=True)
    matched = set()
    for seed in range(8):
        reference = render_image(systems.system(5), seed=seed, config=plain).copy()
        image = render_image(systems.system(5), seed=seed, config=flipped)
        hits = [k for k, variant in enumerate(dihedral_variants(reference)) if np.array_equal(variant, image)]
        assert hits, f"seed {seed}: flipped image is no flip or transpose of the plain one"
        matched.add(hits[0])
    assert len(matched) > 1


def test_diverging_system_gives_blank(caplog):
    system = np.array([[[2.0, 0.0, 1.0], [0.0, 2.0, 1.0]], [[1.5, 0.3, -1.0], [0.2, 1.8, 0.5]]])
    config = RenderConfig(size=SIZE, points=POINTS, background=False)
    image = render_image(system, seed=0, config=config)
    assert image.max() == 0
    assert render_coverage(system, size=SIZE, points=POINTS) == 0.0


def test_density_counts_all_points(systems):
    density = render_density(systems.system(6), size=SIZE, points=POINTS)
    assert density.dtype == np.uint32
    assert int(density.sum()) == POINTS
