"""`bench report`, `bench figure` and `bench query`: tables, statistics and figures from the database."""

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bench.errors import ConfigError

logger = logging.getLogger(__name__)
console = Console()
# Notes that are not part of the requested output go to stderr, so piped Markdown or CSV stays clean.
note_console = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="BENCH_DB", help="Results database: a SQLite file path or an SQLAlchemy URL. Default: ./bench.db."),
]
DatasetOption = Annotated[str | None, typer.Option("--dataset", help="Only this dataset (default: one table or figure per dataset).")]
BackboneOption = Annotated[str | None, typer.Option("--backbone", help="Only runs with this backbone.")]
LayersOption = Annotated[str | None, typer.Option("--layers", help="Only runs with these hierarchy levels, e.g. 2,3 (default: each method's default levels where a layer ablation adds others).")]
ImageSizeOption = Annotated[int | None, typer.Option("--image-size", help="Only runs with this model input size, in pixels.")]
EvalSizeOption = Annotated[int | None, typer.Option("--eval-size", help="Only runs whose pixel metrics were computed at this size, in pixels (0: original resolution).")]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Only runs with this seed (default: mean±std over seeds).")]
FigureSeedOption = Annotated[int | None, typer.Option("--seed", help="Only runs with this seed (default: mean over seeds).")]
QualitativeSeedOption = Annotated[int | None, typer.Option("--seed", help="Draw the runs with this seed (default: the lowest seed of each weights source).")]
ShotsOption = Annotated[int | None, typer.Option("--train-shots", help="Only few-shot runs with this many training images; 0 selects runs on the full training set.")]
RootOption = Annotated[str | None, typer.Option("--root", help="Only runs on this dataset root, as stored in runs.root.")]
MethodOption = Annotated[list[str] | None, typer.Option("--method", help="Only this method; repeat for several.")]
WeightsFilterOption = Annotated[list[str] | None, typer.Option("--weights", help="Only this weights source (runs.weights_name); repeat for several.")]

figure_app = typer.Typer(no_args_is_help=True, help="Draw the study's figures from the database as PNG and PDF.")


def _filters(dataset=None, backbone=None, layers=None, image_size=None, eval_size=None, seed=None, train_shots=None,
             root=None, methods=None, weights=None, categories=None):
    from bench.reports.tables import RunFilter
    from bench.weights.architectures import parse_levels

    layer_filter = ",".join(map(str, parse_levels(layers))) if layers else None
    # Runs store their root resolved, as `bench run` resolves it; a relative --root matches that.
    if root is not None:
        root = str(Path(root).expanduser().resolve())
    return RunFilter(dataset=dataset, backbone=backbone, layers=layer_filter, image_size=image_size,
                     eval_size=eval_size, seed=seed, train_shots=train_shots, root=root,
                     methods=tuple(methods or ()), weights=tuple(weights or ()), categories=tuple(categories or ()))


def report(
    table: Annotated[str, typer.Option("--table", help="Metric: auroc (image), pixel_auroc, aupro, image_f1_max or pixel_f1_max.")] = "auroc",
    dataset: DatasetOption = None,
    output_format: Annotated[str, typer.Option("--format", help="text, markdown, latex (booktabs), html or csv (values as fractions).")] = "text",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of the terminal; with --all, the output folder (default: reports/).")] = None,
    backbone: BackboneOption = None,
    layers: LayersOption = None,
    image_size: ImageSizeOption = None,
    eval_size: EvalSizeOption = None,
    seed: SeedOption = None,
    train_shots: ShotsOption = None,
    root: RootOption = None,
    method: MethodOption = None,
    weights: WeightsFilterOption = None,
    compare: Annotated[str | None, typer.Option("--compare", help="published: show per cell ours / the fractal study's number (ours − published), and the paired statistics of the published numbers.")] = None,
    stats: Annotated[bool, typer.Option("--stats/--no-stats", help="Print paired statistics (Wilcoxon signed-rank test, bootstrap 95% CI) under the tables; not in csv.")] = True,
    treatment: Annotated[str | None, typer.Option("--treatment", help="Weights source compared with every other source in the statistics (default: fractals, where the runs have it).")] = None,
    resamples: Annotated[int, typer.Option("--resamples", min=100, help="Bootstrap resamples of the paired CI across categories.")] = 10_000,
    ci: Annotated[bool, typer.Option("--ci", help="Add per-category bootstrap 95% CIs of image AUROC over test images (reads each run's maps file; --table auroc). With --format csv, only the intervals are written.")] = False,
    write_all: Annotated[bool, typer.Option("--all", help="Write every table, statistic and figure with index.html and index.md to --out (default: reports/).")] = False,
    db: DbOption = None,
) -> None:
    """Print per-category tables of one metric: methods as columns, one value per weights source.

    Values are percent; the database stores fractions. Figures: see `bench figure --help`.
    """
    from bench.reports.render import FORMATS
    from bench.reports.tables import TABLES, check_filters
    from bench.schema.db import open_existing_engine

    if table not in TABLES:
        raise ConfigError(f"unknown --table '{table}'; choose one of {', '.join(TABLES)}")
    if output_format not in FORMATS:
        raise ConfigError(f"unknown --format '{output_format}'; choose one of {', '.join(FORMATS)}")
    if compare is not None and compare != "published":
        raise ConfigError(f"unknown --compare '{compare}'; the only choice is published")
    filters = _filters(dataset, backbone, layers, image_size, eval_size, seed, train_shots, root, method, weights)
    engine = open_existing_engine(db)
    check_filters(engine, filters)

    if write_all:
        _write_all(engine, filters, out, treatment, resamples)
        return

    # CSV output never contains the statistics.
    stats = stats and output_format != "csv"
    grids, csv_text = _report_grids(engine, TABLES[table], filters, compare, stats, treatment, resamples, ci)
    _emit(grids, csv_text, output_format, out)


def _report_grids(engine, metric, filters, compare, stats, treatment, resamples, ci):
    from bench.reports.published import build_comparisons, comparison_csv, comparison_grid, published_table
    from bench.reports.render import result_grid, to_csv
    from bench.reports.stats import ci_csv, ci_grid, image_auroc_intervals, paired_tests, stats_grid
    from bench.reports.tables import build_tables

    tables, frame = build_tables(engine, metric, filters)
    if not tables:
        raise ConfigError(f"no finished runs with {metric} in {engine.url} for these filters; run `bench run` first")
    if stats:
        treatment = _treatment({source.split(":")[0] for result in tables for source in result.sources}, treatment)

    grids, csv_parts = [], []
    for result in tables:
        if compare:
            comparisons = build_comparisons(result)
            if not comparisons:
                raise ConfigError(f"no published {metric} numbers for {result.dataset} with sources "
                                  f"{', '.join(result.sources)}; the study reports imagenet and fractals on "
                                  "mvtec and visa for image_auroc, pixel_auroc and aupro")
            grids += [comparison_grid(comparison) for comparison in comparisons]
            csv_parts.append(comparison_csv(comparisons))
        else:
            grids.append(result_grid(result))
            csv_parts.append(to_csv(result))
        if stats and treatment is not None:
            tests = paired_tests(result, treatment, resamples)
            if tests:
                grids.append(stats_grid(tests, result.dataset, metric, resamples))
        if stats and compare:
            reference = published_table(result.dataset, metric)
            grids.append(stats_grid(paired_tests(reference, "fractals", resamples), result.dataset, metric,
                                    resamples, label="published"))
    if ci:
        if metric != "image_auroc":
            raise ConfigError("--ci applies to image AUROC only; use it with --table auroc")
        intervals = image_auroc_intervals(frame)
        grids += [ci_grid(intervals, result.dataset) for result in tables]
        # One CSV has one header, so with --ci the CSV output is the intervals alone.
        csv_parts = [ci_csv(intervals)]
    return grids, _join_csv(csv_parts)


def _treatment(weights: set[str], treatment: str | None) -> str | None:
    from bench.reports.stats import TREATMENT, resolve_treatment

    resolved = resolve_treatment(treatment, weights)
    if resolved is None and weights:
        note_console.print(f"note: no paired statistics, because no run has the default --treatment {TREATMENT}; "
                           f"pass --treatment with one of: {', '.join(sorted(weights))}", highlight=False)
    return resolved


def _join_csv(parts: list[str]) -> str:
    # Tables of one kind share a header, so only the first part keeps it.
    if not parts:
        return ""
    lines = parts[0].splitlines()
    header = lines[0] if lines else ""
    for part in parts[1:]:
        part_lines = part.splitlines()
        lines += part_lines[1:] if part_lines and part_lines[0] == header else part_lines
    return "\n".join(lines) + "\n"


def _emit(grids, csv_text: str, output_format: str, out: Path | None) -> None:
    from bench.reports.render import print_grid, render

    if output_format == "text" and out is None:
        for grid in grids:
            print_grid(console, grid)
        return
    text = csv_text if output_format == "csv" else render(grids, output_format)
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {out}")


def _write_all(engine, filters, out: Path | None, treatment: str | None, resamples: int) -> None:
    from bench.reports.bundle import DEFAULT_OUT, BundleOptions, write_all
    from bench.reports.tables import run_axis_values

    folder = out or DEFAULT_OUT
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; with --all it names the output folder")
    treatment = _treatment(run_axis_values(engine, filters)["weights"], treatment)
    entries = write_all(engine, filters, folder, BundleOptions(treatment=treatment, resamples=resamples))
    if not any(entry.files for entry in entries):
        raise ConfigError(f"no finished runs in {engine.url} for these filters; run `bench run` first")
    written = sum(len(entry.files) for entry in entries)
    console.print(f"wrote {written} files for {len(entries)} tables and figures; index: {folder / 'index.html'}")
    incomplete = [entry for entry in entries if entry.skipped]
    for entry in incomplete:
        console.print(f"[yellow]incomplete:[/yellow] {entry.title}: {entry.skipped}", highlight=False)
    if incomplete:
        console.print(f"{len(incomplete)} of {len(entries)} tables and figures are incomplete or missing; "
                      "narrow the runs with the filter options (see `bench report --help`)", highlight=False)


@figure_app.command("spider")
def spider_command(
    dataset: DatasetOption = None,
    backbone: BackboneOption = None,
    layers: LayersOption = None,
    image_size: ImageSizeOption = None,
    eval_size: EvalSizeOption = None,
    seed: FigureSeedOption = None,
    train_shots: ShotsOption = None,
    root: RootOption = None,
    method: MethodOption = None,
    weights: WeightsFilterOption = None,
    out: Annotated[Path, typer.Option("--out", help="Output path without suffix; .png and .pdf are written.")] = Path("reports/figures/spider"),
    db: DbOption = None,
) -> None:
    """Draw spider charts of mean image AUROC (%) per category group: methods as spokes, one chart per weights source."""
    from bench.reports.figures import dataset_roots, spider_figure
    from bench.reports.tables import build_tables, check_filters
    from bench.schema.db import open_existing_engine

    filters = _filters(dataset, backbone, layers, image_size, eval_size, seed, train_shots, root, method, weights)
    engine = open_existing_engine(db)
    check_filters(engine, filters)
    tables, frame = build_tables(engine, "image_auroc", filters)
    if not tables:
        raise ConfigError("no finished runs with image_auroc for these filters; run `bench run` first")
    _print_paths(spider_figure(tables, out, dataset_roots(frame)))


@figure_app.command("layers")
def layers_command(
    dataset: DatasetOption = None,
    backbone: BackboneOption = None,
    image_size: ImageSizeOption = None,
    eval_size: EvalSizeOption = None,
    seed: FigureSeedOption = None,
    train_shots: ShotsOption = None,
    root: RootOption = None,
    weights: WeightsFilterOption = None,
    out: Annotated[Path, typer.Option("--out", help="Output path prefix; <out>_<dataset>.png and .pdf are written.")] = Path("reports/figures/layers"),
    db: DbOption = None,
) -> None:
    """Draw PatchCore and PaDiM bars per hierarchy-level set (image AUROC, pixel AUROC, AUPRO), sources side by side."""
    from bench.reports.figures import LAYER_METHODS, layers_figure
    from bench.reports.tables import STUDY_METRICS, check_filters, load_results
    from bench.schema.db import open_existing_engine

    engine = open_existing_engine(db)
    filters = _filters(dataset, backbone, None, image_size, eval_size, seed, train_shots, root, None, weights)
    check_filters(engine, filters)
    filters = filters.replace(methods=LAYER_METHODS)
    frames = {metric: load_results(engine, metric, filters) for metric in STUDY_METRICS}
    if frames["image_auroc"].empty:
        raise ConfigError("no finished PatchCore or PaDiM runs for these filters; run them with several --layers")
    for name in sorted(frames["image_auroc"]["dataset"].unique()):
        _print_paths(layers_figure(frames, name, out.with_name(f"{out.name}_{name}")))


@figure_app.command("filters")
def filters_command(
    weights: Annotated[list[str], typer.Option("--weights", help="Weights name (registered, imagenet or random); repeat to draw several side by side.")],
    backbone: Annotated[str, typer.Option("--backbone", help="Architecture the weights are resolved for, e.g. resnet18.")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of timm's initialisation for `random`.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Output path without suffix (default: reports/figures/filters_<backbone>).")] = None,
    db: DbOption = None,
) -> None:
    """Draw the first convolution's filters of registered weights, each filter scaled to [0, 1]."""
    from bench.reports.filters import filters_figure, load_filters
    from bench.schema.db import open_engine, removed_if_created_on_error, session_factory

    # `random` and `imagenet` need no registered weights, so a new database is fine here, but a
    # failed lookup leaves none behind.
    with removed_if_created_on_error(db), session_factory(open_engine(db))() as session:
        panels = [load_filters(session, name, backbone, seed) for name in weights]
    _print_paths(filters_figure(panels, out or Path(f"reports/figures/filters_{backbone}")))


@figure_app.command("qualitative")
def qualitative_command(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset of the runs, e.g. mvtec.")],
    category: Annotated[str, typer.Option("--category", help="Category of the runs, e.g. bottle.")],
    method: Annotated[str, typer.Option("--method", help="Method of the runs, e.g. patchcore.")],
    image: Annotated[list[str] | None, typer.Option("--image", help="Test image as defect/file, e.g. broken_large/000.png; repeat for several (default: --count anomalous images spread over the test set).")] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Number of anomalous images to show when --image is not given.")] = 4,
    threshold: Annotated[str, typer.Option("--threshold", help="Mask threshold: f1 (each run's pixel F1-max threshold) or a quantile in (0, 1) of the normal test images' pixel scores.")] = "f1",
    backbone: BackboneOption = None,
    layers: LayersOption = None,
    image_size: ImageSizeOption = None,
    eval_size: EvalSizeOption = None,
    seed: QualitativeSeedOption = None,
    train_shots: ShotsOption = None,
    root: RootOption = None,
    weights: WeightsFilterOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output path without suffix (default: reports/figures/qualitative_<dataset>_<method>_<category>).")] = None,
    db: DbOption = None,
) -> None:
    """Draw test images, ground truth, and per weights source the anomaly map and its thresholded mask."""
    from bench.reports.qualitative import parse_threshold, qualitative_figure
    from bench.reports.tables import check_filters
    from bench.schema.db import open_existing_engine

    filters = _filters(None, backbone, layers, image_size, eval_size, seed, train_shots, root, None, weights)
    engine = open_existing_engine(db)
    check_filters(engine, filters.replace(dataset=dataset, categories=(category,), methods=(method,)))
    out = out or Path(f"reports/figures/qualitative_{dataset}_{method}_{category}")
    paths = qualitative_figure(engine, filters, dataset, category, method, out, image, count,
                               parse_threshold(threshold))
    _print_paths(paths)


def _print_paths(paths: list[Path]) -> None:
    for path in paths:
        console.print(f"wrote {path}")


QUERY_FORMATS = ("text", "csv", "markdown", "parquet")


def query(
    sql: Annotated[str, typer.Argument(help="One SQL statement, e.g. \"SELECT method, count(*) FROM runs GROUP BY method\".")],
    output_format: Annotated[str | None, typer.Option("--format", help="text, csv, markdown or parquet (default: from the --out suffix, else text).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of the terminal; its suffix (.csv, .md, .parquet, .txt) sets the format unless --format is given.")] = None,
    db: DbOption = None,
) -> None:
    """Run one read-only SQL statement on the results database; the database rejects any write.

    Tables and columns: docs/schema.md. Metric values are fractions in [0, 1].
    """
    from bench.reports.frames import query_frame

    suffixes = {".csv": "csv", ".md": "markdown", ".parquet": "parquet", ".txt": "text"}
    if output_format is None and out is not None and out.suffix.lower() not in suffixes:
        raise ConfigError(f"cannot tell the format of --out {out} from its suffix; name it .csv, .md, .parquet "
                          "or .txt, or pass --format")
    output_format = output_format or suffixes.get(out.suffix.lower() if out else "", "text")
    if output_format not in QUERY_FORMATS:
        raise ConfigError(f"unknown --format '{output_format}'; choose one of {', '.join(QUERY_FORMATS)}")
    if output_format == "parquet":
        _check_parquet(out)

    frame = query_frame(db, sql)
    if output_format == "parquet":
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out, index=False)
        console.print(f"wrote {len(frame)} rows to {out}")
        return
    if output_format == "text" and out is None:
        console.print(_frame_table(frame))
        return
    renderers = {"csv": lambda: frame.to_csv(index=False, lineterminator="\n"),
                 "markdown": lambda: _frame_markdown(frame),
                 "text": lambda: frame.to_string(index=False) + "\n"}
    text = renderers[output_format]()
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {len(frame)} rows to {out}")


def _check_parquet(out: Path | None) -> None:
    if out is None:
        raise ConfigError("--format parquet needs --out FILE.parquet, because Parquet is a binary format")


def _frame_table(frame):
    from rich.markup import escape
    from rich.table import Table

    table = Table(caption=f"{len(frame)} rows", caption_justify="left")
    for column in frame.columns:
        table.add_column(escape(str(column)))
    for row in frame.itertuples(index=False):
        table.add_row(*("NULL" if _is_null(value) else escape(str(value)) for value in row))
    return table


def _frame_markdown(frame) -> str:
    lines = ["| " + " | ".join(str(column) for column in frame.columns) + " |",
             "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join("NULL" if _is_null(value) else str(value).replace("|", r"\|")
                                       for value in row) + " |")
    return "\n".join(lines) + "\n"


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)
