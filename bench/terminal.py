"""Terminal output shared by the commands."""

from rich.console import Console
from rich.table import Table


def print_table(target: Console, table: Table) -> None:
    """Print `table` unsqueezed: a file or pipe gets the table's natural width instead of 80 columns."""
    if target.is_terminal:
        target.print(table)
        return
    natural = target.measure(table, options=target.options.update(max_width=10_000)).maximum
    Console(file=target.file, width=max(target.width, natural), color_system=None).print(table)
