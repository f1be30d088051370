"""Fractal pre-training datasets: the published recipes and a torch Dataset that renders on the fly.

Recipes:

* ``single`` (Anderson & Farrell, WACV 2022): class c is system c. Every image is a new augmented
  rendering with jitter, window scale and shift, stamp, flips, hue colouring, plasma background
  and blur.
* ``multi-system`` (Ugwu et al. 2024, "Fractals as pre-training datasets for anomaly detection and
  localization", public fractal4AD code): the systems are split into `classes` equal groups of
  consecutive systems, and an image of class c shows one system of group c. Consecutive images of
  a class walk through the group in equal blocks, and systems beyond classes x group size are
  unused. With `objects` above 1 an image pastes several systems of its group. Ugwu et al. render without stamp and background, the defaults here.
* ``ofdb`` (one-instance fractal database): one fixed fractal instance per class, whose map
  choices, stamp and colour are seeded by the class. Its `per_class` views differ only by strong
  augmentation (window crop and zoom, flips, blur), for long training on few images.
* ``multi-instance`` (Anderson & Farrell): 1-5 fractals of random classes, each 0.15-0.6 of the
  image side, pasted over a plasma background. The target is the multi-hot vector of the classes
  drawn, and image i always contains class i // per_class.

Image i of a dataset depends only on (recipe, seed, epoch, i), never on the process or worker that
renders it, so DataLoader workers need no worker_init_fn.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.errors import ConfigError
from bench.fractals import kernels
from bench.fractals.render import (
    RenderConfig,
    image_seed,
    render_composite_image,
    render_image,
)
from bench.fractals.catalog import DEFAULT_CLASSES, DEFAULT_PER_CLASS, RECIPES
from bench.fractals.systems import SystemSet, load_systems



def default_render_config(recipe: str, size: int = 256, points: int = 100_000) -> RenderConfig:
    """Return the recipe's default rendering settings at the given size and point count.

    single, multi-system and multi-instance use their source's published generator settings.
    """
    base = RenderConfig(size=size, points=points)
    if recipe == "single":
        return base
    if recipe == "multi-system":
        return replace(base, stamp=False, background=False)
    if recipe == "ofdb":
        # Strong augmentation of a fixed instance: crops of 40-100% of the extent (zoom up to
        # 2.5x), shifts up to 30% of the extent, flips and blur. Jitter is off because it would
        # change the instance.
        return replace(
            base, jitter=False, background=False, stamp=False, window_scale=(0.4, 1.0), window_shift=0.3
        )
    if recipe == "multi-instance":
        return replace(base, jitter=False, window_scale=(1.0, 1.0), window_shift=0.0)
    raise ConfigError(f"unknown recipe {recipe!r}: use one of {', '.join(RECIPES)}")


@dataclass(frozen=True)
class RecipeSpec:
    """A recipe with its sizes: `classes` x `per_class` images rendered with `render`.

    objects: inclusive range of fractals per image (multi-instance, multi-system).
    object_size: side of each pasted fractal as a fraction of the image side.
    """

    name: str
    classes: int
    per_class: int
    render: RenderConfig
    seed: int = 0
    objects: tuple[int, int] = (1, 1)
    object_size: tuple[float, float] = (0.15, 0.6)
    augment: bool = True

    def __len__(self) -> int:
        return self.classes * self.per_class

    @property
    def multi_label(self) -> bool:
        """Whether targets are multi-hot vectors (multi-instance) rather than class indices."""
        return self.name == "multi-instance"


def make_recipe(
    name: str,
    n_systems: int,
    classes: int | None = None,
    per_class: int | None = None,
    size: int = 256,
    points: int = 100_000,
    seed: int = 0,
    augment: bool = True,
    objects: tuple[int, int] | None = None,
    render: RenderConfig | None = None,
) -> RecipeSpec:
    """Validate the options of a recipe over `n_systems` systems and return its spec.

    classes defaults to min(1000, n_systems); per_class to the recipe's default (1 for ofdb,
    else 1000). objects defaults to (1, 5) for multi-instance and (1, 1) otherwise. With augment
    False the images have no jitter, window scale or shift, flips or blur. Raises ConfigError
    naming the invalid value.
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}: use one of {', '.join(RECIPES)}")
    if size < 8:
        raise ConfigError(f"invalid image size {size}: use at least 8 pixels, for example 256")
    if points < 1:
        raise ConfigError(f"invalid point count {points}: use at least 1, for example 100000")
    if classes is None:
        classes = min(DEFAULT_CLASSES, n_systems)
    if per_class is None:
        per_class = DEFAULT_PER_CLASS[name]
    if classes < 1:
        raise ConfigError(f"invalid class count {classes}: use at least 1")
    if per_class < 1:
        raise ConfigError(f"invalid images per class {per_class}: use at least 1")
    if classes > n_systems:
        raise ConfigError(
            f"recipe {name!r} needs at least one system per class, but {classes} classes exceed the "
            f"{n_systems} systems: lower --classes or sample more systems"
        )
    if objects is None:
        objects = (1, 5) if name == "multi-instance" else (1, 1)
    if objects[0] < 1 or objects[1] < objects[0]:
        raise ConfigError(f"invalid object range {objects[0]}-{objects[1]}: use LOW-HIGH with 1 <= LOW <= HIGH")
    if objects != (1, 1) and name in ("single", "ofdb"):
        raise ConfigError(f"recipe {name!r} draws one fractal per image: drop --objects or use multi-instance")

    config = render if render is not None else default_render_config(name, size, points)
    if not augment:
        config = config.without_augmentation()
    return RecipeSpec(
        name=name, classes=classes, per_class=per_class, render=config, seed=seed, objects=objects, augment=augment
    )


class FractalImages:
    """Render the images of a recipe by index; shared by the torch Dataset, export and preview.

    image(i) returns uint8 (size, size, 3) RGB; target(i) returns an int class, or for
    multi-instance the sorted list of classes drawn. Both depend only on (recipe, seed, epoch, i).
    """

    def __init__(self, systems: SystemSet, spec: RecipeSpec, epoch: int = 0) -> None:
        self.systems = systems
        self.spec = spec
        self.epoch = epoch
        self.systems_per_class = len(systems) // spec.classes if spec.name == "multi-system" else 1

        # Class c draws its systems from pool_systems[pool_offsets[c]:pool_offsets[c + 1]].
        per_pool = self.systems_per_class
        self.pool_systems = np.arange(spec.classes * per_pool, dtype=np.int64)
        self.pool_offsets = np.arange(spec.classes + 1, dtype=np.int64) * per_pool

    def __len__(self) -> int:
        return len(self.spec)

    def class_of(self, index: int) -> int:
        """Return the class of image `index` (the first object's class for multi-instance)."""
        return index // self.spec.per_class

    def system_of(self, index: int) -> int:
        """Return the system drawn by single-fractal image `index`."""
        spec = self.spec
        label = self.class_of(index)
        if spec.name == "multi-system":
            # Consecutive images of a class cycle through its group in equal blocks (Ugwu et al.).
            within = index % spec.per_class
            return label * self.systems_per_class + (within * self.systems_per_class) // spec.per_class
        return label

    def seeds(self, index: int) -> tuple[int, int]:
        """Return the (instance, view) seeds of image `index`."""
        spec = self.spec
        view = image_seed(spec.seed, f"{spec.name}/view/{self.epoch}", index)
        if spec.name == "ofdb":
            # One instance per class: its seed ignores the image index and the epoch.
            return image_seed(spec.seed, "ofdb/instance", self.class_of(index)), view
        return image_seed(spec.seed, f"{spec.name}/instance/{self.epoch}", index), view

    def render(self, index: int, out: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
        """Render image `index`; returns (uint8 image, classes of the fractals drawn)."""
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} is outside [0, {len(self)})")
        spec = self.spec
        instance_seed, view_seed = self.seeds(index)
        label = self.class_of(index)
        if spec.objects == (1, 1):
            image = render_image(
                self.systems.system(self.system_of(index)), instance_seed, spec.render, view_seed, out=out
            )
            return image, [label]
        return render_composite_image(
            self.systems, self.pool_offsets, self.pool_systems, label, view_seed, spec.render,
            spec.objects, spec.object_size, same_class=spec.name == "multi-system", out=out,
        )

    def image(self, index: int) -> np.ndarray:
        """Return image `index` as uint8 (size, size, 3) RGB."""
        return self.render(index)[0]

    def target(self, index: int) -> int | list[int]:
        """Return the target of image `index`: its class, or the sorted classes drawn (multi-instance)."""
        if self.spec.multi_label:
            return sorted(set(self.render(index)[1]))
        return self.class_of(index)


def _as_systems(systems: SystemSet | str | Path) -> SystemSet:
    return systems if isinstance(systems, SystemSet) else load_systems(systems)


class FractalDataset(Dataset):
    """Torch Dataset that renders fractal images of a recipe on the fly.

    Item i is (image, target): image is a float32 tensor (3, size, size) in [0, 1]; target is an
    int class, or for multi-instance a float32 multi-hot tensor of length `classes`. Items depend
    only on (recipe, seed, epoch, i), so any number of DataLoader workers gives the same data.
    Call set_epoch(e) before each epoch for fresh random views (takes effect in workers started
    afterwards, so use persistent_workers=False).
    """

    def __init__(
        self,
        systems: SystemSet | str | Path,
        recipe: str = "single",
        classes: int | None = None,
        per_class: int | None = None,
        size: int = 256,
        seed: int = 0,
        augment: bool = True,
        points: int = 100_000,
        objects: tuple[int, int] | None = None,
        render: RenderConfig | None = None,
    ) -> None:
        self.systems = _as_systems(systems)
        self.spec = make_recipe(
            recipe, len(self.systems), classes=classes, per_class=per_class, size=size, points=points,
            seed=seed, augment=augment, objects=objects, render=render,
        )
        self.images = FractalImages(self.systems, self.spec)

    @property
    def classes(self) -> int:
        """Number of classes."""
        return self.spec.classes

    def set_epoch(self, epoch: int) -> None:
        """Select the random views of epoch `epoch` (the ofdb instances stay fixed)."""
        self.images.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        image, drawn = self.images.render(index)
        size = self.spec.render.size
        pixels = np.empty((3, size, size), dtype=np.float32)
        kernels.to_float_chw(image, pixels)
        tensor = torch.from_numpy(pixels)
        if self.spec.multi_label:
            target = torch.zeros(self.spec.classes, dtype=torch.float32)
            target[drawn] = 1.0
            return tensor, target
        return tensor, drawn[0]
