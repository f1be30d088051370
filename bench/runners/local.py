"""Executes one run configuration in this process and stores its row.

Called directly, `execute` writes the row when the run ends. Called by a worker with a claim
(see `bench.runners.worker`), it finalises the claimed running row instead, and writes nothing
when another worker has reclaimed that row meanwhile.
"""

import logging
import random
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from torch.utils.data import DataLoader

from bench.data import load_dataset
from bench.data.base import Category
from bench.data.loading import ImageDataset, TrainData, load_masks
from bench.data.masks import describe_missing_masks
from bench.errors import ConfigError
from bench.methods import get_method
from bench.metrics import MetricValue, compute_metrics
from bench.metrics.summary import PIXEL_METRIC_NAMES
from bench.runners.config import ORIGINAL, RunConfig
from bench.runners.environment import git_revision, host_name, package_versions, peak_memory_mb, reset_peak_memory
from bench.runners.progress import RichPhases
from bench.runners.runqueue import Claim, finish, utc_now
from bench.schema.db import run_with_retry
from bench.schema.models import Metric, Run
from bench.weights.architectures import get_architecture
from bench.weights.loading import load_into
from bench.weights.registry import WeightsRecord, resolve_weights

logger = logging.getLogger(__name__)

DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"
# The claimed row was reclaimed by another worker before this result was stored; nothing was written.
LOST = "lost"


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one configuration: done, skipped (already done), failed or lost (claim reclaimed)."""

    config: RunConfig
    status: str
    run_id: int | None
    metrics: tuple[MetricValue, ...] = ()
    error: str | None = None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that initialisation and sampling repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _eval_shape(config: RunConfig, category: Category) -> tuple[int, int]:
    if config.eval_size != ORIGINAL:
        return config.eval_size, config.eval_size
    sizes = set()
    from PIL import Image

    for sample in category.test:
        with Image.open(sample.path) as image:
            sizes.add(image.size)
    if len(sizes) > 1:
        raise ConfigError(f"--eval-size original needs test images of one size; {category.name} has {len(sizes)} sizes; pass a pixel size")
    width, height = sizes.pop()
    return height, width


def select_train_samples(category: Category, shots: int | None, seed: int) -> tuple:
    """Return all training samples, or `shots` of them drawn with `seed`, in file order."""
    if shots is None:
        return category.train
    if not 0 < shots <= len(category.train):
        raise ConfigError(f"invalid --train-shots {shots}; {category.name} has {len(category.train)} training images, "
                          f"so pass 1 to {len(category.train)}")
    chosen = np.random.default_rng(seed).choice(len(category.train), size=shots, replace=False)
    return tuple(category.train[index] for index in sorted(chosen))


def save_maps(path: Path, category: Category, scores: np.ndarray, maps: np.ndarray) -> None:
    """Store anomaly maps as float16 with image scores, labels and test image paths (compressed .npz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        temporary,
        maps=maps.astype(np.float16),
        scores=scores,
        labels=np.array([sample.label for sample in category.test], dtype=np.int8),
        paths=np.array([str(sample.path) for sample in category.test]),
    )
    temporary.replace(path)


def _score(adapter, config: RunConfig, category: Category, weights: WeightsRecord, phases: RichPhases,
           batch_size: int, maps_path: Path | None) -> list[MetricValue]:
    test_set = ImageDataset(category.test, config.image_size, weights.mean, weights.std)
    loader = DataLoader(test_set, batch_size=batch_size, shuffle=False)
    height, width = _eval_shape(config, category)

    scores = np.zeros(len(test_set), dtype=np.float64)
    maps = np.zeros((len(test_set), height, width), dtype=np.float32)
    for images, indices in phases.track(loader, "scoring (test)", len(loader)):
        image_scores, anomaly_maps = adapter.predict(images)
        if anomaly_maps.shape[-2:] != (height, width):
            anomaly_maps = F.interpolate(anomaly_maps[:, None], size=(height, width), mode="bilinear",
                                         align_corners=False)[:, 0]
        scores[indices.numpy()] = image_scores.double().numpy()
        maps[indices.numpy()] = anomaly_maps.float().numpy()

    labels = np.array([sample.label for sample in category.test], dtype=np.int64)
    if maps_path is not None:
        save_maps(maps_path, category, scores, maps)
    masks = load_masks(category.test, height, width)
    with phases.step("metrics"):
        metrics = compute_metrics(labels, scores, masks, maps if masks is not None else None)
    if not adapter.produces_maps:
        # The maps of a method without localisation repeat its image score, so pixel metrics
        # computed from them would look real but measure nothing.
        return _without_pixel_metrics(metrics, f"method {adapter.name} produces no anomaly maps (image scores only)")
    if masks is None:
        # load_masks returns None when an anomalous image has no mask, and the reason names those images.
        return _without_pixel_metrics(metrics, describe_missing_masks(category.test))
    return metrics


def _without_pixel_metrics(metrics: list[MetricValue], reason: str) -> list[MetricValue]:
    """Replace the pixel metrics of `metrics` by NULL values with `reason`."""
    return [MetricValue(metric.name, None, reason, None) if metric.name in PIXEL_METRIC_NAMES else metric
            for metric in metrics]


def _store(session_factory: sessionmaker[Session], config: RunConfig, config_hash: str, weights: WeightsRecord,
           claim: Claim | None, **fields) -> int | None:
    """Store the final row and its metrics in one transaction; return its id, None when the claim was lost."""
    metrics: list[MetricValue] = fields.pop("metrics", [])
    values = dict(
        config=config.to_dict(weights.identity),
        method=config.method,
        method_options=config.method_options,
        backbone=config.backbone,
        weights_name=config.weights,
        weights_id=weights.id,
        dataset=config.dataset,
        root=config.root,
        category=config.category,
        layers=config.layers,
        image_size=config.image_size,
        seed=config.seed,
        train_shots=config.train_shots,
        backbone_fine_tuned=get_method(config.method).fine_tunes_backbone,
        versions=package_versions(),
        git_revision=git_revision(),
        host=host_name(),
        **fields,
    )

    def transaction() -> int | None:
        rows = [Metric(name=m.name, value=m.value, null_reason=m.null_reason, resolution=m.resolution) for m in metrics]
        with session_factory() as session, session.begin():
            if claim is not None:
                values["heartbeat_at"] = values["ended_at"]
                if not finish(session, claim, values, rows):
                    session.rollback()
                    return None
                return claim.run_id

            # Replacing a forced or failed run and inserting the new row happen in one transaction.
            session.execute(delete(Run).where(Run.config_hash == config_hash))
            run = Run(config_hash=config_hash, **values)
            run.metrics = rows
            session.add(run)
            session.flush()
            return run.id

    return run_with_retry(transaction, f"storing run {config_hash[:16]}")


def execute(config: RunConfig, session_factory: sessionmaker[Session], runs_dir: Path, console: Console,
            force: bool = False, batch_size: int = 8, save_anomaly_maps: bool = True,
            claim: Claim | None = None) -> RunOutcome:
    """Run one configuration and store its row with its metrics.

    Without a claim, a configuration that is already done is skipped unless `force`. With a
    claim, the claimed row is finalised, and the outcome is LOST when another worker reclaimed
    it meanwhile. The dataset and weights are validated before any work; a failure during the run
    is stored as a failed row with the error text and its traceback in the run's log file.
    """
    category = load_dataset(config.dataset, Path(config.root), config.category)
    with session_factory() as session:
        weights = resolve_weights(session, config.weights, config.backbone)
    config_hash = config.hash(weights.identity)

    if claim is not None and claim.config_hash != config_hash:
        raise ConfigError(f"weights '{config.weights}' for {config.backbone} changed since the run was queued "
                          f"(hash {config_hash[:16]}, queued as {claim.config_hash[:16]}); queue the grid again")
    if claim is None:
        with session_factory() as session:
            existing = session.scalars(select(Run).where(Run.config_hash == config_hash)).first()
            if existing is not None and existing.status == DONE and not force:
                return RunOutcome(config, SKIPPED, existing.id)

    train_samples = select_train_samples(category, config.train_shots, config.seed)
    log_path = (runs_dir / config_hash[:16] / "run.log").resolve()
    maps_path = log_path.with_name("maps.npz") if save_anomaly_maps else None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    previous_level = root_logger.level
    root_logger.setLevel(logging.INFO)

    started_at = utc_now()
    start = time.perf_counter()
    reset_peak_memory()
    logger.info("run %s: %s", config_hash[:16], config.describe())
    try:
        seed_everything(config.seed)
        method = get_method(config.method)
        adapter = method(get_architecture(config.backbone), list(config.levels), config.method_options)
        load_into(adapter.backbone_module(), weights)

        train = TrainData(train_samples, config.image_size, weights.mean, weights.std, batch_size, config.seed)
        with RichPhases(console) as phases:
            adapter.fit(train, phases)
            metrics = _score(adapter, config, category, weights, phases, batch_size, maps_path)
        for metric in metrics:
            shown = metric.value if metric.value is not None else f"NULL ({metric.null_reason})"
            logger.info("%s = %s (resolution %s)", metric.name, shown, metric.resolution)
    except Exception as error:
        logger.error("run %s failed:\n%s", config_hash[:16], traceback.format_exc())
        message = f"{type(error).__name__}: {error}"
        run_id = _store(session_factory, config, config_hash, weights, claim, status=FAILED, started_at=started_at,
                        ended_at=utc_now(), wall_time_s=time.perf_counter() - start, peak_memory_mb=peak_memory_mb(),
                        log_path=str(log_path), error=message)
        if run_id is None:
            return _lost(config, claim)
        return RunOutcome(config, FAILED, run_id, error=message)
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(previous_level)
        handler.close()

    wall_time = time.perf_counter() - start
    run_id = _store(session_factory, config, config_hash, weights, claim, status=DONE, started_at=started_at,
                    ended_at=utc_now(), wall_time_s=wall_time, peak_memory_mb=peak_memory_mb(),
                    log_path=str(log_path), maps_path=str(maps_path) if maps_path else None, error=None,
                    metrics=metrics)
    if run_id is None:
        return _lost(config, claim)
    return RunOutcome(config, DONE, run_id, tuple(metrics))


def _lost(config: RunConfig, claim: Claim) -> RunOutcome:
    message = f"another worker reclaimed run {claim.run_id} before this result was stored; result discarded"
    logger.warning("run %d (%s): %s", claim.run_id, claim.config_hash[:16], message)
    return RunOutcome(config, LOST, claim.run_id, error=message)
