"""Statistics the fractal study did not report: paired tests across categories and bootstrap CIs.

Paired tests compare two weights sources of one method on the categories where both have a
value: the Wilcoxon signed-rank test (two-sided, zero differences dropped) and a percentile
bootstrap 95 % confidence interval of the mean difference. Per-category intervals of image
AUROC resample the test images of one run, normal and anomalous images separately.
"""

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.errors import ConfigError
from bench.reports.render import Grid, plain
from bench.reports.tables import METRIC_LABELS, ResultTable, format_difference, format_value, source_names

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
# Percentile bootstrap of the mean difference across categories.
PAIRED_RESAMPLES = 10_000
# Stratified bootstrap over the test images of one run.
IMAGE_RESAMPLES = 2_000
BOOTSTRAP_SEED = 0
TREATMENT = "fractals"


@dataclass(frozen=True)
class PairedTest:
    """The paired difference treatment − baseline of one method across categories, as fractions."""

    method: str
    treatment: str
    baseline: str
    categories: tuple[str, ...]
    differences: tuple[float, ...]
    mean: float | None
    median: float | None
    ci_low: float | None
    ci_high: float | None
    statistic: float | None
    p_value: float | None
    note: str | None = None


@dataclass(frozen=True)
class AurocInterval:
    """Image AUROC of one run with its bootstrap confidence interval over test images."""

    auroc: float | None
    ci_low: float | None
    ci_high: float | None
    n_normal: int
    n_anomalous: int
    note: str | None = None


def bootstrap_mean_ci(values: np.ndarray, resamples: int = PAIRED_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Return the percentile bootstrap confidence interval of the mean of `values` (scipy, seeded)."""
    result = stats.bootstrap((np.asarray(values, dtype=float),), np.mean, n_resamples=resamples,
                             confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_test(differences: np.ndarray, resamples: int = PAIRED_RESAMPLES,
                seed: int = BOOTSTRAP_SEED) -> tuple[float | None, float | None, float | None, float | None, str | None]:
    """Run the Wilcoxon signed-rank test and the bootstrap CI on paired differences.

    Returns (ci_low, ci_high, statistic, p_value, note). With fewer than 2 pairs neither the
    test nor the interval exists, so the values are None and the note says why.
    """
    differences = np.asarray(differences, dtype=float)
    if len(differences) < 2:
        noun = "category" if len(differences) == 1 else "categories"
        return None, None, None, None, f"{len(differences)} paired {noun}; the test needs 2 or more"

    low, high = bootstrap_mean_ci(differences, resamples, seed)
    if np.all(differences == 0):
        return low, high, None, None, "every difference is zero"
    result = stats.wilcoxon(differences, zero_method="wilcox", alternative="two-sided")
    return low, high, float(result.statistic), float(result.pvalue), None


def resolve_treatment(treatment: str | None, weights: set[str]) -> str | None:
    """Return the treatment weights name of the paired tests, or None when the default one has no runs.

    `treatment` is the `--treatment` value, None when not given. `weights` contains the weights
    names of the report's runs. A given treatment without runs raises ConfigError, because a
    misspelt name would otherwise drop the statistics without a word.
    """
    if treatment is None:
        return TREATMENT if TREATMENT in weights else None
    if treatment not in weights:
        raise ConfigError(f"--treatment '{treatment}' is not a weights source of the report's runs; "
                          f"choose one of: {', '.join(sorted(weights))}")
    return treatment


def paired_tests(table: ResultTable, treatment: str = TREATMENT, resamples: int = PAIRED_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> list[PairedTest]:
    """Compare `treatment` with every other source of the same backbone, per method of the table.

    Pairs are the category rows where both sources have a value (seeds averaged first); the
    mean row is never a pair.
    """
    tests = []
    for method in table.methods:
        for source in table.sources:
            baselines = [other for other in table.sources if _pairs_with(source, other, treatment)]
            for baseline in baselines:
                tests.append(_test_pair(table, method, source, baseline, resamples, seed))
    return tests


def _pairs_with(source: str, other: str, treatment: str) -> bool:
    weights, _, backbone = source.partition(":")
    other_weights, _, other_backbone = other.partition(":")
    return weights == treatment and other_weights != treatment and backbone == other_backbone


def _test_pair(table: ResultTable, method: str, treatment: str, baseline: str, resamples: int,
               seed: int) -> PairedTest:
    categories, differences = [], []
    for row in table.categories:
        cell = table.cells.get((row, method))
        if cell is None:
            continue
        treated = cell.values.get(treatment, (None, None, 0))[0]
        base = cell.values.get(baseline, (None, None, 0))[0]
        if treated is not None and base is not None:
            categories.append(row)
            differences.append(treated - base)

    values = np.array(differences, dtype=float)
    mean = float(values.mean()) if len(values) else None
    median = float(np.median(values)) if len(values) else None
    low, high, statistic, p_value, note = paired_test(values, resamples, seed)
    return PairedTest(method, treatment, baseline, tuple(categories), tuple(differences), mean, median, low, high,
                      statistic, p_value, note)


def stats_grid(tests: list[PairedTest], dataset: str, metric: str, resamples: int = PAIRED_RESAMPLES,
               seed: int = BOOTSTRAP_SEED, label: str = "") -> Grid:
    """Arrange paired tests as a grid: one row per method and comparison, differences in percentage points."""
    header = ["method", "comparison", "categories", "mean Δ (pp)", "95% CI (pp)", "median Δ (pp)", "Wilcoxon W",
              "p"]
    rows = []
    for test in tests:
        interval = "–" if test.ci_low is None else f"[{format_difference(test.ci_low)}, {format_difference(test.ci_high)}]"
        rows.append([plain(test.method), plain(f"{test.treatment} − {test.baseline}"),
                     plain(str(len(test.categories))), plain(format_difference(test.mean)), plain(interval),
                     plain(format_difference(test.median)),
                     plain("–" if test.statistic is None else f"{test.statistic:g}"),
                     plain(format_p(test.p_value) if test.note is None else f"– ({test.note})")])
    notes = [f"Δ = per-category difference in percentage points, seeds averaged first; pairs: categories where both "
             f"sources have a value",
             f"95% CI: percentile bootstrap of the mean Δ, {resamples:,} resamples, seed {seed}; "
             "p: two-sided Wilcoxon signed-rank test (scipy, zero differences dropped); "
             "with n ≤ 5 categories no two-sided p can fall below 0.05"]
    prefix = f"{label} " if label else ""
    title = f"{prefix}{dataset}: {METRIC_LABELS.get(metric, metric)}, paired differences across categories"
    return Grid(title, header, rows, notes)


def format_p(p_value: float | None) -> str:
    """Format a p-value with 2 significant digits, or "<0.0001"."""
    if p_value is None or math.isnan(p_value):
        return "–"
    if p_value < 1e-4:
        return "<0.0001"
    return f"{p_value:.2g}"


def stats_csv(tests: list[PairedTest], dataset: str, metric: str) -> str:
    """Render paired tests as CSV; differences and intervals are fractions."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "metric", "method", "treatment", "baseline", "n", "mean_difference",
                     "ci_low", "ci_high", "median_difference", "wilcoxon_statistic", "p_value", "note"])
    for test in tests:
        writer.writerow([dataset, metric, test.method, test.treatment, test.baseline, len(test.categories),
                         _csv_number(test.mean), _csv_number(test.ci_low), _csv_number(test.ci_high),
                         _csv_number(test.median), _csv_number(test.statistic), _csv_number(test.p_value),
                         test.note or ""])
    return buffer.getvalue()


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def auroc_from_ranks(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Compute AUROC along the last axis as the Mann-Whitney U statistic over n_normal × n_anomalous.

    Tied scores count one half, as in the ROC curve with ties merged into one point.
    """
    ranks = stats.rankdata(scores, axis=-1)
    positives = labels.astype(bool)
    n_positive = positives.sum(axis=-1)
    n_negative = positives.shape[-1] - n_positive
    rank_sum = np.where(positives, ranks, 0).sum(axis=-1)
    return (rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)


def auroc_interval(labels: np.ndarray, scores: np.ndarray, resamples: int = IMAGE_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> AurocInterval:
    """Bootstrap image AUROC over test images: normal and anomalous images are resampled separately.

    Stratifying keeps both classes in every resample, so AUROC is always defined; the interval
    is the percentile interval of the resampled AUROCs.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    normal = scores[labels == 0]
    anomalous = scores[labels == 1]
    if len(normal) == 0 or len(anomalous) == 0:
        return AurocInterval(None, None, None, len(normal), len(anomalous),
                             "AUROC undefined: the test set has one label only")

    point = float(auroc_from_ranks(labels, scores))
    rng = np.random.default_rng(seed)
    sampled = np.concatenate([rng.choice(normal, size=(resamples, len(normal))),
                              rng.choice(anomalous, size=(resamples, len(anomalous)))], axis=1)
    sampled_labels = np.concatenate([np.zeros(len(normal)), np.ones(len(anomalous))])
    values = auroc_from_ranks(np.broadcast_to(sampled_labels, sampled.shape), sampled)
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return AurocInterval(point, float(low), float(high), len(normal), len(anomalous))


def image_auroc_intervals(frame: pd.DataFrame, resamples: int = IMAGE_RESAMPLES,
                          seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """Compute a bootstrap interval per run from the image scores and labels in its maps file.

    `frame` comes from `load_results(engine, "image_auroc")`. Returns one row per run with
    dataset, category, method, source, seed, stored (the database value), auroc, ci_low, ci_high,
    n_normal, n_anomalous and note. Runs without a maps file get a note.
    """
    frame = frame.assign(source=source_names(frame))
    rows = []
    for run in frame.itertuples():
        base = {"dataset": run.dataset, "category": run.category, "method": run.method, "source": run.source,
                "seed": run.seed, "stored": run.value}
        interval = _interval_from_maps(run.maps_path, resamples, seed)
        rows.append({**base, "auroc": interval.auroc, "ci_low": interval.ci_low, "ci_high": interval.ci_high,
                     "n_normal": interval.n_normal, "n_anomalous": interval.n_anomalous, "note": interval.note})
    result = pd.DataFrame(rows)
    if result.empty:
        return result
    return result.sort_values(["dataset", "category", "method", "source", "seed"]).reset_index(drop=True)


def _interval_from_maps(maps_path: str | float | None, resamples: int, seed: int) -> AurocInterval:
    # pandas stores a missing path as NaN in string columns.
    if maps_path is None or pd.isna(maps_path) or not maps_path:
        return AurocInterval(None, None, None, 0, 0, "no maps file stored with the run")
    path = Path(maps_path)
    if not path.is_file():
        logger.warning("maps file %s not found; no interval for its run", path)
        return AurocInterval(None, None, None, 0, 0, f"maps file not found: {path}")
    with np.load(path) as archive:
        labels, scores = archive["labels"], archive["scores"]
    return auroc_interval(labels, scores, resamples, seed)


def ci_grid(intervals: pd.DataFrame, dataset: str, resamples: int = IMAGE_RESAMPLES,
            seed: int = BOOTSTRAP_SEED) -> Grid:
    """Arrange per-run image AUROC intervals of one dataset as a grid, in percent."""
    header = ["category", "method", "source", "seed", "image AUROC (%)", "95% CI (%)", "normal", "anomalous"]
    selected = intervals[intervals["dataset"] == dataset]
    without_maps = selected["note"].fillna("").str.startswith(("no maps file", "maps file not found"))
    rows = []
    for row in selected[~without_maps].itertuples():
        if row.auroc is None or pd.isna(row.auroc):
            interval = f"– ({row.note})"
        else:
            interval = f"[{100 * row.ci_low:.1f}, {100 * row.ci_high:.1f}]"
        rows.append([plain(row.category), plain(row.method), plain(row.source), plain(str(row.seed)),
                     plain(format_value(None if pd.isna(row.auroc) else row.auroc, None)), plain(interval),
                     plain(str(row.n_normal)), plain(str(row.n_anomalous))])
    notes = [f"95% CI: bootstrap over the test images of each run, normal and anomalous images resampled "
             f"separately, {resamples:,} resamples, seed {seed}, percentile interval; scores and labels from the "
             "run's maps file"]
    if without_maps.any():
        notes.append(f"{int(without_maps.sum())} runs left out: no maps file stored or found")
    return Grid(f"{dataset}: image AUROC per category with 95% bootstrap intervals over test images", header, rows,
                notes)


def ci_csv(intervals: pd.DataFrame) -> str:
    """Render per-run intervals as CSV; AUROC and bounds are fractions."""
    buffer = io.StringIO()
    columns = ["dataset", "category", "method", "source", "seed", "stored", "auroc", "ci_low", "ci_high",
               "n_normal", "n_anomalous", "note"]
    intervals.reindex(columns=columns).to_csv(buffer, index=False, lineterminator="\n", float_format="%.6f")
    return buffer.getvalue()
