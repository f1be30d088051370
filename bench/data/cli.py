"""`bench data`: check a dataset folder before a run, or write the synthetic demo dataset."""

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.data.base import Category
from bench.data.demo import write_demo_dataset
from bench.data.mvtec import count_image_sizes, list_categories, load_mvtec, summarise
from bench.errors import DatasetError

SUPPORTED_DATASETS = ("mvtec",)

app = typer.Typer(
    help="Check dataset folders and write the synthetic demo dataset.",
    no_args_is_help=True,
)


@app.command()
def check(
    root: Annotated[
        Path,
        typer.Option(help="Folder that contains the category folders, for example data/MVTecAD. Required."),
    ],
    dataset: Annotated[
        str,
        typer.Option(help="Dataset layout to read. Supported: mvtec. Default: mvtec.", show_default=False),
    ] = "mvtec",
    category: Annotated[
        str | None,
        typer.Option(
            help="Category folder to check, for example bottle. Default: every category under --root.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Validate the dataset layout and print the image and mask counts of each category."""
    if dataset not in SUPPORTED_DATASETS:
        raise DatasetError(f"unsupported dataset {dataset!r} (supported: {', '.join(SUPPORTED_DATASETS)})")

    if category is None:
        categories = list_categories(root)
        if not categories:
            raise DatasetError(
                f"no category folders found in {root}: none contains train/good "
                "(pass --root with the folder that contains the category folders)"
            )
    else:
        categories = [category]

    console = Console()
    for name in categories:
        loaded = load_mvtec(root, name, dataset=dataset)
        _print_category(console, loaded)

    noun = "category" if len(categories) == 1 else "categories"
    console.print(f"checked {len(categories)} {noun} in {escape(str(root))}: no problems found")


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
    described = ", ".join(f"{width}x{height} ({count} images)" for (width, height), count in sizes.items())
    console.print(f"image sizes (width x height): {described}")
