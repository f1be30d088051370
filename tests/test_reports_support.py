"""Builders of real results databases with known rows, shared by the report tests (no tests here)."""

import hashlib
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from bench.schema.db import open_engine, session_factory
from bench.schema.models import Metric, Run

DEFAULT_LAYERS = {"patchcore": "2,3", "padim": "1,2,3"}

# Image AUROC as fractions: {(category, method, weights): value}. PatchCore on bottle with
# ImageNet also has a second seed (STUDY_SECOND_SEED); CutPaste fine-tunes its backbone.
STUDY_AUROC = {
    ("carpet", "patchcore", "imagenet"): 0.98, ("carpet", "patchcore", "fractals"): 0.41,
    ("grid", "patchcore", "imagenet"): 0.975, ("grid", "patchcore", "fractals"): 0.937,
    ("bottle", "patchcore", "imagenet"): 1.00, ("bottle", "patchcore", "fractals"): 0.95,
    ("cable", "patchcore", "imagenet"): 0.99, ("cable", "patchcore", "fractals"): 0.70,
    ("carpet", "padim", "imagenet"): 0.99, ("carpet", "padim", "fractals"): 0.425,
    ("grid", "padim", "imagenet"): 0.969, ("grid", "padim", "fractals"): 0.969,
    ("bottle", "padim", "imagenet"): 0.995, ("bottle", "padim", "fractals"): 0.90,
    ("cable", "padim", "imagenet"): 0.80, ("cable", "padim", "fractals"): 0.85,
    ("carpet", "cutpaste", "imagenet"): 0.859, ("carpet", "cutpaste", "fractals"): 0.692,
    ("grid", "cutpaste", "imagenet"): 0.983, ("grid", "cutpaste", "fractals"): 1.0,
}
STUDY_SECOND_SEED = 0.96


def add_run(session, *, method: str, weights: str, category: str, metrics: dict[str, float | None],
            dataset: str = "mvtec", backbone: str = "resnet18", layers: str | None = None, image_size: int = 256,
            eval_size: int = 256, seed: int = 0, fine_tuned: bool = False, maps_path: Path | None = None,
            root: str = "/data/mvtec", status: str = "done", train_shots: int | None = None) -> Run:
    """Insert one run with its metrics, as the local runner stores them."""
    layers = layers or DEFAULT_LAYERS.get(method, "1,2,3")
    config = {"method": method, "backbone": backbone, "weights": weights, "dataset": dataset, "root": root,
              "category": category, "levels": [int(level) for level in layers.split(",")], "image_size": image_size,
              "eval_size": eval_size, "seed": seed, "train_shots": train_shots, "method_options": {}}
    run = Run(
        config_hash=hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        config=config, method=method, method_options={}, backbone=backbone, weights_name=weights, dataset=dataset,
        root=root, category=category, layers=layers, image_size=image_size, seed=seed, train_shots=train_shots,
        backbone_fine_tuned=fine_tuned, status=status, started_at=datetime(2026, 1, 1), ended_at=datetime(2026, 1, 1),
        wall_time_s=1.5, versions={}, maps_path=str(maps_path) if maps_path else None,
    )
    run.metrics = [Metric(name=name, value=value, null_reason=None if value is not None else "undefined",
                          resolution=None) for name, value in metrics.items()]
    session.add(run)
    session.flush()
    return run


def build_study_db(path: Path) -> Path:
    """Write the STUDY_AUROC runs (image AUROC; pixel AUROC = image AUROC − 0.01) into a new database."""
    with session_factory(open_engine(path))() as session, session.begin():
        for (category, method, weights), value in STUDY_AUROC.items():
            add_run(session, method=method, weights=weights, category=category,
                    metrics={"image_auroc": value, "pixel_auroc": round(value - 0.01, 6)},
                    fine_tuned=method == "cutpaste")
        add_run(session, method="patchcore", weights="imagenet", category="bottle", seed=1,
                metrics={"image_auroc": STUDY_SECOND_SEED, "pixel_auroc": STUDY_SECOND_SEED - 0.01})
    return path


def write_maps(path: Path, labels: list[int], scores: list[float], maps: np.ndarray | None = None,
               paths: list[str] | None = None) -> Path:
    """Write a maps file as the local runner does: float16 maps, scores, int8 labels and test image paths."""
    count = len(labels)
    if maps is None:
        maps = np.zeros((count, 8, 8), dtype=np.float32)
    if paths is None:
        paths = [f"/data/{'good' if label == 0 else 'crack'}/{index:03d}.png" for index, label in enumerate(labels)]
    np.savez_compressed(path, maps=maps.astype(np.float16), scores=np.asarray(scores, dtype=np.float64),
                        labels=np.asarray(labels, dtype=np.int8), paths=np.array(paths))
    return path


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `bench ARGS` in this process as the console script does; return (exit code, stdout, stderr)."""
    from bench.cli import main

    monkeypatch.setattr(sys, "argv", ["bench", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def write_tiny_category(root: Path, category: str = "bottle", size: int = 32) -> list[Path]:
    """Write an MVTec-layout category: 2 training, 2 normal and 2 "crack" test images with masks.

    Returns the test image paths in the reader's order (normal first, then defects by name).
    Each crack is a bright square whose mask is the square.
    """
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = root / category
    for split in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (folder / split).mkdir(parents=True, exist_ok=True)
    for index in range(2):
        for split in ("train/good", "test/good"):
            pixels = rng.integers(60, 90, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / split / f"{index:03d}.png")
        pixels = rng.integers(60, 90, size=(size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        low, high = size // 4 + 4 * index, size // 2 + 4 * index
        pixels[low:high, low:high] = 250
        mask[low:high, low:high] = 255
        Image.fromarray(pixels).save(folder / "test" / "crack" / f"{index:03d}.png")
        Image.fromarray(mask).save(folder / "ground_truth" / "crack" / f"{index:03d}_mask.png")
    return [folder / "test" / "good" / "000.png", folder / "test" / "good" / "001.png",
            folder / "test" / "crack" / "000.png", folder / "test" / "crack" / "001.png"]


def tiny_maps(paths: list[Path], size: int, noise: float, seed: int) -> np.ndarray:
    """Return anomaly maps at size x size that are high on each crack's square plus seeded noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    maps = rng.random((len(paths), size, size)).astype(np.float32) * noise
    for index, path in enumerate(paths):
        mask_path = path.parent.parent.parent / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        if mask_path.is_file():
            mask = np.asarray(Image.open(mask_path).resize((size, size), Image.NEAREST)) > 0
            maps[index][mask] += 1.0
    return maps
