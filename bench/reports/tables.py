"""Result tables: per-category metrics by method and weights source, queried from the database.

Rows are categories plus their mean, columns are methods, and each cell holds one value per
weights source (e.g. imagenet/fractals/random), in percent. The best source per cell is marked.
"""

import math
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy import Engine, select

from bench.errors import ConfigError
from bench.schema.models import Metric, Run

# Table names accepted by `bench report --table`, mapped to metric names in the `metrics` table.
TABLES = {
    "auroc": "image_auroc",
    "image_auroc": "image_auroc",
    "pixel_auroc": "pixel_auroc",
    "aupro": "aupro",
    "image_f1_max": "image_f1_max",
    "pixel_f1_max": "pixel_f1_max",
}
SOURCE_ORDER = ("imagenet", "fractals", "random")
METHOD_ORDER = ("fastflow", "cflow", "patchcore", "padim", "reverse_distillation", "stfpm", "cutpaste", "panda")
# Run axes that must agree inside one cell, with the `bench report` filter that selects one value.
AXES = {"layers": "--layers", "image_size": "--image-size", "method_options": "(method options)", "root": "--root"}
MEAN_ROW = "mean"


@dataclass
class Cell:
    """The values of one (category, method) cell: per source, the mean and std over seeds."""

    values: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)
    best: set[str] = field(default_factory=set)


@dataclass
class ResultTable:
    """A rendered-independent table: `cells[(row, method)]` for every row and method."""

    dataset: str
    metric: str
    rows: list[str]
    methods: list[str]
    sources: list[str]
    cells: dict[tuple[str, str], Cell]


def load_results(engine: Engine, metric: str, filters: dict[str, object] | None = None) -> pd.DataFrame:
    """Return one row per finished run with its value of `metric` (NaN when undefined).

    `filters` maps run columns (dataset, backbone, layers, image_size, seed, method, weights_name,
    category) to the one value to keep.
    """
    query = (
        select(Run.dataset, Run.category, Run.method, Run.backbone, Run.weights_name.label("weights"),
               Run.layers, Run.image_size, Run.seed, Run.root, Run.method_options, Metric.value, Metric.null_reason)
        .join(Metric, (Metric.run_id == Run.id) & (Metric.name == metric))
        .where(Run.status == "done")
    )
    for column, value in (filters or {}).items():
        if value is not None:
            query = query.where(getattr(Run, column) == value)
    with engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).mappings().all())
    if frame.empty:
        return frame
    frame["method_options"] = frame["method_options"].map(lambda options: repr(sorted((options or {}).items())))
    frame["value"] = frame["value"].astype(float)
    return frame


def _ordered(values, preferred) -> list[str]:
    present = set(values)
    return [value for value in preferred if value in present] + sorted(present - set(preferred))


def _check_axes(group: pd.DataFrame, label: str) -> None:
    for axis, flag in AXES.items():
        distinct = sorted(group[axis].astype(str).unique())
        if len(distinct) > 1:
            raise ConfigError(
                f"{len(group)} runs for {label} differ in {axis} ({', '.join(distinct)}); select one with {flag}"
            )


def build_table(frame: pd.DataFrame, dataset: str, metric: str) -> ResultTable:
    """Arrange the runs of one dataset into a table; seeds of one configuration are averaged."""
    frame = frame[frame["dataset"] == dataset].copy()
    # With several backbones in the selection, a source is named with its backbone.
    several_backbones = frame["backbone"].nunique() > 1
    frame["source"] = frame["weights"] + (":" + frame["backbone"] if several_backbones else "")

    rows = sorted(frame["category"].unique())
    methods = _ordered(frame["method"].unique(), METHOD_ORDER)
    sources = sorted(frame["source"].unique(), key=_source_rank)

    cells: dict[tuple[str, str], Cell] = {}
    for (category, method, source), group in frame.groupby(["category", "method", "source"]):
        _check_axes(group, f"{dataset}/{category}/{method}/{source}")
        defined = group["value"].dropna()
        mean = float(defined.mean()) if len(defined) else None
        std = float(defined.std(ddof=1)) if len(defined) > 1 else None
        cells.setdefault((category, method), Cell()).values[source] = (mean, std, len(defined))

    for method in methods:
        for source in sources:
            per_category = [cells[(row, method)].values[source][0] for row in rows
                            if source in cells.get((row, method), Cell()).values
                            and cells[(row, method)].values[source][0] is not None]
            if per_category:
                mean = sum(per_category) / len(per_category)
                cells.setdefault((MEAN_ROW, method), Cell()).values[source] = (mean, None, len(per_category))

    for cell in cells.values():
        defined = {source: value[0] for source, value in cell.values.items() if value[0] is not None}
        if len(defined) > 1:
            top = max(defined.values())
            cell.best = {source for source, value in defined.items() if math.isclose(value, top, abs_tol=1e-12)}

    return ResultTable(dataset, metric, rows + ([MEAN_ROW] if rows else []), methods, sources, cells)


def _source_rank(source: str) -> tuple[int, str]:
    weights = source.split(":")[0]
    rank = SOURCE_ORDER.index(weights) if weights in SOURCE_ORDER else len(SOURCE_ORDER)
    return rank, source


def format_value(mean: float | None, std: float | None) -> str:
    """Format a metric in percent with one decimal, "±std" over seeds, or "–" when undefined."""
    if mean is None:
        return "–"
    text = f"{100 * mean:.1f}"
    if std is not None:
        text += f"±{100 * std:.1f}"
    return text
