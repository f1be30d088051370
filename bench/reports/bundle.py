"""`bench report --all`: every table, statistic and figure of the database in one folder, with an index page.

Layout under the output folder: `tables/<dataset>_<metric>[_stats|_published|_published_stats|_ci].<ext>`
in Markdown, LaTeX, HTML, CSV (and text for the result tables), `figures/<name>.png` and `.pdf`,
and `index.html` and `index.md` listing them. A figure that cannot be drawn (no data, weights
not available offline) is listed with the reason instead.
"""

import html
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine

from bench.errors import BenchError
from bench.reports.render import SUFFIXES, Grid, html_document, render, to_csv, to_html
from bench.reports.tables import (METRIC_LABELS, TABLES, ResultTable, RunFilter, build_tables, source_names,
                                  source_rank)

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("reports")
GRID_FORMATS = ("markdown", "latex", "html")


@dataclass
class Entry:
    """One table or figure of the bundle: its title, the files written, an HTML fragment to embed."""

    section: str
    title: str
    files: list[Path] = field(default_factory=list)
    fragment: str = ""
    skipped: str | None = None


@dataclass
class BundleOptions:
    """Settings of `--all` beyond the tables: the statistics and whether to add intervals and figures.

    With `treatment` None, no paired statistics of our runs are written.
    """

    treatment: str | None = "fractals"
    resamples: int = 10_000
    intervals: bool = True
    figures: bool = True


def write_all(engine: Engine, filters: RunFilter, out: Path, options: BundleOptions | None = None) -> list[Entry]:
    """Write every table, statistic and figure under `out` and the index pages; return the entries."""
    options = options or BundleOptions()
    out.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    image_auroc_tables: list[ResultTable] = []
    frames: dict[str, pd.DataFrame] = {}

    for metric in dict.fromkeys(TABLES.values()):
        try:
            tables, frame = build_tables(engine, metric, filters)
        except BenchError as error:
            logger.info("%s tables skipped: %s", metric, error)
            entries.append(Entry("tables", METRIC_LABELS.get(metric, metric), skipped=str(error)))
            tables, frame = [], pd.DataFrame()
        frames[metric] = frame
        if metric == "image_auroc":
            image_auroc_tables = tables
        for table in tables:
            entries += _table_entries(table, out, options)

    if options.intervals and not frames.get("image_auroc", pd.DataFrame()).empty:
        entries += _interval_entries(frames["image_auroc"], out)
    if options.figures:
        entries += _figure_entries(engine, filters, out, image_auroc_tables, frames["image_auroc"])

    write_index(entries, out)
    return entries


def _write_grids(grids: list[Grid], stem: Path, csv_text: str | None, text: bool = False) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    formats = GRID_FORMATS + (("text",) if text else ())
    for output_format in formats:
        path = stem.with_name(stem.name + SUFFIXES[output_format])
        path.write_text(render(grids, output_format))
        paths.append(path)
    if csv_text is not None:
        path = stem.with_name(stem.name + ".csv")
        path.write_text(csv_text)
        paths.append(path)
    return paths


def _table_entries(table: ResultTable, out: Path, options: BundleOptions) -> list[Entry]:
    from bench.reports.published import build_comparisons, comparison_csv, comparison_grid, published_table
    from bench.reports.render import result_grid
    from bench.reports.stats import paired_tests, stats_csv, stats_grid

    name = f"{table.dataset}_{table.metric}"
    label = f"{table.dataset}: {METRIC_LABELS.get(table.metric, table.metric)}"
    grid = result_grid(table)
    entries = [Entry("tables", label, _write_grids([grid], out / "tables" / name, to_csv(table), text=True),
                     to_html(grid))]

    tests = paired_tests(table, options.treatment, options.resamples) if options.treatment is not None else []
    if tests:
        grid = stats_grid(tests, table.dataset, table.metric, options.resamples)
        entries.append(Entry("statistics", f"{label}, paired differences",
                             _write_grids([grid], out / "tables" / f"{name}_stats",
                                          stats_csv(tests, table.dataset, table.metric)), to_html(grid)))

    comparisons = build_comparisons(table)
    if comparisons:
        grids = [comparison_grid(comparison) for comparison in comparisons]
        entries.append(Entry("published", f"{label}, ours vs published",
                             _write_grids(grids, out / "tables" / f"{name}_published", comparison_csv(comparisons)),
                             "\n".join(to_html(grid) for grid in grids)))
        published_tests = paired_tests(published_table(table.dataset, table.metric), "fractals", options.resamples)
        grid = stats_grid(published_tests, table.dataset, table.metric, options.resamples, label="published")
        entries.append(Entry("published", f"{label}, published numbers, paired differences",
                             _write_grids([grid], out / "tables" / f"{name}_published_stats",
                                          stats_csv(published_tests, table.dataset, table.metric)),
                             to_html(grid)))
    return entries


def _interval_entries(frame: pd.DataFrame, out: Path) -> list[Entry]:
    from bench.reports.stats import ci_csv, ci_grid, image_auroc_intervals

    intervals = image_auroc_intervals(frame)
    entries = []
    for dataset in sorted(intervals["dataset"].unique()):
        grid = ci_grid(intervals, dataset)
        csv_text = ci_csv(intervals[intervals["dataset"] == dataset])
        entries.append(Entry("statistics", f"{dataset}: image AUROC intervals over test images",
                             _write_grids([grid], out / "tables" / f"{dataset}_image_auroc_ci", csv_text),
                             to_html(grid)))
    return entries


def _figure(section: str, title: str, draw) -> Entry:
    try:
        return Entry(section, title, draw())
    except BenchError as error:
        logger.info("figure %s skipped: %s", title, error)
        return Entry(section, title, skipped=str(error))


def _figure_entries(engine: Engine, filters: RunFilter, out: Path, image_auroc_tables: list[ResultTable],
                    image_auroc_frame: pd.DataFrame) -> list[Entry]:
    from bench.reports.figures import LAYER_METHODS, dataset_roots, layers_figure, spider_figure
    from bench.reports.tables import STUDY_METRICS, load_results

    figures = out / "figures"
    entries = []
    if image_auroc_tables:
        entries.append(_figure("figures", "spider chart: mean image AUROC per category group",
                               lambda: spider_figure(image_auroc_tables, figures / "spider",
                                                     dataset_roots(image_auroc_frame))))

    ablation = {metric: load_results(engine, metric, filters.replace(layers=None, methods=LAYER_METHODS))
                for metric in STUDY_METRICS}
    image_frame = ablation["image_auroc"]
    for dataset in sorted(image_frame["dataset"].unique()) if not image_frame.empty else []:
        # The figure needs an ablation: one method with several layer sets.
        if image_frame[image_frame["dataset"] == dataset].groupby("method")["layers"].nunique().max() < 2:
            continue
        entries.append(_figure("figures", f"{dataset}: layer ablation (PatchCore, PaDiM)",
                               lambda dataset=dataset: layers_figure(ablation, dataset, figures / f"layers_{dataset}")))

    entries += _filter_entries(engine, filters, figures)
    entries += _qualitative_entries(engine, filters, figures, image_auroc_tables)
    return entries


def _filter_entries(engine: Engine, filters: RunFilter, figures: Path) -> list[Entry]:
    from bench.reports.filters import filters_figure, load_filters
    from bench.reports.tables import load_results
    from bench.schema.db import session_factory

    frame = load_results(engine, "image_auroc", filters)
    if frame.empty:
        return []
    entries = []
    for backbone, group in frame.groupby("backbone"):
        panels, failures = [], []
        with session_factory(engine)() as session:
            for weights in sorted(group["weights"].unique(), key=source_rank):
                try:
                    panels.append(load_filters(session, weights, backbone, seed=int(group["seed"].min())))
                except BenchError as error:
                    logger.info("filters of %s (%s) skipped: %s", weights, backbone, error)
                    failures.append(f"{weights}: {error}")
        title = f"first convolution filters, {backbone}"
        if panels:
            entry = _figure("figures", title, lambda: filters_figure(panels, figures / f"filters_{backbone}"))
            if failures:
                entry.skipped = "; ".join(failures) if entry.skipped is None else entry.skipped
            entries.append(entry)
        else:
            entries.append(Entry("figures", title, skipped="; ".join(failures)))
    return entries


def _qualitative_entries(engine: Engine, filters: RunFilter, figures: Path,
                         tables: list[ResultTable]) -> list[Entry]:
    from bench.reports.qualitative import qualitative_figure
    from bench.reports.tables import load_results

    frame = load_results(engine, "image_auroc", filters)
    if frame.empty:
        return []
    frame = frame.assign(source=source_names(frame))
    entries = []
    for table in tables:
        for method in table.methods:
            runs = frame[(frame["dataset"] == table.dataset) & (frame["method"] == method)]
            # The figure needs one category with maps for every weights source of this method.
            sources = sorted(set(runs["source"]), key=source_rank)
            with_maps = runs[runs["maps_path"].notna()]
            complete = [category for category, group in with_maps.groupby("category")
                        if set(group["source"]) == set(sources)]
            if not complete:
                entries.append(Entry("figures", f"{table.dataset}: {method}, maps and masks",
                                     skipped=_missing_maps_reason(table.dataset, method, sources, with_maps)))
                continue
            category = sorted(complete)[0]
            stem = figures / f"qualitative_{table.dataset}_{method}_{category}"
            entries.append(_figure("figures", f"{table.dataset}/{category}: {method}, maps and masks",
                                   lambda dataset=table.dataset, method=method, category=category, stem=stem:
                                   qualitative_figure(engine, filters, dataset, category, method, stem)))
    return entries


def _missing_maps_reason(dataset: str, method: str, sources: list[str], with_maps: pd.DataFrame) -> str:
    if with_maps.empty:
        return (f"no {method} run on {dataset} stored anomaly maps (runs.maps_path is empty); "
                "rerun them with --save-maps")
    counts = with_maps.groupby("source")["category"].nunique()
    stored = ", ".join(f"{source} in {int(counts.get(source, 0))}" for source in sources)
    return (f"no {dataset} category has {method} maps for every weights source ({', '.join(sources)}); "
            f"categories with maps: {stored}")


def write_index(entries: list[Entry], out: Path) -> list[Path]:
    """Write index.html (tables embedded, figures shown) and index.md (links) listing every entry."""
    sections = {"tables": "Tables", "statistics": "Statistics", "published": "Published numbers beside ours",
                "figures": "Figures"}
    body = ["<h1>bench report</h1>"]
    markdown = ["# bench report", ""]
    for key, heading in sections.items():
        chosen = [entry for entry in entries if entry.section == key]
        if not chosen:
            continue
        body.append(f"<h2>{heading}</h2>")
        markdown += [f"## {heading}", ""]
        for entry in chosen:
            body.append(f"<h3>{html.escape(entry.title)}</h3>")
            markdown.append(f"### {entry.title}")
            markdown.append("")
            links = [(path.relative_to(out).as_posix(), path.suffix.lstrip(".")) for path in entry.files]
            if links:
                body.append("<p>" + " · ".join(f'<a href="{href}">{kind}</a>' for href, kind in links) + "</p>")
                markdown.append(" · ".join(f"[{kind}]({href})" for href, kind in links))
                markdown.append("")
            for href, kind in links:
                if kind == "png":
                    body.append(f'<p><img src="{href}" alt="{html.escape(entry.title)}"></p>')
                    markdown += [f"![{entry.title}]({href})", ""]
            if entry.fragment:
                body.append(entry.fragment)
            if entry.skipped:
                body.append(f'<p class="notes">not drawn or incomplete: {html.escape(entry.skipped)}</p>')
                markdown += [f"not drawn or incomplete: {entry.skipped}", ""]
    paths = [out / "index.html", out / "index.md"]
    paths[0].write_text(html_document("bench report", "\n".join(body) + "\n"))
    paths[1].write_text("\n".join(markdown) + "\n")
    return paths
