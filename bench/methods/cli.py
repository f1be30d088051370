"""`bench methods`: the available methods and their options."""

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bench.terminal import print_table

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("list")
def list_command() -> None:
    """List the methods with their default feature levels."""
    from bench.methods import METHODS

    table = Table(title="methods")
    for column in ("name", "default layers", "summary"):
        table.add_column(column)
    for name, method in sorted(METHODS.items()):
        table.add_row(name, ",".join(map(str, method.default_levels)), method.summary)
    print_table(console, table)


@app.command("show")
def show_command(name: Annotated[str, typer.Argument(help="Method name, e.g. padim.")]) -> None:
    """Show a method's options (set with `bench run --option key=value`)."""
    from bench.methods import get_method

    method = get_method(name)
    console.print(f"[bold]{method.name}[/bold]: {method.summary}; default layers {','.join(map(str, method.default_levels))}")
    table = Table(title=f"{method.name} options")
    for column in ("option", "type", "default", "meaning"):
        table.add_column(column)
    for key, option in method.options.items():
        table.add_row(key, option.type.__name__, str(option.default), option.help)
    print_table(console, table)
