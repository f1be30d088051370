"""Qualitative figure: test images, ground truth, and per weights source the anomaly map and its mask.

Maps come from the runs' maps files (float16 at the evaluation resolution, see runs.maps_path).
Masks threshold each run's map at that run's pixel F1-max threshold, or at a quantile of the
pixel scores of its normal test images.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image
from sqlalchemy import Engine

from bench.errors import BenchError, ConfigError
from bench.reports.figures import save_figure
from bench.reports.tables import RunFilter, check_axes, keep_default_layers, load_results, source_names, source_rank

logger = logging.getLogger(__name__)

F1 = "f1"
DEFAULT_COUNT = 4


@dataclass
class RunMaps:
    """The stored maps of one run, with its threshold for the binary mask."""

    source: str
    run_id: int
    seed: int
    maps: np.ndarray
    labels: np.ndarray
    keys: list[str]
    paths: list[str]
    threshold: float = float("nan")


def image_key(path: str) -> str:
    """Identify a test image by its last two path parts, e.g. "broken_large/000.png", so moved roots still match."""
    return "/".join(Path(path).parts[-2:])


def select_runs(engine: Engine, filters: RunFilter, dataset: str, category: str, method: str) -> pd.DataFrame:
    """Return one finished run with a maps file per weights source; the lowest seed unless --seed selects one."""
    frame = load_results(engine, "image_auroc", filters.replace(dataset=dataset, categories=(category,),
                                                                 methods=(method,)))
    if frame.empty:
        raise ConfigError(f"no finished {method} runs on {dataset}/{category} for these filters")
    if filters.layers is None:
        frame = keep_default_layers(frame)
    frame = frame[frame["maps_path"].notna()].copy()
    if frame.empty:
        raise ConfigError(f"the {method} runs on {dataset}/{category} stored no anomaly maps; rerun them with maps")

    frame["source"] = source_names(frame)
    chosen = []
    for source, group in frame.groupby("source"):
        check_axes(group, f"{dataset}/{category}/{method}/{source}")
        chosen.append(group.sort_values(["seed", "run_id"]).iloc[0])
    return pd.DataFrame(chosen).sort_values("source", key=lambda values: values.map(source_rank)).reset_index(drop=True)


def load_run_maps(run) -> RunMaps:
    """Read the maps file of one run (a row of `select_runs`)."""
    path = Path(run.maps_path)
    if not path.is_file():
        raise ConfigError(f"maps file of run {run.run_id} not found: {path}")
    with np.load(path) as archive:
        maps = archive["maps"]
        labels = archive["labels"].astype(int)
        paths = [str(value) for value in archive["paths"]]
    return RunMaps(run.source, int(run.run_id), int(run.seed), maps, labels, [image_key(p) for p in paths], paths)


def choose_images(keys: list[str], labels: np.ndarray, requested: list[str], count: int) -> list[int]:
    """Return test-image indices: those named in `requested`, else `count` anomalous images spread over the set.

    A request matches "defect/file.png", "defect/file" or a file name that is unique.
    """
    if not requested:
        anomalous = np.flatnonzero(labels == 1)
        if len(anomalous) == 0:
            raise ConfigError("the test set has no anomalous image; name images with --image")
        picks = np.unique(np.linspace(0, len(anomalous) - 1, min(count, len(anomalous))).round().astype(int))
        return [int(anomalous[pick]) for pick in picks]

    indices = []
    for request in requested:
        request = request.strip("/")
        matches = [index for index, key in enumerate(keys)
                   if request in (key, key.rsplit(".", 1)[0], key.split("/")[-1], key.split("/")[-1].rsplit(".", 1)[0])]
        if not matches:
            raise ConfigError(f"test image '{request}' not found; names look like {keys[0]}, {keys[-1]}")
        if len(matches) > 1:
            raise ConfigError(f"test image '{request}' is ambiguous ({len(matches)} matches); pass defect/file, "
                              f"e.g. {keys[matches[0]]}")
        indices.append(matches[0])
    return indices


def _sortable_keys(values: np.ndarray) -> np.ndarray:
    # Maps float16 bit patterns to uint16 keys in the order of the values: negatives reversed,
    # non-negatives above them.
    bits = values.view(np.uint16)
    return np.where(bits & 0x8000, 0xFFFF - bits, bits | 0x8000).astype(np.uint16)


def _value_of_key(key: int) -> float:
    bits = key - 0x8000 if key >= 0x8000 else 0xFFFF - key
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def f1_max_threshold(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """Return (threshold, F1) of the pixel F1-max over all maps, predicting anomalous at score >= threshold.

    Exact on the stored float16 maps: every float16 value is a candidate threshold, counted with
    one histogram of 65,536 bins, one image at a time to bound memory.
    """
    positives = np.zeros(1 << 16, dtype=np.int64)
    totals = np.zeros(1 << 16, dtype=np.int64)
    for image_map, mask in zip(maps, masks):
        keys = _sortable_keys(np.ascontiguousarray(image_map, dtype=np.float16).ravel())
        totals += np.bincount(keys, minlength=1 << 16)
        positives += np.bincount(keys[mask.ravel()], minlength=1 << 16)
    n_positive = positives.sum()
    if n_positive == 0:
        raise ConfigError("the ground truth has no anomalous pixel, so no F1-max threshold exists; "
                          "pass --threshold with a quantile such as 0.99")

    present = np.flatnonzero(totals)[::-1]
    true_positives = np.cumsum(positives[present])
    predicted = np.cumsum(totals[present])
    f1 = 2 * true_positives / (predicted + n_positive)
    best = int(np.argmax(f1))
    return _value_of_key(int(present[best])), float(f1[best])


def quantile_threshold(run: RunMaps, quantile: float) -> float:
    """Return the `quantile` of the pixel scores of the run's normal test images."""
    normal = run.maps[run.labels == 0]
    if len(normal) == 0:
        raise ConfigError(f"run {run.run_id} has no normal test image to take a quantile threshold from")
    return float(np.quantile(normal.astype(np.float32), quantile))


def parse_threshold(text: str) -> str | float:
    """Parse --threshold: "f1" or a quantile in (0, 1)."""
    if text == F1:
        return F1
    try:
        quantile = float(text)
    except ValueError:
        raise ConfigError(f"invalid --threshold '{text}'; pass f1 or a quantile such as 0.99") from None
    if not 0 < quantile < 1:
        raise ConfigError(f"invalid --threshold {text}; a quantile must lie in (0, 1)")
    return quantile


def load_ground_truth(dataset: str, root: str, category: str, keys: list[str], height: int,
                      width: int) -> tuple[np.ndarray | None, list[Path] | None]:
    """Load masks at the maps' resolution and image paths in the order of `keys`; (None, None) when unavailable."""
    from bench.data import load_dataset
    from bench.data.loading import load_masks

    try:
        loaded = load_dataset(dataset, Path(root), category)
    except BenchError as error:
        logger.warning("ground truth of %s/%s unavailable: %s", dataset, category, error)
        return None, None
    by_key = {image_key(str(sample.path)): sample for sample in loaded.test}
    missing = [key for key in keys if key not in by_key]
    if missing:
        logger.warning("%d test images of the run are not in %s (first: %s); no ground truth", len(missing), root,
                       missing[0])
        return None, None
    samples = [by_key[key] for key in keys]
    return load_masks(samples, height, width), [sample.path for sample in samples]


def qualitative_figure(engine: Engine, filters: RunFilter, dataset: str, category: str, method: str, out: Path,
                       requested: list[str] | None = None, count: int = DEFAULT_COUNT,
                       threshold: str | float = F1) -> list[Path]:
    """Draw image, ground truth, and per weights source the anomaly map and thresholded mask, per chosen image."""
    selected = select_runs(engine, filters, dataset, category, method)
    runs = [load_run_maps(run) for run in selected.itertuples()]
    reference = runs[0]
    for run in runs[1:]:
        if run.keys != reference.keys or run.maps.shape != reference.maps.shape:
            raise ConfigError(f"runs {reference.run_id} and {run.run_id} scored different test sets or resolutions; "
                              "select runs of one dataset root and --eval-size")

    _, height, width = reference.maps.shape
    root = selected["root"].iloc[0]
    masks, image_paths = load_ground_truth(dataset, root, category, reference.keys, height, width)
    for run in runs:
        if threshold == F1:
            if masks is None:
                raise ConfigError(f"no ground truth for {dataset}/{category} at {root}, so no F1-max threshold; "
                                  "pass --threshold with a quantile such as 0.99")
            run.threshold, _ = f1_max_threshold(run.maps, masks)
        else:
            run.threshold = quantile_threshold(run, float(threshold))

    indices = choose_images(reference.keys, reference.labels, requested or [], count)
    paths = image_paths or [Path(path) for path in reference.paths]
    return _draw(runs, indices, paths, masks, threshold, f"{dataset}/{category}, {method}", out)


def _draw(runs: list[RunMaps], indices: list[int], paths: list[Path], masks: np.ndarray | None,
          threshold: str | float, label: str, out: Path) -> list[Path]:
    from bench.data.images import load_image

    _, height, width = runs[0].maps.shape
    columns = 2 + 2 * len(runs)
    figure = Figure(figsize=(1.9 * columns, 1.9 * len(indices) + 1.1))
    ranges = [(float(run.maps.min()), float(run.maps.max())) for run in runs]
    titles = ["image", "ground truth"]
    for run in runs:
        titles += [f"map: {run.source}", f"mask: {run.source}\n(t = {run.threshold:.3g})"]

    image_handle = None
    for row, index in enumerate(indices):
        image = np.asarray(load_image(paths[index]).resize((width, height), Image.BILINEAR))
        panels = [(image, {}), (masks[index] if masks is not None else None, {"cmap": "gray", "vmin": 0, "vmax": 1})]
        for run, (low, high) in zip(runs, ranges):
            scaled = (run.maps[index].astype(np.float32) - low) / max(high - low, 1e-12)
            panels.append((scaled, {"cmap": "jet", "vmin": 0, "vmax": 1}))
            panels.append((run.maps[index].astype(np.float32) >= run.threshold, {"cmap": "gray", "vmin": 0, "vmax": 1}))
        for column, (pixels, style) in enumerate(panels):
            axes = figure.add_subplot(len(indices), columns, row * columns + column + 1)
            axes.set_xticks([])
            axes.set_yticks([])
            if pixels is None:
                axes.text(0.5, 0.5, "no mask", ha="center", va="center", transform=axes.transAxes, fontsize=8)
            else:
                handle = axes.imshow(pixels, interpolation="nearest", **style)
                if style.get("cmap") == "jet":
                    image_handle = handle
            if row == 0:
                axes.set_title(titles[column], fontsize=8)
            if column == 0:
                axes.set_ylabel(runs[0].keys[index], fontsize=7)

    rule = "pixel F1-max threshold of each run" if threshold == F1 else f"{threshold} quantile of normal-image pixels"
    figure.suptitle(f"{label}: anomaly maps at {height}×{width} px; masks = map ≥ t ({rule})", fontsize=10)
    figure.tight_layout(rect=(0, 0.07, 1, 0.96), h_pad=0.8)
    if image_handle is not None:
        bar_axes = figure.add_axes((0.3, 0.03, 0.4, 0.015))
        bar = figure.colorbar(image_handle, cax=bar_axes, orientation="horizontal")
        bar.set_label("anomaly score, scaled per run to [0, 1] over its test set", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return save_figure(figure, out)
