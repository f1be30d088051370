"""Sample iterated function systems (IFS) of 2D affine maps and store them in npz files.

Two samplers:

* `sample_sigma_systems` follows Anderson & Farrell, "Improving Fractal Pre-training" (WACV 2022).
  Each map is A = U diag(s1, s2) V with random rotations U, V (optionally with reflections) and
  1 >= s1 >= s2 >= 0, so every map is a contraction. The sigma factor sum_i (s_i1 + 2 s_i2) is
  drawn uniformly from [(5 + N) / 2, (6 + N) / 2], the band that the paper found to give
  well-shaped attractors.
* `sample_fractaldb_systems` follows Kataoka et al., FractalDB (ACCV 2020): map entries uniform in
  [-1, 1], keeping systems whose binary rendering fills at least 20% of the image.

A `SystemSet` stores the maps of all systems in one flat array, with the sampler settings and
seed, so a saved file fully describes its dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.errors import ConfigError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SAMPLERS = ("sigma", "fractaldb")

# The renderer's map-choice table stores map indices as uint8 with at least one entry per map.
MAX_MAPS = 64


@dataclass(frozen=True)
class SystemSet:
    """IFS systems stored flat: system i owns maps[offsets[i]:offsets[i + 1]].

    `maps` has shape (M, 2, 3) and dtype float64: each row is [A | b] of w(x) = A x + b.
    `offsets` has shape (n_systems + 1,) and dtype int64. `settings` contains the sampler name, its
    parameters and the seed.
    """

    maps: np.ndarray
    offsets: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def system(self, index: int) -> np.ndarray:
        """Return the maps of system `index` as an (N, 2, 3) array."""
        return self.maps[self.offsets[index] : self.offsets[index + 1]]

    def n_maps(self) -> np.ndarray:
        """Return the number of maps of every system, shape (n_systems,)."""
        return np.diff(self.offsets)

    def subset(self, indices: np.ndarray) -> "SystemSet":
        """Return the systems at `indices`, in that order, with the same settings."""
        systems = [self.system(int(i)) for i in indices]
        return SystemSet.from_list(systems, self.settings)

    @staticmethod
    def from_list(systems: list[np.ndarray], settings: dict[str, Any] | None = None) -> "SystemSet":
        """Pack a list of (N_i, 2, 3) map arrays into one set."""
        counts = np.array([len(s) for s in systems], dtype=np.int64)
        offsets = np.zeros(len(systems) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        if systems:
            maps = np.concatenate([np.asarray(s, dtype=np.float64) for s in systems], axis=0)
        else:
            maps = np.zeros((0, 2, 3), dtype=np.float64)
        return SystemSet(maps=maps, offsets=offsets, settings=dict(settings or {}))


def parse_map_range(text: str) -> tuple[int, int]:
    """Parse an inclusive map-count range such as "2-8" or "4" into (low, high).

    Raises ConfigError unless 1 <= low <= high <= MAX_MAPS.
    """
    parts = text.strip().split("-")
    try:
        if len(parts) == 1:
            low = high = int(parts[0])
        elif len(parts) == 2:
            low, high = int(parts[0]), int(parts[1])
        else:
            raise ValueError(text)
    except ValueError:
        raise ConfigError(f"invalid map-count range {text!r}: write LOW-HIGH, for example 2-8") from None
    validate_map_range((low, high), text)
    return low, high


def validate_map_range(n_maps: tuple[int, int], text: str | None = None) -> None:
    """Raise ConfigError unless the inclusive range (low, high) has 1 <= low <= high <= MAX_MAPS."""
    low, high = n_maps
    range_text = text if text is not None else f"{low}-{high}"
    if high < low:
        problem = f"the low end {low} exceeds the high end {high}"
    elif low < 1:
        problem = "a system needs at least 1 map"
    elif high > MAX_MAPS:
        problem = f"the renderer supports at most {MAX_MAPS} maps"
    else:
        return
    raise ConfigError(f"invalid map-count range {range_text!r} ({problem}): write LOW-HIGH, for example 2-8")


def sample_singular_values(n: int, sigma_factor: float, rng: np.random.Generator) -> np.ndarray:
    """Draw singular values of n maps whose weighted sum sum_i (s_i1 + 2 s_i2) equals sigma_factor.

    Returns an (n, 2) array with 1 >= s_i1 >= s_i2 >= 0. The pairs are drawn one after another, each
    uniform within the bounds that keep the remainder reachable by the maps still to come, as in
    Anderson & Farrell's public sampler. sigma_factor must lie in [0, 3 n].
    """
    if not 0.0 <= sigma_factor <= 3.0 * n:
        raise ValueError(f"sigma factor {sigma_factor} is outside [0, {3 * n}]")
    values = np.empty((n, 2), dtype=np.float64)

    # `remaining` is what the maps k..n-1 still have to contribute. Each map contributes at most 3
    # (s1 = s2 = 1), so after map k the remainder must be at most 3 (n - k - 1).
    remaining = sigma_factor
    for k in range(n - 1):
        later_max = 3.0 * (n - k - 1)
        s1 = rng.uniform(max(0.0, (remaining - later_max) / 3.0), min(1.0, remaining))
        remaining -= s1
        s2 = rng.uniform(max(0.0, (remaining - later_max) / 2.0), min(s1, remaining / 2.0))
        remaining -= 2.0 * s2
        values[k] = s1, s2

    # The last pair takes the exact remainder: s1 = r - 2 s2 with s2 <= s1 <= 1.
    s2 = rng.uniform(max(0.0, (remaining - 1.0) / 2.0), remaining / 3.0)
    values[n - 1] = remaining - 2.0 * s2, s2
    return values


def _random_orthogonal(rng: np.random.Generator, count: int, reflections: bool) -> np.ndarray:
    """Draw `count` 2x2 rotations, each times diag(+-1, +-1) when reflections is set."""
    angle = rng.uniform(-np.pi, np.pi, count)
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.empty((count, 2, 2))
    rotation[:, 0, 0] = cos
    rotation[:, 0, 1] = -sin
    rotation[:, 1, 0] = sin
    rotation[:, 1, 1] = cos
    if reflections:
        signs = np.where(rng.random((count, 2)) < 0.5, -1.0, 1.0)
        rotation = rotation * signs[:, None, :]
    return rotation


def sample_sigma_system(
    rng: np.random.Generator,
    n_maps: tuple[int, int] = (2, 8),
    translation: float = 1.0,
    reflections: bool = True,
) -> np.ndarray:
    """Draw one contractive IFS with the sigma-factor sampler; returns an (N, 2, 3) array.

    N is uniform in the inclusive range n_maps, the sigma factor uniform in
    [(5 + N) / 2, (6 + N) / 2] and each translation uniform in [-translation, translation]^2.
    """
    n = int(rng.integers(n_maps[0], n_maps[1] + 1))
    rotations = _random_orthogonal(rng, 2 * n, reflections)
    u, v = rotations[:n], rotations[n:]
    sigma_factor = rng.uniform((5 + n) / 2, (6 + n) / 2)
    singular = sample_singular_values(n, min(sigma_factor, 3.0 * n), rng)
    system = np.empty((n, 2, 3))
    system[:, :, :2] = (u * singular[:, None, :]) @ v
    system[:, :, 2] = rng.uniform(-translation, translation, (n, 2))
    return system


def sample_fractaldb_system(rng: np.random.Generator, n_maps: tuple[int, int] = (2, 8)) -> np.ndarray:
    """Draw one unconstrained FractalDB IFS: N uniform in n_maps, all six entries uniform in [-1, 1]."""
    n = int(rng.integers(n_maps[0], n_maps[1] + 1))
    return rng.uniform(-1.0, 1.0, (n, 2, 3))


def _system_rng(seed: int, index: int) -> np.random.Generator:
    # One stream per system index, so the first k systems do not depend on how many were drawn.
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def sample_sigma_systems(
    count: int,
    seed: int = 0,
    n_maps: tuple[int, int] = (2, 8),
    translation: float = 1.0,
    reflections: bool = True,
    progress: Callable[[int], None] | None = None,
) -> SystemSet:
    """Draw `count` contractive systems with the sigma-factor sampler (Anderson & Farrell).

    System i comes from a generator seeded with (seed, i), so a larger count extends a smaller one.
    `progress`, when given, is called with the number of systems finished.
    """
    _validate_count(count)
    validate_map_range(n_maps)
    systems = []
    for index in range(count):
        systems.append(sample_sigma_system(_system_rng(seed, index), n_maps, translation, reflections))
        if progress is not None:
            progress(index + 1)
    settings = {
        "format_version": FORMAT_VERSION,
        "sampler": "sigma",
        "seed": int(seed),
        "count": int(count),
        "n_maps": [int(n_maps[0]), int(n_maps[1])],
        "sigma_factor_band": "[(5 + N) / 2, (6 + N) / 2]",
        "translation": float(translation),
        "reflections": bool(reflections),
    }
    return SystemSet.from_list(systems, settings)


def filling_rate(system: np.ndarray, size: int = 512, points: int = 100_000, seed: int = 0) -> float:
    """Return the fraction of pixels that a binary chaos-game rendering of the system covers.

    Returns 0.0 when the chaos game diverges (non-finite or exploding points). FractalDB measures
    the rate on a 512x512 image of 100,000 points, the defaults here. The chaos game's seed is
    fixed, so a system's rate is reproducible.
    """
    from bench.fractals.render import render_coverage

    return render_coverage(system, size=size, points=points, seed=seed)


def sample_fractaldb_systems(
    count: int,
    seed: int = 0,
    n_maps: tuple[int, int] = (2, 8),
    min_filling_rate: float = 0.2,
    size: int = 512,
    points: int = 100_000,
    max_tries: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SystemSet:
    """Draw `count` FractalDB systems, keeping candidates whose filling rate is >= min_filling_rate.

    Candidate j comes from a generator seeded with (seed, j). FractalDB's own search drew N from
    2-7, so pass n_maps=(2, 7) to match it. Raises ConfigError when max_tries candidates (default
    1000 per requested system) yield fewer than `count` systems.
    """
    _validate_count(count)
    validate_map_range(n_maps)
    if not 0.0 <= min_filling_rate <= 1.0:
        raise ConfigError(f"invalid filling rate {min_filling_rate}: use a fraction in [0, 1], for example 0.2")
    limit = max_tries if max_tries is not None else 1000 * max(count, 1)
    systems: list[np.ndarray] = []
    candidate = 0
    while len(systems) < count:
        if candidate >= limit:
            raise ConfigError(
                f"only {len(systems)} of {count} FractalDB systems reached filling rate "
                f"{min_filling_rate} in {limit} candidates: lower the filling rate or the count"
            )
        system = sample_fractaldb_system(_system_rng(seed, candidate), n_maps)
        rate = filling_rate(system, size=size, points=points)
        candidate += 1
        if rate >= min_filling_rate:
            systems.append(system)
            if progress is not None:
                progress(len(systems))
    logger.info("FractalDB sampler kept %d of %d candidates", count, candidate)
    settings = {
        "format_version": FORMAT_VERSION,
        "sampler": "fractaldb",
        "seed": int(seed),
        "count": int(count),
        "n_maps": [int(n_maps[0]), int(n_maps[1])],
        "min_filling_rate": float(min_filling_rate),
        "filling_size": int(size),
        "filling_points": int(points),
        "candidates": int(candidate),
    }
    return SystemSet.from_list(systems, settings)


def _validate_count(count: int) -> None:
    if count < 1:
        raise ConfigError(f"invalid system count {count}: request at least 1 system")


def save_systems(systems: SystemSet, path: str | Path) -> Path:
    """Write the systems and their settings to an npz file; returns the path written."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"invalid systems file name {str(path)!r}: use the .npz extension")
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = json.dumps(systems.settings, sort_keys=True)
    # Write through a temporary name so that an interrupted save leaves no truncated file.
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez(temporary, maps=systems.maps, offsets=systems.offsets, settings=np.array(settings))
    temporary.replace(path)
    return path


def load_systems(path: str | Path) -> SystemSet:
    """Read systems written by `save_systems`; raises ConfigError for a missing or invalid file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"systems file {str(path)!r} not found: create it with `bench fractals sample --out {path}`"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            maps = np.asarray(data["maps"], dtype=np.float64)
            offsets = np.asarray(data["offsets"], dtype=np.int64)
            settings = json.loads(str(data["settings"]))
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(
            f"invalid systems file {str(path)!r} ({exc}): recreate it with `bench fractals sample`"
        ) from None
    if maps.ndim != 3 or maps.shape[1:] != (2, 3) or offsets.ndim != 1 or len(offsets) < 2:
        raise ConfigError(f"invalid systems file {str(path)!r}: array shapes do not describe IFS maps")
    if offsets[0] != 0 or offsets[-1] != len(maps) or np.any(np.diff(offsets) < 1):
        raise ConfigError(f"invalid systems file {str(path)!r}: system offsets are inconsistent")
    return SystemSet(maps=maps, offsets=offsets, settings=settings)


def file_sha256(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
