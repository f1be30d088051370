"""Time and peak memory of every method on MVTec AD bottle; PatchCore and PaDiM against anomalib.

Each measurement runs in a process of its own, so that its peak resident memory (VmHWM, reset when
the run starts, after imports) covers that run only. bench's methods run through `bench run` and
report the runner's own wall time, peak memory and metrics. The anomalib originals run in this
script: anomalib 2.7's PatchcoreModel (KCenterGreedy coreset, anomalib's nearest-neighbour search)
and PadimModel (MultiVariateGaussian), with the same seed, data, weights and metrics code.

Presets for CPUs are listed in PRESETS: image size and epochs are stated in every output row.
PaDiM's original needs 5 GB per covariance copy for wide_resnet50_2 at 256 px, so a full
category does not fit in 24 GB. The PaDiM comparison therefore runs both sides at
--padim-compare-size (128 px by default). The 6 GB goal is measured on bench's PaDiM at 256 px.

Run: .venv/bin/python benchmarks/methods.py --root ../shared/data/MVTecAD
         [--methods patchcore padim ...] [--skip-originals | --only-comparisons]
         [--compare-shots N] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger("benchmarks.methods")

REPOSITORY = Path(__file__).resolve().parents[1]
CATEGORY = "bottle"


@dataclass(frozen=True)
class Preset:
    """One `bench run` configuration to measure."""

    method: str
    weights: str
    backbone: str
    image_size: int
    options: dict[str, str] = field(default_factory=dict)
    train_shots: int | None = None

    def label(self) -> str:
        shown = ",".join(f"{key}={value}" for key, value in self.options.items())
        shots = f" {self.train_shots}-shot" if self.train_shots else ""
        return f"{self.method} {self.weights}/{self.backbone} {self.image_size}px{shots} {shown}".strip()


# CPU presets: few epochs, so that one method on the full category takes minutes, not days.
# FastFlow and Reverse Distillation take no efficientnet_lite0, so they have one random row only.
PRESETS = [
    Preset("patchcore", "random", "wide_resnet50_2", 256),
    Preset("patchcore", "imagenet", "efficientnet_lite0", 256),
    Preset("padim", "random", "wide_resnet50_2", 256),
    Preset("padim", "imagenet", "efficientnet_lite0", 256),
    Preset("fastflow", "random", "resnet18", 256, {"epochs": "3"}),
    Preset("cflow", "random", "resnet18", 256, {"epochs": "1"}),
    Preset("cflow", "imagenet", "efficientnet_lite0", 256, {"epochs": "1"}),
    Preset("reverse_distillation", "random", "resnet18", 256, {"epochs": "3"}),
    Preset("stfpm", "random", "resnet18", 256, {"epochs": "3"}),
    Preset("stfpm", "imagenet", "efficientnet_lite0", 256, {"epochs": "3"}),
    Preset("cutpaste", "random", "resnet18", 256, {"epochs": "3"}),
    Preset("cutpaste", "imagenet", "efficientnet_lite0", 256, {"epochs": "3"}),
    Preset("panda", "random", "resnet18", 256),
    Preset("panda", "imagenet", "efficientnet_lite0", 256),
]


def bench_command(preset: Preset, root: Path, db: Path, runs: Path) -> list[str]:
    """Return the `bench run` command line of a preset, without maps."""
    command = ["bench", "run", "--method", preset.method, "--weights", preset.weights, "--backbone", preset.backbone,
               "--dataset", "mvtec", "--root", str(root), "--category", CATEGORY,
               "--image-size", str(preset.image_size), "--no-save-maps", "--db", str(db), "--runs-dir", str(runs)]
    for key, value in preset.options.items():
        command += ["--option", f"{key}={value}"]
    if preset.train_shots:
        command += ["--train-shots", str(preset.train_shots)]
    return command


def measure_bench(preset: Preset, root: Path, workspace: Path) -> dict:
    """Run one preset through `bench run` in a new process; return the stored row's numbers."""
    db = workspace / f"{preset.method}-{preset.weights}-{preset.backbone}-{preset.image_size}-{preset.train_shots}.db"
    command = bench_command(preset, root, db, workspace / "runs")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    executable = [sys.executable, "-m", "bench", *command[1:]]
    completed = subprocess.run(executable, cwd=REPOSITORY, env=environment, capture_output=True, text=True)
    if completed.returncode != 0:
        return {"label": preset.label(), "command": shlex.join(command), "error": completed.stderr.strip()[-2000:]}

    import sqlite3

    with sqlite3.connect(db) as connection:
        wall, peak, status = connection.execute("SELECT wall_time_s, peak_memory_mb, status FROM runs").fetchone()
        metrics = dict(connection.execute("SELECT name, value FROM metrics").fetchall())
    return {"label": preset.label(), "command": shlex.join(command), "status": status, "wall_time_s": wall,
            "peak_memory_mb": peak, "metrics": metrics}


def measure_original(preset: Preset, root: Path) -> dict:
    """Run anomalib's original of `preset.method` (patchcore or padim) in a new process; return its numbers."""
    command = [sys.executable, __file__, "--original", preset.method, "--root", str(root),
               "--backbone", preset.backbone, "--image-size", str(preset.image_size)]
    if preset.train_shots:
        command += ["--compare-shots", str(preset.train_shots)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True)
    shots = f" {preset.train_shots}-shot" if preset.train_shots else ""
    label = f"{preset.method} (anomalib 2.7 original) random/{preset.backbone} {preset.image_size}px{shots}"
    if completed.returncode != 0:
        return {"label": label, "command": shlex.join(command[1:]), "error": completed.stderr.strip()[-2000:]}
    return {"label": label, "command": "python " + shlex.join(command[1:]), **json.loads(completed.stdout.splitlines()[-1])}


def run_original(kind: str, root: Path, backbone: str, image_size: int, shots: int | None, seed: int = 0) -> dict:
    """Run anomalib's PatchcoreModel or PadimModel end to end in this process, timed like the runner."""
    import numpy as np
    import torch
    from anomalib.models.image.padim.torch_model import PadimModel
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    from torch.utils.data import DataLoader

    from bench.data import load_dataset
    from bench.data.loading import ImageDataset, TrainData, load_masks
    from bench.metrics import compute_metrics
    from bench.methods.padim import PAPER_FEATURES
    from bench.runners.environment import peak_memory_mb, reset_peak_memory
    from bench.runners.local import seed_everything, select_train_samples
    from bench.weights.architectures import IMAGENET_MEAN, IMAGENET_STD, get_architecture

    category = load_dataset("mvtec", root, CATEGORY)
    architecture = get_architecture(backbone)
    start = time.perf_counter()
    reset_peak_memory()
    seed_everything(seed)

    # Random weights: anomalib's own seeded timm initialisation, as bench's `random`.
    if kind == "patchcore":
        model = PatchcoreModel(layers=architecture.layer_names([2, 3]), backbone=architecture.timm_name,
                               pre_trained=False, num_neighbors=9)
    else:
        model = PadimModel(backbone=architecture.timm_name, layers=architecture.layer_names([1, 2, 3]),
                           pre_trained=False, n_features=PAPER_FEATURES.get(backbone, 100))
    samples = select_train_samples(category, shots, seed)
    train = TrainData(samples, image_size, IMAGENET_MEAN, IMAGENET_STD, 8, seed)
    model.train()
    with torch.no_grad():
        for images in train.batches():
            model(images)
        if kind == "patchcore":
            model.subsample_embedding(0.1)
        else:
            model.fit()

    model.eval()
    test = DataLoader(ImageDataset(category.test, image_size, IMAGENET_MEAN, IMAGENET_STD), batch_size=8)
    scores = np.zeros(len(category.test))
    maps = np.zeros((len(category.test), image_size, image_size), dtype=np.float32)
    with torch.no_grad():
        for images, indices in test:
            output = model(images)
            scores[indices.numpy()] = output.pred_score.reshape(-1).double().numpy()
            maps[indices.numpy()] = output.anomaly_map[:, 0].float().numpy()
    labels = np.array([sample.label for sample in category.test])
    metrics = compute_metrics(labels, scores, load_masks(category.test, image_size, image_size), maps)
    return {"status": "done", "wall_time_s": time.perf_counter() - start, "peak_memory_mb": peak_memory_mb(),
            "metrics": {metric.name: metric.value for metric in metrics}}


def format_row(result: dict) -> str:
    """Return one markdown table row: label, image AUROC, pixel AUROC, AUPRO, wall time, peak memory, command."""
    if "error" in result:
        return f"| {result['label']} | failed: {result['error'].splitlines()[-1]} | | | | | `{result['command']}` |"
    metrics = result["metrics"]

    def shown(name: str) -> str:
        value = metrics.get(name)
        return "NULL" if value is None else f"{100 * value:.1f}"

    return (f"| {result['label']} | {shown('image_auroc')} | {shown('pixel_auroc')} | {shown('aupro')} | "
            f"{result['wall_time_s']:.0f} s | {result['peak_memory_mb'] / 1024:.2f} GiB | `{result['command']}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPOSITORY.parent / "shared" / "data" / "MVTecAD",
                        help="MVTec AD root that contains bottle/")
    parser.add_argument("--methods", nargs="*", default=None, help="Only these methods (default: all presets).")
    parser.add_argument("--skip-originals", action="store_true", help="Do not run anomalib's PatchCore and PaDiM.")
    parser.add_argument("--only-comparisons", action="store_true",
                        help="Run only the PatchCore and PaDiM comparisons with anomalib, no other preset.")
    parser.add_argument("--padim-compare-size", type=int, default=128,
                        help="Image size in pixels of the PaDiM comparison with anomalib (both sides).")
    parser.add_argument("--compare-shots", type=int, default=None,
                        help="Train both sides of the anomalib comparisons on this many images drawn with seed 0 "
                             "(bench's --train-shots). Default: all training images.")
    parser.add_argument("--out", type=Path, default=None, help="Also write every result as JSON to this file.")
    parser.add_argument("--original", choices=("patchcore", "padim"), help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="wide_resnet50_2", help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.original:
        print(json.dumps(run_original(args.original, args.root.resolve(), args.backbone, args.image_size,
                                      args.compare_shots)))
        return

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = args.root.resolve()
    presets = [preset for preset in PRESETS if not args.only_comparisons
               and (args.methods is None or preset.method in args.methods)]
    # Each comparison pairs bench's run with anomalib's original on the same data, size and seed.
    comparisons = []
    if not args.skip_originals:
        if args.methods is None or "patchcore" in args.methods:
            comparisons.append(Preset("patchcore", "random", "wide_resnet50_2", 256, train_shots=args.compare_shots))
        if args.methods is None or "padim" in args.methods:
            comparisons.append(Preset("padim", "random", "wide_resnet50_2", args.padim_compare_size,
                                      train_shots=args.compare_shots))
    presets += [preset for preset in comparisons if preset not in presets]

    # Keyed by Preset.label(), which is unique per preset.
    results: dict[str, dict] = {}
    originals: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as workspace:
        for preset in presets:
            logger.info("measuring %s", preset.label())
            results[preset.label()] = measure_bench(preset, root, Path(workspace))
            logger.info("%s", format_row(results[preset.label()]))
        for preset in comparisons:
            logger.info("measuring anomalib's original of %s (PatchCore: tens of minutes)", preset.label())
            originals[preset.label()] = measure_original(preset, root)
            logger.info("%s", format_row(originals[preset.label()]))

    print("| method, weights/backbone, size, options | image AUROC | pixel AUROC | AUPRO | wall time | peak memory | command |")
    print("|---|---|---|---|---|---|---|")
    for result in [*results.values(), *originals.values()]:
        print(format_row(result))

    for label, original in originals.items():
        ours = results[label]
        if "error" in ours or "error" in original:
            continue
        print(f"{label}: anomalib / bench wall time {original['wall_time_s'] / ours['wall_time_s']:.1f}x, "
              f"peak memory {original['peak_memory_mb'] / ours['peak_memory_mb']:.1f}x, image AUROC "
              f"{100 * original['metrics']['image_auroc']:.1f} (anomalib) vs {100 * ours['metrics']['image_auroc']:.1f} (bench)")

    if args.out:
        args.out.write_text(json.dumps({"results": list(results.values()), "originals": list(originals.values())},
                                       indent=2))


if __name__ == "__main__":
    main()
