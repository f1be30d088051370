"""Result tables: per-category metrics by method and weights source, queried from the database.

Rows are categories plus their mean, columns are methods, and each cell contains one value per
weights source in a fixed order: imagenet, fractals, random, then other names alphabetically.
The database stores metrics as fractions in [0, 1]; tables show them in percent. The best
source of each cell is marked.
"""

import logging
import math
from dataclasses import dataclass, field, fields

import pandas as pd
from sqlalchemy import Engine, select

from bench.errors import ConfigError
from bench.schema.models import Metric, Run

logger = logging.getLogger(__name__)

# Table names accepted by `bench report --table`, mapped to metric names in the `metrics` table.
TABLES = {
    "auroc": "image_auroc",
    "image_auroc": "image_auroc",
    "pixel_auroc": "pixel_auroc",
    "aupro": "aupro",
    "image_f1_max": "image_f1_max",
    "pixel_f1_max": "pixel_f1_max",
}
METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO, FPR ≤ 0.3",
    "image_f1_max": "image F1-max",
    "pixel_f1_max": "pixel F1-max",
}
# The three metrics of the fractal study's tables, in its order.
STUDY_METRICS = ("image_auroc", "pixel_auroc", "aupro")
SOURCE_ORDER = ("imagenet", "fractals", "random")
METHOD_ORDER = ("fastflow", "cflow", "patchcore", "padim", "reverse_distillation", "stfpm", "cutpaste", "panda")
# Run axes that must agree inside one cell, with the `bench report` option that selects one value.
AXES = {
    "layers": "--layers",
    "image_size": "--image-size",
    "eval_size": "--eval-size",
    "train_shots": "--train-shots",
    "method_options": "--method (one configuration per method)",
    "root": "--root",
}
MEAN_ROW = "mean"
# Marks a mean over fewer categories than the table lists.
PARTIAL_MEAN_MARK = "‡"
FINE_TUNED_MARK = "†"
FINE_TUNED_NOTE = (f"{FINE_TUNED_MARK} fine-tunes the backbone while fitting (runs.backbone_fine_tuned = 1); "
                   "the other methods keep the pre-trained weights frozen")
# `--train-shots 0` selects runs on the full training set (train_shots NULL).
ALL_SHOTS = 0


@dataclass(frozen=True)
class RunFilter:
    """One value per run axis to keep; None (or an empty tuple) keeps every value."""

    dataset: str | None = None
    backbone: str | None = None
    layers: str | None = None
    image_size: int | None = None
    eval_size: int | None = None
    seed: int | None = None
    train_shots: int | None = None
    root: str | None = None
    methods: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    def replace(self, **changes) -> "RunFilter":
        """Return a copy with some fields changed."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        values.update(changes)
        return RunFilter(**values)


@dataclass
class Cell:
    """The values of one (category, method) cell: per source, the mean, the std over seeds and the count.

    In the mean row the count is the number of categories averaged.
    """

    values: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)
    best: set[str] = field(default_factory=set)


@dataclass
class ResultTable:
    """A table independent of its rendering: `cells[(row, method)]` for every row and method.

    `fine_tuned` names the methods whose runs changed the backbone (CutPaste), and `settings`
    describes the runs behind the table (backbone, input size, layers, seeds). `uncompared_means`
    names the methods whose mean row marks no best source, because their sources' means cover
    different categories.
    """

    dataset: str
    metric: str
    rows: list[str]
    methods: list[str]
    sources: list[str]
    cells: dict[tuple[str, str], Cell]
    fine_tuned: set[str] = field(default_factory=set)
    settings: list[str] = field(default_factory=list)
    uncompared_means: list[str] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        """The category rows, without the mean row."""
        return [row for row in self.rows if row != MEAN_ROW]


def load_results(engine: Engine, metric: str, filters: RunFilter | dict | None = None) -> pd.DataFrame:
    """Return one row per finished run with its value of `metric` (NaN when undefined).

    Columns: run_id, dataset, category, method, backbone, weights, layers, image_size, eval_size,
    seed, train_shots, root, method_options (a canonical string), fine_tuned, maps_path, value
    (a fraction) and null_reason.
    """
    if isinstance(filters, dict):
        filters = RunFilter(**{key: value for key, value in filters.items() if value is not None})
    filters = filters or RunFilter()

    query = (
        select(Run.id.label("run_id"), Run.dataset, Run.category, Run.method, Run.backbone,
               Run.weights_name.label("weights"), Run.layers, Run.image_size, Run.seed, Run.train_shots, Run.root,
               Run.method_options, Run.config, Run.backbone_fine_tuned.label("fine_tuned"), Run.maps_path,
               Metric.value, Metric.null_reason)
        .join(Metric, (Metric.run_id == Run.id) & (Metric.name == metric))
        .where(Run.status == "done")
    )
    query = _apply_filters(query, filters)
    with engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(query).mappings().all())
    if frame.empty:
        return frame

    frame["method_options"] = frame["method_options"].map(lambda options: repr(sorted((options or {}).items())))
    # Older runs have no eval_size in their configuration.
    frame["eval_size"] = frame.pop("config").map(lambda config: (config or {}).get("eval_size"))
    frame["value"] = frame["value"].astype(float)
    frame["fine_tuned"] = frame["fine_tuned"].astype(bool)
    if filters.eval_size is not None:
        frame = frame[frame["eval_size"] == filters.eval_size].reset_index(drop=True)
    return frame


def _apply_filters(query, filters: RunFilter):
    for column in ("dataset", "backbone", "layers", "image_size", "seed", "root"):
        value = getattr(filters, column)
        if value is not None:
            query = query.where(getattr(Run, column) == value)
    if filters.train_shots == ALL_SHOTS:
        query = query.where(Run.train_shots.is_(None))
    elif filters.train_shots is not None:
        query = query.where(Run.train_shots == filters.train_shots)
    if filters.methods:
        query = query.where(Run.method.in_(filters.methods))
    if filters.weights:
        query = query.where(Run.weights_name.in_(filters.weights))
    if filters.categories:
        query = query.where(Run.category.in_(filters.categories))
    return query


# RunFilter fields stored as run columns, with the word an error message uses for each.
_FILTER_COLUMNS = {
    "dataset": (Run.dataset, "dataset"),
    "backbone": (Run.backbone, "backbone"),
    "layers": (Run.layers, "layers"),
    "image_size": (Run.image_size, "image size"),
    "seed": (Run.seed, "seed"),
    "train_shots": (Run.train_shots, "train shots"),
    "root": (Run.root, "root"),
    "methods": (Run.method, "method"),
    "weights": (Run.weights_name, "weights"),
    "categories": (Run.category, "category"),
}


def run_axis_values(engine: Engine, filters: RunFilter | None = None) -> dict[str, set]:
    """Return, per RunFilter field, the values of the finished runs that match `filters`.

    Train shots read 0 for runs on the full training set, as `--train-shots 0` selects them, and
    runs without a stored eval size add no eval size.
    """
    filters = filters or RunFilter()
    columns = [column.label(name) for name, (column, _) in _FILTER_COLUMNS.items()]
    query = _apply_filters(select(*columns, Run.config).where(Run.status == "done"), filters)
    values: dict[str, set] = {name: set() for name in [*_FILTER_COLUMNS, "eval_size"]}
    with engine.connect() as connection:
        for row in connection.execute(query).mappings():
            eval_size = (row["config"] or {}).get("eval_size")
            if filters.eval_size is not None and eval_size != filters.eval_size:
                continue
            for name in _FILTER_COLUMNS:
                values[name].add(row[name])
            if eval_size is not None:
                values["eval_size"].add(eval_size)
    values["train_shots"] = {ALL_SHOTS if shots is None else shots for shots in values["train_shots"]}
    return values


def check_filters(engine: Engine, filters: RunFilter) -> None:
    """Raise ConfigError for the first filter value that no finished run has, listing the values in the database.

    A database without finished runs passes, so the caller can say that runs are missing.
    """
    present = run_axis_values(engine)
    if not present["methods"]:
        return
    labels = {name: label for name, (_, label) in _FILTER_COLUMNS.items()} | {"eval_size": "eval size"}
    for name, label in labels.items():
        requested = getattr(filters, name)
        if requested is None:
            continue
        for value in requested if isinstance(requested, tuple) else (requested,):
            if value not in present[name]:
                texts = [_axis_text(name, item) for item in sorted(present[name] - {None})]
                # Layer sets contain commas themselves.
                listed = ("; " if name == "layers" else ", ").join(texts) or "none"
                raise ConfigError(f"no finished runs with {label} '{value}'; the database has: {listed}")


def _axis_text(name: str, value) -> str:
    if name == "train_shots" and value == ALL_SHOTS:
        return f"{ALL_SHOTS} (full training set)"
    return str(value)


def default_levels(method: str) -> str | None:
    """Return the default hierarchy levels of a registered method as stored in runs.layers, e.g. "2,3"."""
    from bench.methods import get_method

    try:
        return ",".join(str(level) for level in get_method(method).default_levels)
    except ConfigError:
        return None


def keep_default_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep, for every method run with several layer sets (a layer ablation), its default layers.

    Without this a table mixing the ablation runs with the main runs could not be built without
    `--layers`, and one `--layers` value cannot select PaDiM's 1,2,3 and PatchCore's 2,3 at once.
    A method without a registered default keeps all its runs, so `build_table` reports the mix.
    """
    if frame.empty:
        return frame
    keep = pd.Series(True, index=frame.index)
    for method, group in frame.groupby("method"):
        if group["layers"].nunique() < 2:
            continue
        default = default_levels(method)
        if default is None or default not in set(group["layers"]):
            continue
        dropped = group["layers"] != default
        keep[group.index[dropped]] = False
        logger.info("%s: table uses the default layers %s and leaves out %d runs with other layers",
                    method, default, int(dropped.sum()))
    return frame[keep].reset_index(drop=True)


def _ordered(values, preferred) -> list[str]:
    present = set(values)
    return [value for value in preferred if value in present] + sorted(present - set(preferred))


def check_axes(group: pd.DataFrame, label: str, skip: tuple[str, ...] = ()) -> None:
    """Raise ConfigError when the runs of one cell differ in a run axis other than those in `skip`."""
    for axis, flag in AXES.items():
        if axis in skip:
            continue
        # NULL (few-shot off, eval size unknown) counts as a value of its own.
        distinct = sorted(set(group[axis].map(lambda value: "NULL" if pd.isna(value) else str(value))))
        if len(distinct) > 1:
            raise ConfigError(
                f"{len(group)} runs for {label} differ in {axis} ({', '.join(distinct)}); select one with {flag}"
            )


def source_names(frame: pd.DataFrame) -> pd.Series:
    """Name each run's weights source; with several backbones in the selection, "weights:backbone"."""
    if frame["backbone"].nunique() > 1:
        return frame["weights"] + ":" + frame["backbone"]
    return frame["weights"].copy()


def build_table(frame: pd.DataFrame, dataset: str, metric: str) -> ResultTable:
    """Arrange the runs of one dataset into a table; seeds of one configuration are averaged.

    The best source of a cell is the one with the highest value at the displayed precision
    (0.1 percentage points), so sources that print the same value are marked together. In the
    mean row, sources are compared only when their means cover the same categories, because means
    over different categories are not comparable.
    """
    frame = frame[frame["dataset"] == dataset].copy()
    frame["source"] = source_names(frame)

    rows = sorted(frame["category"].unique())
    methods = _ordered(frame["method"].unique(), METHOD_ORDER)
    sources = sorted(frame["source"].unique(), key=source_rank)

    cells: dict[tuple[str, str], Cell] = {}
    for (category, method, source), group in frame.groupby(["category", "method", "source"]):
        check_axes(group, f"{dataset}/{category}/{method}/{source}")
        defined = group["value"].dropna()
        mean = float(defined.mean()) if len(defined) else None
        std = float(defined.std(ddof=1)) if len(defined) > 1 else None
        cells.setdefault((category, method), Cell()).values[source] = (mean, std, len(defined))

    # The categories behind each mean, per (method, source).
    covered: dict[tuple[str, str], frozenset[str]] = {}
    for method in methods:
        for source in sources:
            per_row = {row: cells[(row, method)].values[source][0] for row in rows
                       if source in cells.get((row, method), Cell()).values
                       and cells[(row, method)].values[source][0] is not None}
            if per_row:
                mean = sum(per_row.values()) / len(per_row)
                cells.setdefault((MEAN_ROW, method), Cell()).values[source] = (mean, None, len(per_row))
                covered[(method, source)] = frozenset(per_row)

    uncompared = set()
    for (row, method), cell in cells.items():
        if row == MEAN_ROW and len({covered[(method, source)] for source in cell.values}) > 1:
            uncompared.add(method)
            continue
        cell.best = _best_sources(cell)

    fine_tuned = set(frame.loc[frame["fine_tuned"], "method"].unique())
    return ResultTable(dataset, metric, rows + ([MEAN_ROW] if rows else []), methods, sources, cells,
                       fine_tuned, describe_settings(frame), [method for method in methods if method in uncompared])


def _best_sources(cell: Cell) -> set[str]:
    defined = {source: value for source, value in cell.values.items() if value[0] is not None}
    if len(defined) < 2:
        return set()
    printed = {source: round(100 * value[0], 1) for source, value in defined.items()}
    top = max(printed.values())
    return {source for source, value in printed.items() if math.isclose(value, top, abs_tol=1e-9)}


def describe_settings(frame: pd.DataFrame) -> list[str]:
    """Describe the runs behind a table: backbones, input sizes, layers per method and seeds."""
    def joined(column: str) -> str:
        return ", ".join(str(value) for value in sorted(frame[column].dropna().unique()))

    layers_by_method = []
    for method, group in frame.groupby("method"):
        layers_by_method.append(f"{method} {' & '.join(sorted(set(group['layers'])))}")

    seed_text = f"seeds {joined('seed')}"
    seeds_per_cell = frame.groupby(["category", "method", "source"])["seed"].nunique()
    if len(seeds_per_cell) and seeds_per_cell.max() > 1:
        seed_text += " (cells: mean±std over seeds)"
    settings = [f"backbone {joined('backbone')}; input {joined('image_size')} px; layers: {'; '.join(layers_by_method)}; "
                f"{seed_text}"]
    roots = frame.groupby("root")["category"].unique()
    if len(roots) > 1:
        # Categories of one dataset layout can come from different copies, e.g. the demo data
        # beside real MVTec AD; the mean then mixes them.
        listed = "; ".join(f"{root} ({', '.join(sorted(categories))})" for root, categories in sorted(roots.items()))
        settings.append(f"dataset roots: {listed}; select one with --root")
    return settings


def source_rank(source: str) -> tuple[int, str]:
    """Sort key of a source: imagenet, fractals, random, then others by name."""
    weights = source.split(":")[0]
    rank = SOURCE_ORDER.index(weights) if weights in SOURCE_ORDER else len(SOURCE_ORDER)
    return rank, source


def format_value(mean: float | None, std: float | None) -> str:
    """Format a fraction in percent with one decimal, "±std" over seeds, or "–" when undefined."""
    if mean is None:
        return "–"
    text = f"{100 * mean:.1f}"
    if std is not None:
        text += f"±{100 * std:.1f}"
    return text


def format_difference(difference: float | None) -> str:
    """Format a difference of fractions in percentage points with its sign, e.g. "+1.5" or "−0.3"."""
    if difference is None or math.isnan(difference):
        return "–"
    points = round(100 * difference, 1)
    if points == 0:
        return "0.0"
    return f"{points:+.1f}".replace("-", "−")


def build_tables(engine: Engine, metric: str, filters: RunFilter | None = None) -> tuple[list[ResultTable], pd.DataFrame]:
    """Build one table per dataset of `metric`, and return them with the runs behind them.

    Without a `--layers` filter, methods with a layer ablation show their default layers
    (see keep_default_layers).
    """
    filters = filters or RunFilter()
    frame = load_results(engine, metric, filters)
    if frame.empty:
        return [], frame
    if filters.layers is None:
        frame = keep_default_layers(frame)
    tables = [build_table(frame, dataset, metric) for dataset in sorted(frame["dataset"].unique())]
    return tables, frame
