"""Published numbers of the fractal study, and tables that set our results beside them.

The numbers ship in `bench/reports/published/ugwu2024.csv` in percent, as printed in Ugwu,
Casarin and Lanz, "Fractals as Pre-training Datasets for Anomaly Detection and Localization"
(CVPR 2024 Workshops); `published/README.md` describes the file. They are loaded as fractions
in [0, 1], the unit of the database.
"""

import csv
import io
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd

from bench.errors import ConfigError
from bench.reports.render import Grid, Part, plain
from bench.reports.tables import (FINE_TUNED_MARK, FINE_TUNED_NOTE, MEAN_ROW, METHOD_ORDER, METRIC_LABELS, Cell,
                                  ResultTable, format_difference, format_value, source_rank)

PUBLISHED_DIR = Path(__file__).parent / "published"
# `--compare` names and the file each one reads.
STUDIES = {"published": "ugwu2024.csv"}
STUDY_NAME = "Ugwu, Casarin and Lanz (CVPR 2024 Workshops)"
STUDY_SETTING = "WideResNet-50-2, 256x256 inputs, anomalib v1 (CutPaste and PANDA: the authors' code)"
PUBLISHED_SOURCES = ("imagenet", "fractals")
RECOMPUTED_MARK = "§"
NOT_PUBLISHED = "not in the published tables"
NO_PAIRS = "no category has both values"


@dataclass(frozen=True)
class Comparison:
    """One cell of a comparison: our mean (and std over seeds) and the published value, as fractions."""

    ours: float | None
    ours_std: float | None
    published: float | None
    note: str | None = None

    @property
    def difference(self) -> float | None:
        """Ours minus published, or None when either is missing."""
        if self.ours is None or self.published is None:
            return None
        return self.ours - self.published


@dataclass
class ComparisonTable:
    """Our results of one weights source beside the published ones: `cells[(row, method)]`."""

    dataset: str
    metric: str
    source: str
    published_source: str
    rows: list[str]
    methods: list[str]
    cells: dict[tuple[str, str], Comparison]
    fine_tuned: set[str] = field(default_factory=set)
    recomputed: bool = False


@lru_cache(maxsize=None)
def _read_study(file_name: str) -> pd.DataFrame:
    frame = pd.read_csv(PUBLISHED_DIR / file_name, dtype={"value_percent": float, "null_reason": str},
                        keep_default_na=False, na_values={"value_percent": [""]})
    frame["value"] = frame.pop("value_percent") / 100
    frame["null_reason"] = frame["null_reason"].replace("", None)
    return frame


def load_published(study: str = "published") -> pd.DataFrame:
    """Return the published numbers: dataset, category, method, metric, source, value (fraction), null_reason.

    The `mean` category contains the paper's printed average rows.
    """
    if study not in STUDIES:
        raise ConfigError(f"unknown --compare '{study}'; choose one of {', '.join(STUDIES)}")
    return _read_study(STUDIES[study]).copy()


def published_table(dataset: str, metric: str, study: str = "published") -> ResultTable:
    """Arrange the published per-category numbers as a result table, for the paired statistics.

    The mean row is the paper's printed average, not recomputed.
    """
    frame = load_published(study)
    frame = frame[(frame["dataset"] == dataset) & (frame["metric"] == metric)]
    if frame.empty:
        raise ConfigError(f"no published {metric} numbers for dataset '{dataset}'")
    categories = sorted(set(frame["category"]) - {MEAN_ROW})
    methods = [method for method in METHOD_ORDER if method in set(frame["method"])]
    cells: dict[tuple[str, str], Cell] = {}
    for row in frame.itertuples():
        value = None if pd.isna(row.value) else float(row.value)
        cells.setdefault((row.category, row.method), Cell()).values[row.source] = (value, None, int(value is not None))
    return ResultTable(dataset, metric, categories + [MEAN_ROW], methods, list(PUBLISHED_SOURCES), cells,
                       {"cutpaste"} & set(methods), [f"published: {STUDY_NAME}; {STUDY_SETTING}"])


def build_comparisons(table: ResultTable, study: str = "published") -> list[ComparisonTable]:
    """Set each source of `table` that the study reports (imagenet, fractals) beside the study's numbers.

    Category rows pair our value with the paper's. In the mean row both means cover the
    categories where both values exist. When these are all the categories the paper reports, the
    published mean is the paper's printed one. Otherwise it is recomputed from the paper's
    per-category values and marked. Returns an empty list when the study has no numbers for the
    table's dataset and metric.
    """
    published = load_published(study)
    published = published[(published["dataset"] == table.dataset) & (published["metric"] == table.metric)]
    if published.empty:
        return []
    lookup = {(row.category, row.method, row.source): (None if pd.isna(row.value) else float(row.value),
                                                       row.null_reason)
              for row in published.itertuples()}

    comparisons = []
    for source in sorted(table.sources, key=source_rank):
        weights = source.split(":")[0]
        if weights not in PUBLISHED_SOURCES:
            continue
        comparison = ComparisonTable(table.dataset, table.metric, source, weights, list(table.rows),
                                     list(table.methods), {}, set(table.fine_tuned))
        for method in table.methods:
            _compare_method(table, comparison, method, source, weights, lookup)
        comparisons.append(comparison)
    return comparisons


def _compare_method(table: ResultTable, comparison: ComparisonTable, method: str, source: str, weights: str,
                    lookup: dict) -> None:
    both = []
    for row in table.categories:
        ours, ours_std, _ = table.cells.get((row, method), Cell()).values.get(source, (None, None, 0))
        published, reason = lookup.get((row, method, weights), (None, NOT_PUBLISHED))
        comparison.cells[(row, method)] = Comparison(ours, ours_std, published, reason if published is None else None)
        if ours is not None and published is not None:
            both.append((row, ours, published))

    reported = [key[0] for key, (value, _) in lookup.items()
                if key[1] == method and key[2] == weights and key[0] != MEAN_ROW and value is not None]
    if not both:
        # No category has both values, so neither mean exists: the table's note defines both
        # means over the same categories.
        comparison.cells[(MEAN_ROW, method)] = Comparison(None, None, None, NO_PAIRS)
        return

    ours_mean = sum(value for _, value, _ in both) / len(both)
    if {row for row, _, _ in both} == set(reported):
        published_mean = lookup[(MEAN_ROW, method, weights)][0]
        note = None
    else:
        published_mean = sum(value for _, _, value in both) / len(both)
        note = f"recomputed over {len(both)} of {len(reported)} categories"
        comparison.recomputed = True
    comparison.cells[(MEAN_ROW, method)] = Comparison(ours_mean, None, published_mean, note)


def comparison_grid(comparison: ComparisonTable) -> Grid:
    """Arrange a comparison as a grid: each cell reads "ours / published (difference)" in percent."""
    header = ["category"] + [method + (FINE_TUNED_MARK if method in comparison.fine_tuned else "")
                             for method in comparison.methods]
    rows = []
    for row in comparison.rows:
        cells = [plain(row)]
        for method in comparison.methods:
            cells.append(_comparison_parts(comparison.cells.get((row, method))))
        rows.append(cells)

    label = METRIC_LABELS.get(comparison.metric, comparison.metric)
    notes = [f"ours / published (ours − published, percentage points), values in %; published: {STUDY_NAME}, "
             f"{STUDY_SETTING}",
             "mean row: both means over the categories where both values exist"]
    if comparison.recomputed:
        notes.append(f"{RECOMPUTED_MARK} published mean recomputed from the paper's per-category values over those "
                     "categories, because our runs do not cover every category the paper reports")
    if comparison.fine_tuned:
        notes.append(FINE_TUNED_NOTE)
    notes += _missing_notes(comparison)
    rules = {len(comparison.rows) - 1} if comparison.rows and comparison.rows[-1] == MEAN_ROW else set()
    title = f"{comparison.dataset}: {label} (%), {comparison.source}: ours vs published"
    return Grid(title, header, rows, notes, rules)


def _missing_notes(comparison: ComparisonTable) -> list[str]:
    # Each note names its cells, because a table's methods differ in which values exist.
    no_pairs = [method for method in comparison.methods
                if comparison.cells.get((MEAN_ROW, method), Comparison(None, None, None)).note == NO_PAIRS]
    cells_by_reason: dict[str, list[str]] = {}
    for row in comparison.rows:
        for method in comparison.methods:
            cell = comparison.cells.get((row, method))
            if row == MEAN_ROW or cell is None or cell.published is not None:
                continue
            if cell.note and cell.note != NOT_PUBLISHED:
                cells_by_reason.setdefault(cell.note, []).append(f"{row}/{method}")
    notes = [f"published value missing for {', '.join(cells)}: {reason}" for reason, cells in cells_by_reason.items()]
    if no_pairs:
        notes.append(f"mean row of {', '.join(no_pairs)}: no mean, because no category has both our value and "
                     "a published value")
    return notes


def _comparison_parts(cell: Comparison | None) -> list[Part]:
    if cell is None:
        return plain("–")
    published = format_value(cell.published, None)
    if cell.note and cell.note.startswith("recomputed"):
        published += RECOMPUTED_MARK
    return plain(f"{format_value(cell.ours, cell.ours_std)} / {published} ({format_difference(cell.difference)})")


def comparison_csv(comparisons: list[ComparisonTable]) -> str:
    """Render comparisons as long-format CSV; ours, published and difference are fractions."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "metric", "category", "method", "source", "ours", "ours_std", "published",
                     "difference", "note"])
    for comparison in comparisons:
        for row in comparison.rows:
            for method in comparison.methods:
                cell = comparison.cells.get((row, method))
                if cell is None:
                    continue
                writer.writerow([comparison.dataset, comparison.metric, row, method, comparison.source,
                                 _number(cell.ours), _number(cell.ours_std), _number(cell.published),
                                 _number(cell.difference), cell.note or ""])
    return buffer.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
