"""Rendering report tables as rich text, Markdown, LaTeX (booktabs), HTML or CSV.

Every table kind (results, comparisons with published numbers, statistics) is first turned
into a `Grid`: a title, a header, cells made of text parts that may be bold, and footnotes.
One renderer per format then writes any grid.
"""

import csv
import html
import io
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table

from bench.reports.tables import (FINE_TUNED_MARK, FINE_TUNED_NOTE, MEAN_ROW, METRIC_LABELS, PARTIAL_MEAN_MARK, Cell,
                                  ResultTable, format_value)

FORMATS = ("text", "markdown", "latex", "html", "csv")
SUFFIXES = {"text": ".txt", "markdown": ".md", "latex": ".tex", "html": ".html", "csv": ".csv"}

# One piece of a cell: its text and whether it is set in bold.
Part = tuple[str, bool]


@dataclass
class Grid:
    """A table ready to render: `rows[i][j]` is the list of parts of one cell.

    `rules_before` contains the indices of rows preceded by a horizontal rule (the mean row).
    The first column is left-aligned and the others right-aligned.
    """

    title: str
    header: list[str]
    rows: list[list[list[Part]]]
    notes: list[str] = field(default_factory=list)
    rules_before: set[int] = field(default_factory=set)


def plain(text: str) -> list[Part]:
    """Make a cell of one non-bold text."""
    return [(text, False)]


def title(table: ResultTable) -> str:
    """Return the table caption: dataset, metric, unit and the order of the values in a cell."""
    label = METRIC_LABELS.get(table.metric, table.metric)
    return f"{table.dataset}: {label} (%), cells: {'/'.join(table.sources)}"


def result_grid(table: ResultTable) -> Grid:
    """Arrange a result table as a grid; the best source of each cell is bold."""
    header = ["category"] + [method + (FINE_TUNED_MARK if method in table.fine_tuned else "")
                             for method in table.methods]
    n_categories = len(table.categories)
    partial = False
    rows = []
    for row in table.rows:
        cells = [plain(row)]
        for method in table.methods:
            cell = table.cells.get((row, method), Cell())
            parts: list[Part] = []
            for position, source in enumerate(table.sources):
                if position:
                    parts.append(("/", False))
                mean, std, count = cell.values.get(source, (None, None, 0))
                text = format_value(mean, std)
                if row == MEAN_ROW and mean is not None and count < n_categories:
                    text += PARTIAL_MEAN_MARK
                    partial = True
                parts.append((text, source in cell.best))
            cells.append(parts)
        rows.append(cells)

    notes = [f"values in %; cells: {'/'.join(table.sources)}; bold: best source of the cell", *table.settings]
    if table.fine_tuned:
        notes.append(FINE_TUNED_NOTE)
    if partial:
        notes.append(f"{PARTIAL_MEAN_MARK} mean over fewer than the {n_categories} categories listed "
                     "(runs missing or metric undefined)")
    if table.uncompared_means:
        notes.append(f"mean row of {', '.join(table.uncompared_means)}: no source is bold, because the sources' "
                     "means cover different categories and are not comparable")
    rules = {len(table.rows) - 1} if len(table.rows) > 1 and table.rows[-1] == MEAN_ROW else set()
    return Grid(title(table), header, rows, notes, rules)


def to_rich(grid: Grid | ResultTable) -> Table:
    """Build a rich table with bold parts in bold; `print_grid` adds the notes."""
    grid = _as_grid(grid)
    rich_table = Table(title=rich_escape(grid.title))
    for position, name in enumerate(grid.header):
        rich_table.add_column(rich_escape(name), justify="left" if position == 0 else "right")
    for index, row in enumerate(grid.rows):
        texts = ["".join(f"[bold]{rich_escape(text)}[/bold]" if bold else rich_escape(text) for text, bold in cell)
                 for cell in row]
        rich_table.add_row(*texts, end_section=index + 1 in grid.rules_before)
    return rich_table


def print_grid(console: Console, grid: Grid | ResultTable) -> None:
    """Print a grid as a rich table followed by its notes, one per line."""
    from bench.terminal import print_table

    grid = _as_grid(grid)
    print_table(console, to_rich(grid))
    for note in grid.notes:
        console.print(note, style="dim", highlight=False, markup=False)
    console.print()


def to_text(grid: Grid | ResultTable) -> str:
    """Render a grid as plain text, as the terminal shows it (200 columns wide)."""
    capture = Console(width=200, record=True, file=io.StringIO())
    print_grid(capture, grid)
    return capture.export_text()


def _markdown_escape(text: str) -> str:
    return text.replace("|", r"\|").replace("*", r"\*")


def to_markdown(grid: Grid | ResultTable) -> str:
    """Render a GitHub Markdown table; bold parts are **bold** and notes follow the table."""
    grid = _as_grid(grid)
    lines = [f"**{_markdown_escape(grid.title)}**", "",
             "| " + " | ".join(_markdown_escape(name) for name in grid.header) + " |",
             "|---|" + "---:|" * (len(grid.header) - 1)]
    for row in grid.rows:
        texts = ["".join(f"**{_markdown_escape(text)}**" if bold else _markdown_escape(text) for text, bold in cell)
                 for cell in row]
        lines.append("| " + " | ".join(texts) + " |")
    for note in grid.notes:
        lines += ["", _markdown_escape(note)]
    return "\n".join(lines) + "\n"


# Characters with a meaning in LaTeX text, then the non-ASCII symbols that reports use.
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "–": "--", "−": "$-$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "§": r"\S{}",
                  "Δ": r"$\Delta$", "×": r"$\times$", "≤": r"$\leq$", "≥": r"$\geq$", "·": r"$\cdot$"}


def latex_escape(text: str) -> str:
    """Escape text for LaTeX: special characters first, then the report's non-ASCII symbols."""
    escaped = "".join(_LATEX_SPECIAL.get(char, char) for char in text)
    return "".join(_LATEX_SYMBOLS.get(char, char) for char in escaped)


def to_latex(grid: Grid | ResultTable) -> str:
    """Render a booktabs tabular inside a table float; bold parts are \\textbf and notes are footnotes.

    Needs `\\usepackage{booktabs}` in the preamble.
    """
    grid = _as_grid(grid)
    columns = "l" + "r" * (len(grid.header) - 1)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(grid.title)}}}",
        rf"\begin{{tabular}}{{{columns}}}",
        r"\toprule",
        " & ".join(latex_escape(name) for name in grid.header) + r" \\",
        r"\midrule",
    ]
    for index, row in enumerate(grid.rows):
        if index in grid.rules_before:
            lines.append(r"\midrule")
        texts = ["".join(rf"\textbf{{{latex_escape(text)}}}" if bold else latex_escape(text) for text, bold in cell)
                 for cell in row]
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if grid.notes:
        lines += [r"\par\smallskip", "{\\footnotesize " + r"\par ".join(latex_escape(note) for note in grid.notes)
                  + r"\par}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_html(grid: Grid | ResultTable) -> str:
    """Render an HTML table fragment; bold parts are <strong> and notes follow in a paragraph."""
    grid = _as_grid(grid)
    lines = ['<table class="bench">', f"<caption>{html.escape(grid.title)}</caption>", "<thead><tr>"
             + "".join(f"<th>{html.escape(name)}</th>" for name in grid.header) + "</tr></thead>", "<tbody>"]
    for index, row in enumerate(grid.rows):
        texts = ["".join(f"<strong>{html.escape(text)}</strong>" if bold else html.escape(text) for text, bold in cell)
                 for cell in row]
        css = ' class="rule"' if index in grid.rules_before else ""
        lines.append(f"<tr{css}>" + "".join(f"<td>{text}</td>" for text in texts) + "</tr>")
    lines += ["</tbody>", "</table>"]
    if grid.notes:
        lines.append('<p class="notes">' + "<br>".join(html.escape(note) for note in grid.notes) + "</p>")
    return "\n".join(lines) + "\n"


HTML_STYLE = """body { font-family: sans-serif; margin: 2em; }
table.bench { border-collapse: collapse; margin: 1em 0; }
table.bench caption { font-weight: bold; text-align: left; padding-bottom: .4em; }
table.bench th, table.bench td { padding: .2em .6em; text-align: right; white-space: nowrap; }
table.bench th:first-child, table.bench td:first-child { text-align: left; }
table.bench thead tr { border-top: 2px solid black; border-bottom: 1px solid black; }
table.bench tbody tr:last-child { border-bottom: 2px solid black; }
table.bench tr.rule { border-top: 1px solid black; }
p.notes { font-size: smaller; color: #333; }
img { max-width: 100%; }"""


def html_document(page_title: str, body: str) -> str:
    """Wrap HTML fragments in a standalone UTF-8 page with the report style."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(page_title)}'
            f"</title>\n<style>\n{HTML_STYLE}\n</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def render(grids: list[Grid], output_format: str) -> str:
    """Render grids one after another in `output_format` (text, markdown, latex or html)."""
    renderer = {"text": to_text, "markdown": to_markdown, "latex": to_latex, "html": to_html}[output_format]
    text = "\n".join(renderer(grid) for grid in grids)
    if output_format == "html":
        return html_document(grids[0].title if grids else "bench report", text)
    return text


def to_csv(table: ResultTable) -> str:
    """Render long-format CSV: one line per category, method and source, values as fractions."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
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


def _as_grid(value: Grid | ResultTable) -> Grid:
    return result_grid(value) if isinstance(value, ResultTable) else value
