"""`bench report`: result tables from the database."""

import io
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bench.errors import ConfigError

console = Console()

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="BENCH_DB", help="Results database: a SQLite file path or an SQLAlchemy URL. Default: ./bench.db."),
]


def report(
    table: Annotated[str, typer.Option("--table", help="Metric: auroc (image), pixel_auroc, aupro, image_f1_max or pixel_f1_max.")] = "auroc",
    dataset: Annotated[str | None, typer.Option("--dataset", help="Only this dataset (default: one table per dataset).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="text, markdown, latex or csv.")] = "text",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of the terminal.")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", help="Only runs with this backbone.")] = None,
    layers: Annotated[str | None, typer.Option("--layers", help="Only runs with these hierarchy levels, e.g. 2,3.")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Only runs with this input size in pixels.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Only runs with this seed (default: mean±std over seeds).")] = None,
    db: DbOption = None,
) -> None:
    """Print a per-category table of one metric: methods as columns, one value per weights source."""
    from bench.reports.render import FORMATS, to_csv, to_latex, to_markdown, to_rich
    from bench.reports.tables import TABLES, build_table, load_results
    from bench.schema.db import open_engine
    from bench.weights.architectures import parse_levels

    if table not in TABLES:
        raise ConfigError(f"unknown --table '{table}'; choose one of {', '.join(TABLES)}")
    if output_format not in FORMATS:
        raise ConfigError(f"unknown --format '{output_format}'; choose one of {', '.join(FORMATS)}")
    metric = TABLES[table]
    layer_filter = ",".join(map(str, parse_levels(layers))) if layers else None

    engine = open_engine(db)
    frame = load_results(engine, metric, {"dataset": dataset, "backbone": backbone, "layers": layer_filter,
                                          "image_size": image_size, "seed": seed})
    if frame.empty:
        raise ConfigError(f"no finished runs with {metric} in {engine.url} for these filters; run `bench run` first")

    tables = [build_table(frame, name, metric) for name in sorted(frame["dataset"].unique())]
    if output_format == "text" and out is None:
        for result in tables:
            console.print(_rich_table(result))
        return
    render = {"text": _text, "markdown": to_markdown, "latex": to_latex, "csv": to_csv}[output_format]
    text = "\n".join(render(result) for result in tables)
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        console.print(f"wrote {out}")


def _rich_table(result):
    from bench.reports.render import to_rich

    return to_rich(result)


def _text(result) -> str:
    capture = Console(width=200, record=True, file=io.StringIO())
    capture.print(_rich_table(result))
    return capture.export_text()


