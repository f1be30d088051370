"""Training and held-out data of a pre-training run: rendered fractals or an ImageFolder tree.

Every training item is addressed by a key (epoch, index) and depends only on the run's seed and
that key, so the data order is a function of the global step alone. `EpochBatchSampler` reads the
global step when an epoch's iteration starts, which makes a resumed run continue with exactly the
batch that the interrupted run would have drawn next, with any number of workers or devices.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from bench.errors import ConfigError
from bench.fractals.recipes import FractalDataset
from bench.fractals.render import image_seed
from bench.fractals.systems import SystemSet, load_systems, sample_sigma_systems, save_systems
from bench.pretrain.config import PretrainConfig

logger = logging.getLogger(__name__)

# Held-out fractal images are the recipe's images of this epoch number, which training never
# reaches, so their instance and view seeds differ from every training image's.
HELD_OUT_EPOCH = -1

# Systems per class of the multi-system recipe when no count is given: the study's 100,000 systems
# for 1000 classes.
MULTI_SYSTEM_PER_CLASS = 100

SYSTEMS_FILE = "systems.npz"


def default_system_count(config: PretrainConfig) -> int:
    """Return the number of systems the recipe needs when --system-count is not given."""
    if config.recipe == "multi-system":
        return MULTI_SYSTEM_PER_CLASS * config.classes
    return config.classes


def systems_digest(systems: SystemSet) -> str:
    """Return the SHA-256 of the systems' maps and offsets: equal systems give equal digests."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(systems.offsets, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(systems.maps, dtype=np.float64).tobytes())
    return digest.hexdigest()


def sample_systems(config: PretrainConfig) -> SystemSet:
    """Draw the run's IFS systems in memory with the sigma-factor sampler, seeded with the run's seed."""
    count = config.system_count if config.system_count is not None else default_system_count(config)
    logger.info("sampling %d IFS systems with seed %d", count, config.seed)
    return sample_sigma_systems(count, seed=config.seed)


def store_systems(systems: SystemSet, run_dir: Path) -> Path:
    """Save the run's systems beside its checkpoints; returns the path written."""
    return save_systems(systems, run_dir / SYSTEMS_FILE)


def load_run_systems(run_dir: Path, expected_digest: str | None) -> SystemSet:
    """Load the systems saved in a run folder; raises ConfigError unless their digest is `expected_digest`."""
    path = run_dir / SYSTEMS_FILE
    if not path.is_file():
        raise ConfigError(f"{path} not found: the run's IFS systems must stay beside last.ckpt to resume it")
    systems = load_systems(path)
    if systems_digest(systems) != expected_digest:
        raise ConfigError(f"{path} contains other systems than the checkpoint was trained on: restore the run's own systems.npz")
    return systems


def fractal_datasets(config: PretrainConfig, systems: SystemSet) -> tuple[FractalDataset, FractalDataset]:
    """Return the training dataset (one epoch of images) and the held-out dataset of the recipe.

    Both hold `classes` classes; training has samples_per_epoch / classes images per class, the
    held-out set held_out_per_class images per class from HELD_OUT_EPOCH.
    """
    common = {
        "recipe": config.recipe, "classes": config.classes, "size": config.image_size, "seed": config.seed,
        "points": config.render_points, "objects": config.objects,
    }
    train = FractalDataset(systems, per_class=config.samples_per_epoch // config.classes, **common)
    held_out = FractalDataset(systems, per_class=config.held_out_per_class, **common)
    held_out.set_epoch(HELD_OUT_EPOCH)
    return train, held_out


class FolderImages(Dataset):
    """Images of an ImageFolder tree as float32 (3, size, size) tensors in [0, 1] with class targets.

    Training items get RandomResizedCrop with torchvision's defaults (scale 0.08-1, aspect ratio
    3/4-4/3) and horizontal flips, as in ImageNet training. The random draws are seeded by
    (seed, epoch, index), so an item never depends on the worker that loads it. Held-out items are
    only resized.
    """

    def __init__(self, samples: list[tuple[str, int]], size: int, train: bool, seed: int) -> None:
        self.samples = samples
        self.seed = seed
        self.epoch = 0
        self.train = train
        if train:
            steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            steps = [v2.Resize((size, size), antialias=True)]
        self.transform = v2.Compose([v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True)])

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops and flips of epoch `epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise ConfigError(f"cannot read training image {path} ({error}): remove or replace the file") from None
        if not self.train:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(image_seed(self.seed, f"folder/{self.epoch}", index))
            return self.transform(image), label


@dataclass(frozen=True)
class FolderData:
    """An ImageFolder tree split into training and held-out samples."""

    classes: list[str]
    train: list[tuple[str, int]]
    held_out: list[tuple[str, int]]


def _scan(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as error:
        raise ConfigError(
            f"invalid --data-dir {root}: {error}; expected ROOT/<class>/<image> (ImageFolder layout), "
            f"for example from `bench fractals render`"
        ) from None
    return folder.classes, folder.samples


def scan_folder(root: Path, held_out_per_class: int, seed: int) -> FolderData:
    """Split an ImageFolder tree into training and held-out samples.

    With ROOT/train and ROOT/val both present, those are the two splits (same class folders).
    Otherwise held_out_per_class images per class, drawn with `seed`, are held out of training.
    Raises ConfigError for a missing or empty tree.
    """
    if not root.is_dir():
        raise ConfigError(f"--data-dir {root} not found: pass a folder of class subfolders (ImageFolder layout)")
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, train = _scan(root / "train")
        val_classes, held_out = _scan(root / "val")
        if val_classes != classes:
            raise ConfigError(f"--data-dir {root}: train/ and val/ have different class folders; use the same classes in both")
        return FolderData(classes, train, held_out)

    classes, samples = _scan(root)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x484F4C44]))
    train, held_out = [], []
    for label in range(len(classes)):
        members = by_class.get(label, [])
        if len(members) <= held_out_per_class:
            raise ConfigError(
                f"class folder {classes[label]!r} of {root} has {len(members)} images, but {held_out_per_class} are held "
                f"out for accuracy: lower --held-out-per-class or add train/ and val/ folders"
            )
        order = rng.permutation(len(members))
        held_out += [members[i] for i in sorted(order[:held_out_per_class])]
        train += [members[i] for i in sorted(order[held_out_per_class:])]
    return FolderData(classes, train, held_out)


class EpochItems(Dataset):
    """Wrap a dataset with set_epoch(e) so that items are fetched by (epoch, index) keys."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


class EpochBatchSampler:
    """Yield this process's batches of (epoch, index) keys from the current training position.

    Global batch k of epoch e is permutation(e)[k * batch_size:(k + 1) * batch_size], and process
    `rank` of `world_size` takes every world_size-th key of it, so the images of a global step do
    not depend on the number of processes. `position()` returns the optimizer steps already taken
    (Lightning's global step); an iteration starts at that step's epoch and batch.
    """

    def __init__(self, length: int, batch_size: int, seed: int, rank: int, world_size: int,
                 position: Callable[[], int]) -> None:
        self.length = length
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = position
        self.steps_per_epoch = length // batch_size

    def __len__(self) -> int:
        return self.steps_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        """Return the order of the dataset's indices in epoch `epoch`."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0x53414D50]))
        return rng.permutation(self.length)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        done = self.position()
        epoch, start = divmod(done, self.steps_per_epoch)
        if start:
            logger.info("resuming epoch %d at batch %d of %d", epoch, start, self.steps_per_epoch)
        order = self.permutation(epoch)
        for within in range(start, self.steps_per_epoch):
            indices = order[within * self.batch_size:(within + 1) * self.batch_size]
            yield [(epoch, int(index)) for index in indices[self.rank::self.world_size]]


def seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's generators in a DataLoader worker from its torch seed.

    PyTorch seeds worker w with base_seed + w, where base_seed is drawn per epoch from the loader's
    generator, so the seeds differ per worker and per epoch. Items are seeded by their own key, so
    these seeds only matter to third-party code that draws from the global generators.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def train_loader(dataset: Dataset, config: PretrainConfig, rank: int, world_size: int, position: Callable[[], int],
                 workers: int, pin_memory: bool) -> DataLoader:
    """Return the training DataLoader of one process, starting at the training position."""
    sampler = EpochBatchSampler(len(dataset), config.batch_size, config.seed, rank, world_size, position)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + rank)
    return DataLoader(
        EpochItems(dataset), batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        worker_init_fn=seed_worker, generator=generator, persistent_workers=False,
    )


def held_out_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    """Return a DataLoader over the held-out images in index order."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, worker_init_fn=seed_worker)
