"""`bench data`: check a dataset before a run, prepare VisA, or write the synthetic demo dataset."""

import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from bench.data import DATASETS, list_dataset_categories
from bench.data.base import Category
from bench.data.check import ERROR, CategoryReport, check_category, describe_mask_values
from bench.data.demo import write_demo_dataset
from bench.data.mvtec import count_image_sizes, load_mvtec, summarise
from bench.data.visa import FOLDERS as VISA_FOLDERS
from bench.data.visa import prepare_visa
from bench.errors import DatasetError

app = typer.Typer(
    help="Check datasets, prepare VisA and write the synthetic demo dataset.",
    no_args_is_help=True,
)


@app.command()
def check(
    root: Annotated[
        Path,
        typer.Option(
            help="Folder that contains the category folders, for example data/MVTecAD. For VisA, the prepared "
            "folder or the raw root that contains visa_pytorch. Required."
        ),
    ],
    dataset: Annotated[
        str,
        typer.Option(help="Dataset layout to read: mvtec, visa or folder. Default: mvtec.", show_default=False),
    ] = "mvtec",
    category: Annotated[
        str | None,
        typer.Option(
            help="Category folder to check, for example bottle. Default: every category under --root.",
            show_default=False,
        ),
    ] = None,
    mask_threshold: Annotated[
        float | None,
        typer.Option(
            help="Fraction of a mask's full scale (255 for 8-bit) above which a mask pixel is anomalous, "
            ">= 0 and < 1. Default: mask_threshold from <root>/bench-dataset.toml, else 0.5 for folder "
            "and 0 (any non-zero pixel) for mvtec and visa.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Validate a dataset and report counts, image sizes and modes, mask values and problems.

    Exits with status 2 when any category has an error, and with 0 when there are only warnings.
    """
    if dataset not in DATASETS:
        raise DatasetError(f"unsupported dataset {dataset!r} (supported: {', '.join(DATASETS)})")

    if category is None:
        categories = list_dataset_categories(dataset, root)
        if not categories and (root / "train" / "good").is_dir():
            raise DatasetError(f"no category folders found in {root}: it contains train/good itself, so pass its "
                               f"parent folder as --root and --category {root.name}")
        if not categories:
            raise DatasetError(
                f"no category folders found in {root}: none contains train/good "
                "(pass --root with the folder that contains the category folders)"
            )
    else:
        categories = [category]

    console = Console()
    errors: list[str] = []
    warnings = 0
    # The report lists every problem, so the loader's own warnings would print them twice.
    loader_logger = logging.getLogger("bench.data.folder")
    previous_level = loader_logger.level
    loader_logger.setLevel(logging.ERROR)
    try:
        reports = [check_category(dataset, root, name, mask_threshold) for name in categories]
    finally:
        loader_logger.setLevel(previous_level)
    for report in reports:
        _print_report(console, report)
        errors += [problem.message for problem in report.errors]
        warnings += len(report.warnings)

    noun = "category" if len(categories) == 1 else "categories"
    found = _count_problems(len(errors), warnings)
    console.print(f"checked {len(categories)} {noun} in {escape(str(root))}: {found}", soft_wrap=True)

    if errors:
        more = f" ({len(errors) - 1} more errors above)" if len(errors) > 1 else ""
        raise DatasetError(f"{errors[0]}{more}")


prepare_app = typer.Typer(help="Convert a downloaded dataset into the layout that runs read.", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")


@prepare_app.command("visa")
def prepare_visa_command(
    root: Annotated[
        Path,
        typer.Option(help="Folder of the extracted VisA release, with <object>/Data and split_csv. Required."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder to write the MVTec AD layout into. Runs accept it once the final count check has "
            "passed. Default: <root>/visa_pytorch.",
            show_default=False,
        ),
    ] = None,
    split_csv: Annotated[
        Path | None,
        typer.Option(
            help="Split file with the columns object,split,label,image,mask. Default: <root>/split_csv/1cls.csv.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Convert raw VisA into the MVTec AD layout, binarise its masks and verify the counts.

    Run the same command again to finish an interrupted preparation, which keeps complete files.
    """
    console = Console()
    start = time.perf_counter()

    # The bar starts with the first file, so that input errors print nothing before the error line.
    bar = Progress(console=console, transient=True)
    task = None

    def show(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("preparing VisA", total=total)
        bar.update(task, completed=done)

    try:
        result = prepare_visa(root, out=out, split_csv=split_csv, progress=show)
    finally:
        # Stopping a bar that never started prints an empty line with rich 15.
        if task is not None:
            bar.stop()
    elapsed = time.perf_counter() - start

    table = Table(title=f"VisA ({escape(str(result.out))})", title_justify="left")
    table.add_column("object")
    for folder in VISA_FOLDERS:
        table.add_column(folder, justify="right")
    for name, counts in result.counts.items():
        table.add_row(escape(name), *(str(counts[folder]) for folder in VISA_FOLDERS))
    totals = [sum(counts[folder] for counts in result.counts.values()) for folder in VISA_FOLDERS]
    table.add_row("total", *(str(total) for total in totals), style="bold")
    console.print(table)

    if result.already_complete:
        console.print(f"already prepared in {escape(str(result.out))}: all files match {escape(str(result.split_csv))}",
                      soft_wrap=True)
    else:
        console.print(
            f"prepared in {escape(str(result.out))}: {result.written} files written, {result.skipped} kept from an "
            f"earlier run, counts match {escape(str(result.split_csv))} ({elapsed:.1f} s)",
            soft_wrap=True,
        )
    if result.empty_masks:
        console.print(f"[yellow]warning:[/yellow] {result.empty_masks} masks have no defect pixel")

    console.print("next, try:")
    console.print(f"  bench data check --dataset visa --root {escape(str(result.out))}", soft_wrap=True)


@app.command()
def demo(
    out: Annotated[
        Path,
        typer.Option(help="Folder to write the demo categories into. Default: data/demo.", show_default=False),
    ] = Path("data/demo"),
    seed: Annotated[
        int,
        typer.Option(help="Random seed of the generated images, an integer >= 0. Default: 0.", show_default=False),
    ] = 0,
    size: Annotated[
        int,
        typer.Option(help="Image width and height in pixels, 64 to 1024. Default: 128.", show_default=False),
    ] = 128,
) -> None:
    """Write a small synthetic dataset in the MVTec AD layout, with exact defect masks."""
    start = time.perf_counter()
    names = write_demo_dataset(out, seed=seed, size=size)
    elapsed = time.perf_counter() - start

    console = Console()
    for name in names:
        _print_category(console, load_mvtec(out, name))

    megabytes = sum(path.stat().st_size for path in Path(out).rglob("*") if path.is_file()) / 1e6
    console.print(
        f"demo dataset ready in {escape(str(out))}: {', '.join(names)} "
        f"({megabytes:.1f} MB, seed {seed}, {size}x{size} pixels, {elapsed:.1f} s)",
        soft_wrap=True,
    )
    console.print("next, try:")
    console.print(
        "  bench run --method padim --weights random --backbone resnet18 --dataset mvtec "
        f"--root {escape(str(out))} --category {names[0]}",
        soft_wrap=True,
    )


def _print_category(console: Console, category: Category) -> None:
    """Print the split/defect/images/masks table of a validated category, and its image sizes."""
    table = Table(title=f"{category.name} ({escape(str(category.root / category.name))})", title_justify="left")
    table.add_column("split")
    table.add_column("defect")
    table.add_column("images", justify="right")
    table.add_column("masks", justify="right")

    for split, defect, images, masks in summarise(category):
        table.add_row(split, escape(defect), str(images), str(masks))

    console.print(table)

    sizes = count_image_sizes(category)
    described = ", ".join(f"{width}x{height} ({_images(count)})" for (width, height), count in sizes.items())
    console.print(f"image sizes (width x height): {described}")


def _print_report(console: Console, report: CategoryReport) -> None:
    """Print one category's table, image and mask statistics, then its problems."""
    if report.category is None:
        console.print(f"[bold]{escape(report.name)}[/bold]")
    else:
        _print_category(console, report.category)

        modes = ", ".join(f"{mode} {file_format} ({_images(count)})" for (mode, file_format), count in report.images.items())
        console.print(f"image modes: {escape(modes)}", soft_wrap=True)

        if report.mask_values is not None:
            console.print(f"mask values: {describe_mask_values(report.mask_values, report.category.mask_threshold)}",
                          soft_wrap=True)

    for problem in report.problems:
        colour = "red" if problem.severity == ERROR else "yellow"
        console.print(f"[{colour}]{problem.severity}:[/{colour}] {escape(problem.message)}", soft_wrap=True)


def _count_problems(errors: int, warnings: int) -> str:
    """Describe the problem counts, such as "1 error, 2 warnings" or "no problems found"."""
    if not errors and not warnings:
        return "no problems found"

    parts = []
    if errors:
        parts.append(f"{errors} error" + ("s" if errors != 1 else ""))
    if warnings:
        parts.append(f"{warnings} warning" + ("s" if warnings != 1 else ""))
    return ", ".join(parts)


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"
