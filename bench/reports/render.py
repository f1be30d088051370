"""Rendering result tables as rich text, Markdown, LaTeX (booktabs) or CSV."""

import csv
import io

from rich.table import Table

from bench.reports.tables import Cell, ResultTable, format_value

FORMATS = ("text", "markdown", "latex", "csv")


def _cell_parts(table: ResultTable, row: str, method: str) -> list[tuple[str, bool]]:
    cell = table.cells.get((row, method), Cell())
    parts = []
    for source in table.sources:
        mean, std, _ = cell.values.get(source, (None, None, 0))
        parts.append((format_value(mean, std), source in cell.best))
    return parts


def title(table: ResultTable) -> str:
    """Return the table caption: dataset, metric and the order of the values in a cell."""
    return f"{table.dataset}: {table.metric} (%), cells: {'/'.join(table.sources)}"


def to_rich(table: ResultTable) -> Table:
    """Build a rich table; the best source of each cell is bold."""
    rich_table = Table(title=title(table))
    rich_table.add_column("category")
    for method in table.methods:
        rich_table.add_column(method, justify="right")
    for row in table.rows:
        texts = ["/".join(f"[bold]{text}[/bold]" if best else text for text, best in _cell_parts(table, row, method))
                 for method in table.methods]
        rich_table.add_row(row, *texts, end_section=(row == table.rows[-2] if len(table.rows) > 1 else False))
    return rich_table


def to_markdown(table: ResultTable) -> str:
    """Render a GitHub Markdown table; the best source of each cell is **bold**."""
    lines = [f"**{title(table)}**", "", "| category | " + " | ".join(table.methods) + " |",
             "|---|" + "---:|" * len(table.methods)]
    for row in table.rows:
        texts = ["/".join(f"**{text}**" if best else text for text, best in _cell_parts(table, row, method))
                 for method in table.methods]
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text


def to_latex(table: ResultTable) -> str:
    """Render a booktabs tabular inside a table float; the best source of each cell is bold."""
    columns = "l" + "r" * len(table.methods)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_latex_escape(title(table))}}}",
        rf"\begin{{tabular}}{{{columns}}}",
        r"\toprule",
        "category & " + " & ".join(_latex_escape(method) for method in table.methods) + r" \\",
        r"\midrule",
    ]
    for row in table.rows:
        if row == table.rows[-1] and len(table.rows) > 1:
            lines.append(r"\midrule")
        texts = ["/".join(rf"\textbf{{{_latex_escape(text)}}}" if best else _latex_escape(text)
                          for text, best in _cell_parts(table, row, method)).replace("±", r"$\pm$").replace("–", "--")
                 for method in table.methods]
        lines.append(f"{_latex_escape(row)} & " + " & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: ResultTable) -> str:
    """Render long-format CSV: one line per category, method and source, values as fractions."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "metric", "category", "method", "source", "mean", "std", "n", "best"])
    for row in table.rows:
        for method in table.methods:
            cell = table.cells.get((row, method), Cell())
            for source in table.sources:
                if source not in cell.values:
                    continue
                mean, std, count = cell.values[source]
                writer.writerow([table.dataset, table.metric, row, method, source,
                                 "" if mean is None else f"{mean:.6f}", "" if std is None else f"{std:.6f}",
                                 count, int(source in cell.best)])
    return buffer.getvalue()
