"""Render IFS fractal images on the CPU: configuration, workspaces and the public render calls.

An image is a function of (system, image seed, RenderConfig) only: all random choices come from a
stream seeded inside the numba kernels, so any process renders the same bytes. `image_seed` derives
the per-image seed from a dataset seed, a stream name and an image index.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import asdict, dataclass, replace

import numpy as np

from bench.errors import ConfigError
from bench.fractals import kernels
from bench.fractals.systems import SystemSet

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class RenderConfig:
    """Settings of one rendered fractal image; the defaults follow Anderson & Farrell (WACV 2022).

    size: image side in pixels. points: chaos-game points per image (rounded up to a multiple of
    4, the number of interleaved chains). color: hue from density
    (False: grey). graded: grey level or hue from point density (False: binary). stamp: a random
    3x3 binary stamp per point. background: diamond-square plasma (False: black). jitter: scale one
    map by U(jitter_range). window_scale, window_shift: window extent times U(window_scale) and
    centre moved by U(-window_shift, window_shift) times the extent, per axis. flips: random
    transposes and flips. blur_p, blur_sigma: probability and sigma range of the 3x3 Gaussian blur.
    saturation, value: ranges of the per-image HSV saturation and value.
    """

    size: int = 256
    points: int = 100_000
    color: bool = True
    graded: bool = True
    stamp: bool = True
    background: bool = True
    jitter: bool = True
    jitter_range: tuple[float, float] = (0.8, 1.1)
    window_scale: tuple[float, float] = (0.5, 2.0)
    window_shift: float = 0.2
    flips: bool = True
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    saturation: tuple[float, float] = (0.3, 1.0)
    value: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ConfigError(f"invalid image size {self.size}: use at least 8 pixels, for example 256")
        if self.points < 1:
            raise ConfigError(f"invalid point count {self.points}: use at least 1, for example 100000")
        for name in ("jitter_range", "window_scale", "blur_sigma", "saturation", "value"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high:
                raise ConfigError(f"invalid {name} ({low}, {high}): use 0 <= low <= high")
        if not 0.0 <= self.blur_p <= 1.0:
            raise ConfigError(f"invalid blur probability {self.blur_p}: use a value in [0, 1]")

    def without_augmentation(self) -> "RenderConfig":
        """Return a copy without jitter, window scale or shift, flips and blur."""
        return replace(self, jitter=False, window_scale=(1.0, 1.0), window_shift=0.0, flips=False, blur_p=0.0)

    def options(self) -> np.ndarray:
        """Return the float64 options vector that the numba kernels read (kernels.OPT_*)."""
        o = np.zeros(kernels.OPTION_COUNT, dtype=np.float64)
        o[kernels.OPT_POINTS] = self.points
        o[kernels.OPT_COLOR] = self.color
        o[kernels.OPT_GRADED] = self.graded
        o[kernels.OPT_STAMP] = self.stamp
        o[kernels.OPT_BACKGROUND] = self.background
        o[kernels.OPT_JITTER] = self.jitter
        o[kernels.OPT_JITTER_LOW], o[kernels.OPT_JITTER_HIGH] = self.jitter_range
        o[kernels.OPT_SCALE_LOW], o[kernels.OPT_SCALE_HIGH] = self.window_scale
        o[kernels.OPT_SHIFT] = self.window_shift
        o[kernels.OPT_FLIPS] = self.flips
        o[kernels.OPT_BLUR_P] = self.blur_p
        o[kernels.OPT_BLUR_SIGMA_LOW], o[kernels.OPT_BLUR_SIGMA_HIGH] = self.blur_sigma
        o[kernels.OPT_SATURATION_LOW], o[kernels.OPT_SATURATION_HIGH] = self.saturation
        o[kernels.OPT_VALUE_LOW], o[kernels.OPT_VALUE_HIGH] = self.value
        return o

    def window_augment(self) -> bool:
        """Return whether the window is scaled or shifted at random."""
        return self.window_shift > 0.0 or self.window_scale != (1.0, 1.0)

    def to_dict(self) -> dict:
        """Return the settings as JSON-ready values."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


class Workspace:
    """Scratch arrays of the renderer for images up to `size` pixels and `points` points.

    Reusing one workspace avoids allocating (and page-faulting) about 1 MB per image.
    """

    def __init__(self, size: int, points: int) -> None:
        steps = (points + kernels.CHAINS - 1) // kernels.CHAINS
        levels = max(1, int(np.ceil(np.log2(size))))
        self.size = size
        self.points = points
        self.buffer = np.empty((2, kernels.CHAINS * steps), dtype=np.float32)
        self.table = np.empty(kernels.CHOICE_TABLE_SIZE, dtype=np.uint8)
        self.indices = np.empty(kernels.CHAINS * steps, dtype=np.int32)
        self.counts = np.empty((size + 2) * (size + 2) + 1, dtype=np.uint32)
        self.density = np.empty(size * size, dtype=np.uint32)
        self.colours = np.empty((kernels.HUE_LEVELS, 3), dtype=np.uint8)
        self.grid = np.empty(((1 << levels) + 1, (1 << levels) + 1), dtype=np.float64)
        self.noise = np.empty((1 << levels) + 1, dtype=np.float64)
        self.levels_table = np.empty((kernels.BACKGROUND_LEVELS, 3), dtype=np.uint8)
        self.scratch = np.empty(size * size * 3, dtype=np.uint16)


# One cache per thread: two threads rendering at once must not share scratch arrays.
_workspaces = threading.local()


def workspace_for(size: int, points: int) -> Workspace:
    """Return this thread's cached workspace for the size and point count."""
    cache = getattr(_workspaces, "by_shape", None)
    if cache is None:
        cache = _workspaces.by_shape = {}
    key = (size, points)
    workspace = cache.get(key)
    if workspace is None:
        workspace = Workspace(size, points)
        cache[key] = workspace
    return workspace


def stream_code(name: str) -> int:
    """Return a stable 64-bit code for a stream name (recipe, purpose), independent of Python's hash."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _splitmix64(value: int) -> int:
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def image_seed(seed: int, stream: str, index: int) -> int:
    """Return the 64-bit seed of image `index` of the named stream of a dataset seed.

    The value depends only on the arguments, so every process and data-loader worker derives the
    same seed for the same image.
    """
    mixed = _splitmix64((int(seed) & _MASK64) ^ stream_code(stream))
    return _splitmix64(mixed ^ _splitmix64(int(index) & _MASK64))


def view_seed_of(seed: int) -> int:
    """Return the view seed that pairs with an instance seed when the caller gives only one seed."""
    return _splitmix64(int(seed) ^ 0x5BD1E995)


def render_image(
    system: np.ndarray,
    seed: int,
    config: RenderConfig = RenderConfig(),
    view_seed: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Render one IFS ((N, 2, 3) maps) into a uint8 (size, size, 3) RGB image and return it.

    `seed` fixes the fractal instance (map choices, stamp, colour) and `view_seed` (default derived
    from seed) its augmentation, background and blur. The image depends only on the system, the
    seeds and the config.
    """
    system = np.ascontiguousarray(system, dtype=np.float64)
    if view_seed is None:
        view_seed = view_seed_of(seed)
    if out is None:
        out = np.empty((config.size, config.size, 3), dtype=np.uint8)
    work = workspace_for(config.size, config.points)
    ok = kernels.render_single(
        system, np.uint64(seed), np.uint64(view_seed), config.options(), config.window_augment(),
        work.buffer, work.indices, work.table, work.counts, work.density, work.colours,
        work.grid, work.noise, work.levels_table, work.scratch, out,
    )
    if not ok:
        logger.warning("chaos game diverged for seed %d; the image shows only the background", seed)
    return out


def render_batch(
    systems: SystemSet,
    system_indices: np.ndarray,
    seeds: np.ndarray,
    config: RenderConfig = RenderConfig(),
    view_seeds: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Render one image per (system index, seed) pair in a single numba call.

    Returns uint8 images of shape (B, size, size, 3); image b equals
    render_image(systems.system(system_indices[b]), seeds[b], config, view_seeds[b]).
    """
    system_indices = np.ascontiguousarray(system_indices, dtype=np.int64)
    seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
    if system_indices.shape != seeds.shape or system_indices.ndim != 1:
        raise ValueError("system_indices and seeds must be 1D arrays of the same length")
    if view_seeds is None:
        view_seeds = np.array([view_seed_of(int(s)) for s in seeds], dtype=np.uint64)
    view_seeds = np.ascontiguousarray(view_seeds, dtype=np.uint64)
    if out is None:
        out = np.empty((len(seeds), config.size, config.size, 3), dtype=np.uint8)
    status = np.empty(len(seeds), dtype=np.bool_)
    work = workspace_for(config.size, config.points)
    kernels.render_single_batch(
        systems.maps, systems.offsets, system_indices, seeds, view_seeds, config.options(),
        config.window_augment(),
        work.buffer, work.indices, work.table, work.counts, work.density, work.colours,
        work.grid, work.noise, work.levels_table, work.scratch, out, status,
    )
    if not status.all():
        logger.warning("chaos game diverged for %d of %d images", int((~status).sum()), len(status))
    return out


def render_composite_image(
    systems: SystemSet,
    pool_offsets: np.ndarray,
    pool_systems: np.ndarray,
    first_class: int,
    seed: int,
    config: RenderConfig,
    objects: tuple[int, int],
    object_size: tuple[float, float],
    same_class: bool,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Render several fractals pasted over one background; returns (image, class of each object).

    Class c draws its systems from pool_systems[pool_offsets[c]:pool_offsets[c + 1]]. The object
    count is uniform in the inclusive range `objects` and each side is U(object_size) times the
    image side. Object 0 has first_class; the others share it when same_class, else their class
    is uniform over all classes. All choices come from `seed`.
    """
    if out is None:
        out = np.empty((config.size, config.size, 3), dtype=np.uint8)
    classes = np.empty(objects[1], dtype=np.int64)
    work = workspace_for(config.size, config.points)
    count = kernels.render_composite(
        systems.maps, systems.offsets, pool_offsets, pool_systems, first_class, np.uint64(seed),
        config.options(), objects[0], objects[1], object_size[0], object_size[1], same_class,
        work.buffer, work.indices, work.table, work.counts, work.density, work.colours,
        work.grid, work.noise, work.levels_table, work.scratch, out, classes,
    )
    return out, [int(c) for c in classes[:count]]


def render_density(system: np.ndarray, size: int = 256, points: int = 100_000, seed: int = 0) -> np.ndarray:
    """Return uint32 point counts (size, size) of a plain rendering: window = bounding box, no stamp.

    All zeros when the chaos game diverges.
    """
    system = np.ascontiguousarray(system, dtype=np.float64)
    density = np.empty((size, size), dtype=np.uint32)
    kernels.plain_density(system, size, points, np.uint64(int(seed) & _MASK64), density)
    return density


def render_coverage(system: np.ndarray, size: int = 256, points: int = 100_000, seed: int = 0) -> float:
    """Return the fraction of pixels that a plain binary rendering of the system covers.

    No augmentation: the window is the bounding box of the points. Returns 0.0 for a diverging
    chaos game.
    """
    return float(np.count_nonzero(render_density(system, size, points, seed))) / (size * size)
