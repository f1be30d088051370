"""Run a pre-training: prepare the data, train with Lightning, then export, evaluate and register.

A run lives in `runs_dir/<run id>/`, where the run id is a hash of its PretrainConfig:

* `config.json`: the configuration; `systems.npz`: the IFS systems of a fractal run;
* `session.json`: the weights name to register under and the checkpoint interval, which a
  resumed session keeps unless its command line changes them;
* `last.ckpt`: the Lightning checkpoint to resume from, rewritten every --checkpoint-every steps;
* `log.jsonl`: one JSON record per logging interval and epoch; `pretrain.log`: the text log;
* when training has finished: `backbone.pth` ({"backbone": timm state dict without the head,
  "meta": {...}}) and `filters.png`, the first convolution's filters.

With several processes (DDP), every process runs this code; only the global-zero process writes
files, evaluates and registers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from torch.utils.data import Dataset

from bench.errors import ConfigError
from bench.fractals.export import write_atomically
from bench.fractals.systems import SystemSet, load_systems
from bench.pretrain.callbacks import LAST_CHECKPOINT, LastCheckpoint, ThroughputLog
from bench.pretrain.config import (
    PretrainConfig,
    RuntimeOptions,
    option_name,
    validate_config,
    validate_runtime,
)
from bench.pretrain.data import (
    FolderImages,
    fractal_datasets,
    held_out_loader,
    load_run_systems,
    sample_systems,
    scan_folder,
    store_systems,
    systems_digest,
    train_loader,
)
from bench.pretrain.export import BACKBONE_FILE, BACKBONE_FORMAT, FILTERS_FILE, read_training_checkpoint, save_backbone, save_filters
from bench.pretrain.module import PretrainModule, evaluate
from bench.runners.environment import git_revision, package_versions
from bench.weights.architectures import get_architecture

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SESSION_FILE = "session.json"
TEXT_LOG = "pretrain.log"
# Loggers whose records go to the run's text log.
RUN_LOGGERS = ("bench", "lightning.pytorch", "lightning.fabric")
# Maximum DataLoader workers per GPU process when --workers is not given.
MAX_DEFAULT_WORKERS = 8
# Maximum images per forward pass of the held-out evaluation.
MAX_EVAL_BATCH = 256


@dataclass(frozen=True)
class Registration:
    """Registration target of a finished backbone: weights name (None: no registration) and database."""

    name: str | None
    db: str | None = None


def read_session(run_dir: Path) -> dict[str, Any]:
    """Return the session settings stored in a run folder: {"name": str | None, "checkpoint_every": int}.

    A run folder written before these settings were stored returns {}.
    """
    path = run_dir / SESSION_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_session(run_dir: Path, registration: Registration, runtime: RuntimeOptions) -> None:
    settings = {"name": registration.name, "checkpoint_every": runtime.checkpoint_every}
    write_atomically(run_dir / SESSION_FILE, lambda temporary: temporary.write_text(json.dumps(settings, indent=2) + "\n"))


@dataclass(frozen=True)
class PreparedData:
    """The datasets of a run: training (one epoch), held-out, and the IFS systems of a fractal run."""

    train: Dataset
    held_out: Dataset
    systems: SystemSet | None


@dataclass(frozen=True)
class PretrainResult:
    """Outcome of one session of a run; backbone fields are set once training has finished."""

    run_id: str
    run_dir: Path
    global_step: int
    total_steps: int
    backbone_path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    weights_id: int | None = None
    # Name of the signal that stopped training before its end (SIGINT, SIGTERM), else None.
    stopped_by: str | None = None

    @property
    def finished(self) -> bool:
        """Whether training reached its last step."""
        return self.global_step >= self.total_steps


class PretrainData(L.LightningDataModule):
    """Serve the training loader of this process, positioned at the trainer's global step."""

    def __init__(self, dataset: Dataset, config: PretrainConfig, workers: int, pin_memory: bool) -> None:
        super().__init__()
        self.dataset = dataset
        self.config = config
        self.workers = workers
        self.pin_memory = pin_memory

    def train_dataloader(self):
        trainer = self.trainer
        return train_loader(self.dataset, self.config, trainer.global_rank, trainer.world_size,
                            lambda: trainer.global_step, self.workers, self.pin_memory)


def is_primary_process() -> bool:
    """Return whether this process is global rank 0, from the launcher's environment variables."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _uses_gpu(runtime: RuntimeOptions) -> bool:
    return runtime.accelerator == "gpu" or (runtime.accelerator == "auto" and torch.cuda.is_available())


def _precision(runtime: RuntimeOptions) -> str:
    if runtime.precision is not None:
        return runtime.precision
    if _uses_gpu(runtime):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32"


def _workers(runtime: RuntimeOptions) -> int:
    if runtime.workers is not None:
        return runtime.workers
    if not _uses_gpu(runtime):
        # On a CPU the model needs every core, and rendering costs a few percent of a step.
        return 0
    return min(MAX_DEFAULT_WORKERS, max(1, (os.cpu_count() or 2) // runtime.devices - 1))


class _ForwardToRoot(logging.Handler):
    """Pass records on to the root logger's handlers (used for warnings while a run log is open)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Send INFO records of bench and Lightning to `path` and only warnings on to the root handlers."""
    file_handler = logging.FileHandler(path, mode="a")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    forward = _ForwardToRoot(level=logging.WARNING)
    saved = []
    for name in RUN_LOGGERS:
        run_logger = logging.getLogger(name)
        saved.append((run_logger, run_logger.level, run_logger.propagate, list(run_logger.handlers)))
        run_logger.handlers = [file_handler, forward]
        run_logger.setLevel(logging.INFO)
        run_logger.propagate = False
    try:
        yield
    finally:
        for run_logger, level, propagate, handlers in saved:
            run_logger.handlers = handlers
            run_logger.setLevel(level)
            run_logger.propagate = propagate
        file_handler.close()


def prepare_fractals(config: PretrainConfig, systems_file: Path | None) -> tuple[PretrainConfig, PreparedData]:
    """Load or sample the systems and build the datasets; the returned config records the systems' digest."""
    if systems_file is not None:
        systems = load_systems(systems_file)
    else:
        systems = sample_systems(config)
    config = replace(config, system_count=len(systems), systems_digest=systems_digest(systems))
    train, held_out = fractal_datasets(config, systems)
    return config, PreparedData(train, held_out, systems)


def prepare_folder(config: PretrainConfig) -> tuple[PretrainConfig, PreparedData]:
    """Scan the ImageFolder tree; the returned config records its class count and training images."""
    folder = scan_folder(Path(config.data_dir), config.held_out_per_class, config.seed)
    config = replace(config, classes=len(folder.classes), samples_per_epoch=len(folder.train))
    validate_config(config)
    train = FolderImages(folder.train, config.image_size, train=True, seed=config.seed)
    held_out = FolderImages(folder.held_out, config.image_size, train=False, seed=config.seed)
    return config, PreparedData(train, held_out, None)


def _open_registry(registration: Registration):
    if registration.name is None:
        return None
    from bench.schema.db import open_engine

    return open_engine(registration.db)


def _run_has_finished(run_dir: Path, force: bool) -> bool:
    """Return whether the run folder contains a finished run; raise ConfigError for an unfinished one."""
    if force:
        return False
    if (run_dir / BACKBONE_FILE).is_file():
        return True
    if (run_dir / LAST_CHECKPOINT).is_file():
        raise ConfigError(
            f"run {run_dir.name} of this configuration has already started in {run_dir}: continue it with "
            f"`bench pretrain --resume {run_dir / LAST_CHECKPOINT}`, or pass --force to train again"
        )
    return False


def _register(engine, registration: Registration, path: Path, config: PretrainConfig, run_id: str) -> int:
    """Register `path` under the registration name unless it is already that name's newest file; returns the id."""
    from bench.schema.db import session_factory
    from bench.weights.registry import add_weights, file_sha256, list_weights

    with session_factory(engine)() as session:
        newest = next((record for record in list_weights(session)
                       if record.name == registration.name and record.arch == config.arch), None)
        if newest is not None and newest.sha256 == file_sha256(path):
            return newest.id
        record = add_weights(session, registration.name, config.arch, path, config.mean, config.std,
                             source=f"bench pretrain {run_id}")
    return record.id


def _reuse_finished(config: PretrainConfig, run_dir: Path, registration: Registration, engine,
                    console: Console) -> PretrainResult:
    from bench.weights.loading import read_checkpoint

    path = run_dir / BACKBONE_FILE
    _, meta = read_checkpoint(path)
    result = PretrainResult(config.run_id(), run_dir, meta.get("steps", config.total_steps), config.total_steps,
                            backbone_path=path, meta=meta)
    if is_primary_process():
        console.print(f"run {run_dir.name} of this configuration has already finished in {run_dir}: using its "
                      f"{BACKBONE_FILE} (pass --force to train again)")
        if engine is not None:
            result = replace(result, weights_id=_register(engine, registration, path, config, result.run_id))
    return result


def start_run(config: PretrainConfig, runtime: RuntimeOptions, runs_dir: Path, registration: Registration,
              console: Console, systems_file: Path | None = None, force: bool = False) -> PretrainResult:
    """Validate the options, prepare the data and the run folder, then train.

    A finished run of the same configuration is not trained again: its backbone is registered
    unless it is already the newest file of that name. Raises ConfigError (or WeightsError) before
    anything is written when an option is invalid or the configuration's run is unfinished.
    """
    cuda_available = torch.cuda.is_available()
    if config.data_dir is None:
        validate_config(config)
        validate_runtime(runtime, config, cuda_available)
        config, data = prepare_fractals(config, systems_file)
    else:
        config = replace(config, data_dir=str(Path(config.data_dir).expanduser().resolve()))
        config, data = prepare_folder(config)
        validate_runtime(runtime, config, cuda_available)
    run_dir = (runs_dir / config.run_id()).resolve()
    finished = _run_has_finished(run_dir, force)
    engine = _open_registry(registration)
    if finished:
        return _reuse_finished(config, run_dir, registration, engine, console)

    if is_primary_process():
        if force and run_dir.is_dir():
            logger.info("removing the earlier run in %s (--force)", run_dir)
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if data.systems is not None:
            store_systems(data.systems, run_dir)
        (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        _write_session(run_dir, registration, runtime)
    return _fit(config, runtime, run_dir, data, None, registration, engine, console)


def resume_run(checkpoint_path: Path, runtime: RuntimeOptions, registration: Registration, console: Console,
               overrides: dict[str, Any] | None = None) -> PretrainResult:
    """Continue the run of `checkpoint_path` (its last.ckpt) from its global step.

    Training options come from the checkpoint: an override that differs from it raises ConfigError.
    """
    checkpoint_path = checkpoint_path.expanduser().resolve()
    checkpoint, config = read_training_checkpoint(checkpoint_path)
    del checkpoint
    for key, value in (overrides or {}).items():
        if value is not None and value != getattr(config, key):
            raise ConfigError(
                f"{option_name(key)} {value} differs from the checkpoint's {getattr(config, key)}: training options "
                f"come from the checkpoint, so drop {option_name(key)} to resume"
            )
    run_dir = checkpoint_path.parent
    if (run_dir / BACKBONE_FILE).is_file():
        # Training has finished. Like a rerun of the first command, keep its backbone file, because
        # registered weights store its hash.
        return _reuse_finished(config, run_dir, registration, _open_registry(registration), console)
    if config.data_dir is None:
        systems = load_run_systems(run_dir, config.systems_digest)
        train, held_out = fractal_datasets(config, systems)
        data = PreparedData(train, held_out, systems)
    else:
        rescanned, data = prepare_folder(config)
        if (rescanned.classes, rescanned.samples_per_epoch) != (config.classes, config.samples_per_epoch):
            raise ConfigError(
                f"--data-dir {config.data_dir} changed since the run started ({rescanned.classes} classes and "
                f"{rescanned.samples_per_epoch} training images now, {config.classes} and {config.samples_per_epoch} "
                f"then): restore the folder or start a new run"
            )
    validate_runtime(runtime, config, torch.cuda.is_available())
    engine = _open_registry(registration)
    if is_primary_process():
        _write_session(run_dir, registration, runtime)
    return _fit(config, runtime, run_dir, data, checkpoint_path, registration, engine, console)


def describe(config: PretrainConfig, runtime: RuntimeOptions, run_dir: Path) -> str:
    """Return a one-line summary of a run's data, budget and optimisation."""
    data = (f"{config.recipe} fractals ({config.classes} classes)" if config.data_dir is None
            else f"{config.data_dir} ({config.classes} classes)")
    return (f"pre-training {config.arch} on {data} at {config.image_size} px: {config.epochs} epochs x "
            f"{config.samples_per_epoch:,} images, batch {config.batch_size} on {runtime.world_size} process(es), "
            f"SGD lr {config.lr} with {config.schedule} schedule; run folder {run_dir}")


def _trainer(config: PretrainConfig, runtime: RuntimeOptions, run_dir: Path, console: Console) -> L.Trainer:
    total = config.total_steps
    stop_step = min(runtime.stop_at_step or total, total)
    log_every = max(1, min(100, config.steps_per_epoch // 5))
    checkpoint = LastCheckpoint(run_dir, runtime.checkpoint_every, stop_step)
    callbacks = [
        checkpoint,
        ThroughputLog(run_dir, console, total, config.steps_per_epoch, config.batch_size, runtime.world_size,
                      log_every, checkpoint),
    ]
    return L.Trainer(
        accelerator=runtime.accelerator,
        devices=runtime.devices,
        num_nodes=runtime.num_nodes,
        # NOTE: the GPU settings (mixed precision, channels_last, cuDNN benchmark, DDP over GPUs)
        # have not been run on a GPU yet; DDP was run on CPU processes only.
        strategy="ddp" if runtime.world_size > 1 else "auto",
        precision=_precision(runtime),
        # Training ends by steps: the data position and the schedule follow the global step,
        # whatever Lightning counts as an epoch.
        max_epochs=-1,
        max_steps=stop_step,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=True,
        callbacks=callbacks,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        benchmark=_uses_gpu(runtime),
        default_root_dir=run_dir,
    )


def _fit(config: PretrainConfig, runtime: RuntimeOptions, run_dir: Path, data: PreparedData, checkpoint_path: Path | None,
         registration: Registration, engine, console: Console) -> PretrainResult:
    gpu = _uses_gpu(runtime)
    workers = _workers(runtime)
    if runtime.single_thread:
        # OpenMP threads spin while they wait for each other, so on cores shared with other jobs two
        # threads can be several times slower than one (the demo preset: 737 s against 138 s on a
        # 2-core machine at load 8).
        torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    module = PretrainModule(config, channels_last=gpu)
    datamodule = PretrainData(data.train, config, workers, pin_memory=gpu)

    if is_primary_process():
        console.print(describe(config, runtime, run_dir))
    with run_log(run_dir / TEXT_LOG), warnings.catch_warnings():
        # Lightning advises workers for every CPU-only loader; on a CPU bench renders in the main
        # process on purpose.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # Lightning warns for loaders without state_dict(), but this one starts at the restored global step.
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        # Raised inside Lightning 2.6 with torch 2.14 on every step; nothing bench can act on.
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        logger.info("run %s: %s", config.run_id(), json.dumps(config.to_dict()))
        trainer = _trainer(config, runtime, run_dir, console)
        checkpoint = next(callback for callback in trainer.callbacks if isinstance(callback, LastCheckpoint))
        try:
            with _stop_on_ctrl_c(checkpoint, runtime, console):
                trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint_path, weights_only=True)
        except SIGTERMException:
            # LastCheckpoint has saved the step that Lightning stopped after.
            pass
        except SystemExit:
            # Lightning exits with status 1 after a KeyboardInterrupt, which here is the second Ctrl-C.
            if checkpoint.stopped_by == "SIGINT":
                raise SystemExit(128 + signal.SIGINT) from None
            raise

        result = PretrainResult(config.run_id(), run_dir, trainer.global_step, config.total_steps,
                                stopped_by=checkpoint.stopped_by)
        if not trainer.is_global_zero or not result.finished:
            return result
        return _finish(config, runtime, module, data, result, registration, engine, workers, console)


@contextmanager
def _stop_on_ctrl_c(checkpoint: LastCheckpoint, runtime: RuntimeOptions, console: Console) -> Iterator[None]:
    """Turn the first Ctrl-C into a stop after the current step, saved for --resume; the second stops at once.

    Only a single training process on the main thread does this. With DDP the processes could
    stop after different steps, so there Lightning's own handling stays.
    """
    if runtime.world_size > 1 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame) -> None:
        if checkpoint.stopped_by is not None:
            raise KeyboardInterrupt
        checkpoint.request_stop("SIGINT")
        console.print("stopping after this step and saving it for --resume (press Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _versions() -> dict[str, str]:
    versions = package_versions()
    for package in ("lightning", "numba"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _finish(config: PretrainConfig, runtime: RuntimeOptions, module: PretrainModule, data: PreparedData,
            result: PretrainResult, registration: Registration, engine, workers: int, console: Console) -> PretrainResult:
    device = torch.device("cuda", torch.cuda.current_device()) if _uses_gpu(runtime) else torch.device("cpu")
    module.close_open_epoch(result.global_step)
    module.to(device)
    with console.status("scoring the held-out images"):
        loader = held_out_loader(data.held_out, min(config.batch_size, MAX_EVAL_BATCH), workers)
        held_out_accuracy, held_out_images, chance = evaluate(module, loader, device, config.multi_label)
    logger.info("held-out accuracy %.4f on %d images (chance %.4f)", held_out_accuracy, held_out_images, chance)

    backbone = module.backbone_state_dict()
    meta = {
        "format": BACKBONE_FORMAT,
        **config.to_dict(),
        "timm_name": get_architecture(config.arch).timm_name,
        "run_id": result.run_id,
        "render_points": config.render_points if config.data_dir is None else None,
        "systems_settings": data.systems.settings if data.systems is not None else None,
        "steps": result.global_step,
        "samples_seen": result.global_step * config.batch_size,
        "train_accuracy": module.last_epoch_accuracy,
        "held_out_accuracy": held_out_accuracy,
        "held_out_images": held_out_images,
        "chance_accuracy": chance,
        "train_time_s": module.train_time_s,
        "accelerator": device.type,
        "devices": runtime.devices,
        "num_nodes": runtime.num_nodes,
        "precision": _precision(runtime),
        "versions": _versions(),
        "git_revision": git_revision(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    backbone_path = save_backbone(result.run_dir / BACKBONE_FILE, backbone, meta)
    save_filters(result.run_dir / FILTERS_FILE, backbone)
    logger.info("wrote %s", backbone_path)

    weights_id = None
    if engine is not None:
        weights_id = _register(engine, registration, backbone_path, config, result.run_id)
    return replace(result, backbone_path=backbone_path, meta=meta, weights_id=weights_id)
