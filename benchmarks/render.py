"""Time the fractal renderer against a straightforward numba chaos-game renderer, per CPU core.

The reference does what a plain numba renderer does, with the structure of Anderson & Farrell's
public renderer. It runs one point at a time and chooses each map by searching the cumulative
probabilities with np.random.random(). It stores float64 points in an array, bins them over their
bounding box into a float64 density image normalized by its maximum, and colours the hit pixels
by HSV into a uint8 RGB image. Ours renders the full augmented pipeline (jitter, window scale and shift, 3x3 stamp, flips,
hue colouring, diamond-square background, blur with p = 0.5), plus the plain coloured image for a
like-for-like figure.

Per core: numba and torch run single-threaded in this one process, and rates are images per
second of this process's CPU time (time.process_time), so other load on the machine does not
count against either side. Both sides render the same systems at the same size and point count.

Run: .venv/bin/python benchmarks/render.py [--size 256] [--points 100000] [--images 300]
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from bench.fractals.render import RenderConfig, image_seed, render_batch  # noqa: E402
from bench.fractals.systems import sample_sigma_systems  # noqa: E402


@njit(cache=True)
def reference_points(system, n_points, seed):
    """Run the chaos game one point at a time: per-point cumulative-probability search."""
    np.random.seed(seed)
    det = system[:, 0, 0] * system[:, 1, 1] - system[:, 0, 1] * system[:, 1, 0]
    probabilities = np.abs(det)
    probabilities = probabilities / probabilities.sum()
    cumulative = np.cumsum(probabilities)
    points = np.empty((n_points, 2))

    # Start at the fixed point of w_1, which lies on the attractor.
    a, b, c, d = system[0, 0, 0], system[0, 0, 1], system[0, 1, 0], system[0, 1, 1]
    e, f = system[0, 0, 2], system[0, 1, 2]
    s = 1.0 / ((1.0 - a) * (1.0 - d) - b * c)
    x = s * ((1.0 - d) * e + b * f)
    y = s * ((1.0 - a) * f + c * e)

    n = len(cumulative)
    for i in range(n_points):
        r = np.random.random()
        k = 0
        while k < n - 1 and r >= cumulative[k]:
            k += 1
        x_next = system[k, 0, 0] * x + system[k, 0, 1] * y + system[k, 0, 2]
        y = system[k, 1, 0] * x + system[k, 1, 1] * y + system[k, 1, 2]
        x = x_next
        points[i, 0] = x
        points[i, 1] = y
    return points


@njit(cache=True)
def reference_colour_image(points, size, hue_shift, saturation, value):
    """Bin points into a float64 density image over their bounding box and colour it by HSV."""
    x_min, x_max = points[:, 0].min(), points[:, 0].max()
    y_min, y_max = points[:, 1].min(), points[:, 1].max()
    x_scale = (size - 1) / max(x_max - x_min, 1e-12)
    y_scale = (size - 1) / max(y_max - y_min, 1e-12)
    density = np.zeros((size, size))
    for i in range(len(points)):
        row = int((points[i, 1] - y_min) * y_scale)
        column = int((points[i, 0] - x_min) * x_scale)
        if 0 <= row < size and 0 <= column < size:
            density[row, column] += 1.0
    density /= density.max()

    image = np.zeros((size, size, 3), dtype=np.uint8)
    for i in range(size):
        for j in range(size):
            level = density[i, j]
            if level == 0.0:
                continue
            h = (level + hue_shift) % 1.0 * 6.0
            sector = int(h)
            f = h - sector
            p = value * (1.0 - saturation)
            q = value * (1.0 - saturation * f)
            t = value * (1.0 - saturation * (1.0 - f))
            if sector == 0:
                r, g, b = value, t, p
            elif sector == 1:
                r, g, b = q, value, p
            elif sector == 2:
                r, g, b = p, value, t
            elif sector == 3:
                r, g, b = p, q, value
            elif sector == 4:
                r, g, b = t, p, value
            else:
                r, g, b = value, p, q
            image[i, j, 0] = np.uint8(r * 255.0)
            image[i, j, 1] = np.uint8(g * 255.0)
            image[i, j, 2] = np.uint8(b * 255.0)
    return image


def reference_render(system: np.ndarray, size: int, n_points: int, seed: int) -> np.ndarray:
    """Render one coloured image with the reference renderer."""
    rng = np.random.default_rng(seed)
    points = reference_points(system, n_points, seed)
    return reference_colour_image(points, size, rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.5, 1.0))


def images_per_cpu_second(render, count: int, repeats: int) -> float:
    """Return the best of `repeats` rates of render(count) in images per CPU second."""
    best = 0.0
    for _ in range(repeats):
        start = time.process_time()
        render(count)
        elapsed = time.process_time() - start
        best = max(best, count / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--points", type=int, default=100_000, help="chaos-game points per image (default 100000)")
    parser.add_argument("--images", type=int, default=300, help="images per timed run (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per renderer; the best counts (default 3)")
    args = parser.parse_args()
    numba.set_num_threads(1)

    systems = sample_sigma_systems(args.images, seed=0)
    indices = np.arange(args.images, dtype=np.int64)
    seeds = np.array([image_seed(0, "benchmark", i) for i in indices], dtype=np.uint64)
    full = RenderConfig(size=args.size, points=args.points)
    plain = RenderConfig(
        size=args.size, points=args.points, stamp=False, background=False,
    ).without_augmentation()
    out = np.empty((args.images, args.size, args.size, 3), dtype=np.uint8)

    def run_reference(count: int) -> None:
        for i in range(count):
            reference_render(systems.system(i), args.size, args.points, i)

    def run_ours(config: RenderConfig):
        def run(count: int) -> None:
            render_batch(systems, indices[:count], seeds[:count], config, out=out[:count])

        return run

    # Warm up: compile (or load from the numba cache) before timing.
    run_reference(2)
    run_ours(full)(2)
    run_ours(plain)(2)

    reference = images_per_cpu_second(run_reference, max(20, args.images // 4), args.repeats)
    ours_plain = images_per_cpu_second(run_ours(plain), args.images, args.repeats)
    ours_full = images_per_cpu_second(run_ours(full), args.images, args.repeats)

    print(f"{args.size}x{args.size} px, {args.points} points per image, 1 thread, images per CPU second")
    print(f"reference (per-point search, coloured image):      {reference:8.1f} images/s per core")
    print(f"ours, coloured image (same work as the reference): {ours_plain:8.1f} images/s per core")
    print(f"ours, full augmented pipeline:                     {ours_full:8.1f} images/s per core")
    print(f"ratio, ours full augmented / reference:            {ours_full / reference:8.2f}")
    print(f"ratio, ours coloured / reference:                  {ours_plain / reference:8.2f}")
    if not math.isfinite(ours_full):
        raise SystemExit("timing failed")


if __name__ == "__main__":
    main()
