"""Pre-training configurations: the options that define a run, presets, validation and the run id.

`PretrainConfig` contains everything that changes the trained weights, and its hash names the run
folder. `RuntimeOptions` contains what may change between a run and its resume (devices, workers,
precision).
The defaults are the settings of the fractal anomaly-detection study (Ugwu, Casarin and Lanz,
CVPR 2024 Workshops): WideResNet-50-2, 1000 classes from 100,000 IFS systems, 100 epochs of
1,000,000 images at 256 px, batch 512, SGD with lr 0.1, momentum 0.9, weight decay 1e-4, step decay
at epochs 30 and 60, and inputs normalised with mean 0.2 and std 0.5.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from bench.errors import ConfigError
from bench.fractals.recipes import RECIPES
from bench.weights.architectures import ARCHITECTURES

SCHEDULES = ("step", "onecycle")
# Step decay: the learning rate is multiplied by STEP_GAMMA after 30 % and 60 % of all steps, which
# is epochs 30 and 60 of the study's 100.
STEP_MILESTONES = (0.3, 0.6)
STEP_GAMMA = 0.1

ACCELERATORS = ("auto", "cpu", "gpu")
PRECISIONS = ("32", "16-mixed", "bf16-mixed")

# The smallest input for which every architecture keeps a 1x1 map at its stride-32 level.
MIN_IMAGE_SIZE = 32

# Names with a built-in meaning in the weights registry, which a fractal checkpoint must not shadow.
RESERVED_NAMES = ("random", "imagenet")

# Chaos-game points per image: the study's 100,000 at 256 px, kept at the same points per pixel for
# smaller images but never below MIN_POINTS, under which thin attractors break up.
PAPER_POINTS = 100_000
PAPER_SIZE = 256
MIN_POINTS = 10_000


def default_points(image_size: int) -> int:
    """Return the default chaos-game point count for square images of `image_size` pixels."""
    return max(MIN_POINTS, round(PAPER_POINTS * (image_size / PAPER_SIZE) ** 2))


@dataclass(frozen=True)
class PretrainConfig:
    """The options that determine the trained weights.

    batch_size is the global batch over all devices. mean and std are per-channel input statistics
    on the 0..1 scale. points None means default_points(image_size); system_count None means one
    system per class, or 100 per class for multi-system (the study's 100,000 for 1000 classes).
    With data_dir set, classes and samples_per_epoch come from the folder and the fractal fields
    are unused.
    """

    arch: str = "wide_resnet50_2"
    recipe: str = "multi-system"
    classes: int = 1000
    image_size: int = 256
    epochs: int = 100
    samples_per_epoch: int = 1_000_000
    batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"
    mean: tuple[float, float, float] = (0.2, 0.2, 0.2)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    seed: int = 0
    points: int | None = None
    objects: tuple[int, int] | None = None
    system_count: int | None = None
    systems_digest: str | None = None
    data_dir: str | None = None
    held_out_per_class: int = 20

    @property
    def multi_label(self) -> bool:
        """Whether targets are multi-hot vectors (the multi-instance recipe, trained with BCE)."""
        return self.data_dir is None and self.recipe == "multi-instance"

    @property
    def render_points(self) -> int:
        """Chaos-game points per rendered image."""
        return self.points if self.points is not None else default_points(self.image_size)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch; a last partial global batch is dropped."""
        return self.samples_per_epoch // self.batch_size

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole training."""
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as JSON-ready values."""
        values = asdict(self)
        for key, value in values.items():
            if isinstance(value, tuple):
                values[key] = list(value)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainConfig":
        """Rebuild a configuration from `to_dict` output; unknown keys raise ConfigError."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown pre-training settings {', '.join(unknown)}: the checkpoint comes from a newer bench")
        converted = dict(values)
        for key in ("mean", "std", "objects"):
            if converted.get(key) is not None:
                converted[key] = tuple(converted[key])
        return cls(**converted)

    def run_id(self) -> str:
        """Return the first 12 hex digits of the SHA-256 of the canonical JSON of the configuration."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RuntimeOptions:
    """Options that do not change the data order or the schedule, so a resume may change them.

    precision None means bf16-mixed on GPUs that support it, else 16-mixed on GPU and 32 on CPU.
    workers None means 0 on CPU (the model needs the cores) and up to 8 per GPU process otherwise.
    stop_at_step ends the run early at that global step, keeping last.ckpt for --resume.
    single_thread runs torch's CPU operations on one thread.
    """

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str | None = None
    workers: int | None = None
    checkpoint_every: int = 1000
    stop_at_step: int | None = None
    single_thread: bool = False

    @property
    def world_size(self) -> int:
        """Number of training processes over all nodes."""
        return self.devices * self.num_nodes


# Presets set PretrainConfig fields; explicit options override them.
PRESETS: dict[str, dict[str, Any]] = {
    # The fractal anomaly-detection study's recipe, equal to the defaults (GPU scale).
    "paper": {
        "arch": "wide_resnet50_2", "recipe": "multi-system", "classes": 1000, "system_count": 100_000,
        "image_size": 256, "epochs": 100, "samples_per_epoch": 1_000_000, "batch_size": 512,
        "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "step",
        "mean": (0.2, 0.2, 0.2), "std": (0.5, 0.5, 0.5),
    },
    # A backbone that learns its fractal task well above chance in about 15 minutes on 2 CPU cores.
    # The study's own rendering (multi-system: no stamp, black background) with one system per
    # class. At 32 px the single recipe's stamps and plasma backgrounds blur the classes together.
    # lr is the study's 0.1 at batch 512 scaled linearly to batch 64 (Goyal et al., 2017).
    "cpu-small": {
        "arch": "efficientnet_lite0", "recipe": "multi-system", "classes": 100, "system_count": 100,
        "image_size": 32, "epochs": 5, "samples_per_epoch": 30_000, "batch_size": 64, "lr": 0.0125,
        "schedule": "onecycle", "held_out_per_class": 20,
    },
    # A genuine fractal-trained backbone in about a minute of training, for the README's first command.
    "demo": {
        "arch": "efficientnet_lite0", "recipe": "multi-system", "classes": 10, "system_count": 10,
        "image_size": 32, "epochs": 2, "samples_per_epoch": 6_400, "batch_size": 64, "lr": 0.0125,
        "schedule": "onecycle", "held_out_per_class": 20,
    },
}


# The recipe name of runs on an ImageFolder tree, and the fields that the folder determines.
FOLDER_RECIPE = "folder"
FOLDER_DETERMINED = ("recipe", "classes", "samples_per_epoch", "points", "objects", "system_count", "systems_digest")


def parse_channels(text: str, option: str) -> tuple[float, float, float]:
    """Parse "0.2" or "0.485,0.456,0.406" into three per-channel values; raises ConfigError."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"invalid {option} {text!r}: write one value or three comma-separated values, for example 0.2") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ConfigError(f"invalid {option} {text!r}: give 1 or 3 values (one per RGB channel), not {len(values)}")
    return values


def parse_objects(text: str) -> tuple[int, int]:
    """Parse an inclusive object-count range "LOW-HIGH" or "N"; raises ConfigError."""
    parts = text.strip().split("-")
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, -1)
    except ValueError:
        low, high = 0, -1
    if low < 1 or high < low:
        raise ConfigError(f"invalid --objects {text!r}: write LOW-HIGH with 1 <= LOW <= HIGH, for example 1-5")
    return low, high


def option_name(field_name: str) -> str:
    """Return the command-line option of a PretrainConfig field, e.g. "--samples-per-epoch"."""
    return "--" + field_name.replace("_", "-")


def resolve_config(preset: str | None, options: dict[str, Any]) -> PretrainConfig:
    """Return the defaults, updated by the preset, updated by the options that are not None.

    With options["data_dir"] set the run trains on a folder: recipe becomes "folder", and fractal
    options or --classes / --samples-per-epoch given explicitly raise ConfigError because the folder
    determines them.
    """
    config = PretrainConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
        config = replace(config, **PRESETS[preset])
    given = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(given) - {field.name for field in fields(PretrainConfig)})
    if unknown:
        raise ValueError(f"not PretrainConfig fields: {unknown}")
    if given.get("data_dir") is not None:
        for key in FOLDER_DETERMINED:
            if key in given:
                raise ConfigError(f"{option_name(key)} does not apply to --data-dir, whose folder determines it: drop {option_name(key)}")
        config = replace(config, recipe=FOLDER_RECIPE, points=None, objects=None, system_count=None)
    return replace(config, **given)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_config(config: PretrainConfig) -> None:
    """Raise ConfigError naming the first invalid value of the configuration and its fix."""
    _require(config.arch in ARCHITECTURES, f"unknown --arch {config.arch!r}: use one of {', '.join(sorted(ARCHITECTURES))}")
    if config.data_dir is not None:
        _require(config.recipe == FOLDER_RECIPE, f"--recipe {config.recipe!r} does not apply to --data-dir: drop --recipe")
    else:
        _require(config.recipe in RECIPES, f"unknown --recipe {config.recipe!r}: use one of {', '.join(RECIPES)}")
    _require(config.classes >= 2, f"invalid --classes {config.classes}: use at least 2, for example 100")
    _require(config.image_size >= MIN_IMAGE_SIZE,
             f"invalid --image-size {config.image_size}: use at least {MIN_IMAGE_SIZE} pixels, for example 64")

    _require(config.epochs >= 1, f"invalid --epochs {config.epochs}: use at least 1")
    _require(config.batch_size >= 2, f"invalid --batch-size {config.batch_size}: use at least 2, for example 64")
    _require(config.samples_per_epoch >= config.batch_size,
             f"invalid --samples-per-epoch {config.samples_per_epoch}: use at least the batch size {config.batch_size}")

    _require(config.lr > 0, f"invalid --lr {config.lr}: use a positive learning rate, for example 0.1")
    _require(0 <= config.momentum < 1, f"invalid --momentum {config.momentum}: use a value in [0, 1), for example 0.9")
    _require(config.weight_decay >= 0, f"invalid --weight-decay {config.weight_decay}: use 0 or more, for example 1e-4")
    _require(config.schedule in SCHEDULES, f"unknown --schedule {config.schedule!r}: use one of {', '.join(SCHEDULES)}")

    _require(all(0 <= value <= 1 for value in config.mean),
             f"invalid --mean {','.join(map(str, config.mean))}: use values on the 0..1 scale, for example 0.2")
    _require(all(value > 0 for value in config.std),
             f"invalid --std {','.join(map(str, config.std))}: use positive values on the 0..1 scale, for example 0.5")
    _require(config.held_out_per_class >= 1,
             f"invalid --held-out-per-class {config.held_out_per_class}: use at least 1, for example 20")

    if config.points is not None:
        _require(config.points >= 1, f"invalid --points {config.points}: use at least 1, for example 100000")
    if config.system_count is not None:
        _require(config.system_count >= config.classes,
                 f"invalid --system-count {config.system_count}: the recipe needs at least one system per class "
                 f"({config.classes}); raise it or lower --classes")
    if config.data_dir is None:
        _require(config.samples_per_epoch % config.classes == 0,
                 f"invalid --samples-per-epoch {config.samples_per_epoch}: it must be a multiple of --classes "
                 f"{config.classes} (equal images per class), for example "
                 f"{max(1, config.samples_per_epoch // config.classes) * config.classes}")
    _require(config.steps_per_epoch >= 1, f"invalid --samples-per-epoch {config.samples_per_epoch}: fewer than one batch")


def validate_runtime(runtime: RuntimeOptions, config: PretrainConfig, cuda_available: bool) -> None:
    """Raise ConfigError for runtime options that are invalid or do not fit the configuration."""
    _require(runtime.accelerator in ACCELERATORS,
             f"unknown --accelerator {runtime.accelerator!r}: use one of {', '.join(ACCELERATORS)}")
    _require(runtime.devices >= 1, f"invalid --devices {runtime.devices}: use at least 1")
    _require(runtime.num_nodes >= 1, f"invalid --num-nodes {runtime.num_nodes}: use at least 1")
    if runtime.precision is not None:
        _require(runtime.precision in PRECISIONS,
                 f"unknown --precision {runtime.precision!r}: use one of {', '.join(PRECISIONS)}")
    if runtime.workers is not None:
        _require(runtime.workers >= 0, f"invalid --workers {runtime.workers}: use 0 or more")
    _require(runtime.checkpoint_every >= 1, f"invalid --checkpoint-every {runtime.checkpoint_every}: use at least 1 step")
    if runtime.stop_at_step is not None:
        _require(runtime.stop_at_step >= 1, f"invalid --stop-at-step {runtime.stop_at_step}: use at least 1")
    if runtime.accelerator == "gpu":
        _require(cuda_available, "--accelerator gpu, but no CUDA GPU is visible: use --accelerator cpu or auto")
    uses_gpu = runtime.accelerator == "gpu" or (runtime.accelerator == "auto" and cuda_available)
    if runtime.precision == "16-mixed":
        _require(uses_gpu, "--precision 16-mixed needs a GPU: use 32 or bf16-mixed on the CPU")
    per_device, remainder = divmod(config.batch_size, runtime.world_size)
    _require(remainder == 0 and per_device >= 2,
             f"invalid --batch-size {config.batch_size} for {runtime.world_size} processes (--devices x --num-nodes): "
             f"use a multiple of {runtime.world_size} with at least 2 images per device")
