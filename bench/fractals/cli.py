"""`bench fractals` commands: sample IFS systems, preview a recipe, export a recipe's images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bench.errors import ConfigError
from bench.fractals.catalog import RECIPES
from bench.fractals.systems import (
    SAMPLERS,
    load_systems,
    parse_map_range,
    sample_fractaldb_systems,
    sample_sigma_systems,
    save_systems,
)

console = Console()

app = typer.Typer(
    help="Sample IFS fractal systems and render fractal pre-training datasets.",
    no_args_is_help=True,
    add_completion=False,
)

RECIPE_HELP = f"Dataset recipe: {', '.join(RECIPES)}."


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _parse_objects(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        return parse_map_range(text)
    except ConfigError:
        raise ConfigError(f"invalid object range {text!r}: write LOW-HIGH, for example 1-5") from None


def _check_positive(name: str, value: int | None, example: str) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"invalid {name} {value}: use at least 1, for example {example}")


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Systems file to write (.npz).")],
    systems: Annotated[int, typer.Option(help="Number of IFS systems to draw.")] = 1000,
    n_maps: Annotated[
        str, typer.Option(help="Inclusive range of affine maps per system, LOW-HIGH.")
    ] = "2-8",
    seed: Annotated[int, typer.Option(help="Seed of the sampler; system i uses (seed, i).")] = 0,
    sampler: Annotated[
        str,
        typer.Option(
            help="sigma: contractive maps with the sigma factor in [(5+N)/2, (6+N)/2] (Anderson & Farrell); "
            "fractaldb: entries uniform in [-1, 1], kept above the filling rate (Kataoka et al.)."
        ),
    ] = "sigma",
    min_filling_rate: Annotated[
        float,
        typer.Option(help="fractaldb only: minimum fraction of covered pixels of a 512 px rendering."),
    ] = 0.2,
) -> None:
    """Draw IFS systems and save them, with the sampler settings and seed, to an npz file."""
    map_range = parse_map_range(n_maps)
    _check_positive("system count", systems, "1000")
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    if out.suffix != ".npz":
        raise ConfigError(f"invalid systems file name {str(out)!r}: use the .npz extension")

    with _progress() as progress:
        task = progress.add_task(f"sampling {sampler} systems", total=systems)

        def advance(done: int) -> None:
            progress.update(task, completed=done)

        if sampler == "sigma":
            result = sample_sigma_systems(systems, seed=seed, n_maps=map_range, progress=advance)
        else:
            result = sample_fractaldb_systems(
                systems, seed=seed, n_maps=map_range, min_filling_rate=min_filling_rate, progress=advance
            )
    save_systems(result, out)
    console.print(f"wrote {len(result)} systems ({result.maps.shape[0]} maps) to {out}")


@app.command()
def preview(
    systems: Annotated[Path, typer.Option(help="Systems file (.npz) from `bench fractals sample`.")],
    out: Annotated[Path, typer.Option(help="Contact sheet to write (.png).")],
    recipe: Annotated[str, typer.Option(help=RECIPE_HELP)] = "single",
    count: Annotated[int, typer.Option(help="Images on the sheet, spread over the dataset.")] = 64,
    size: Annotated[int, typer.Option(help="Side of each image in pixels.")] = 128,
    points: Annotated[int, typer.Option(help="Chaos-game points per fractal.")] = 100_000,
    classes: Annotated[
        int | None, typer.Option(help="Number of classes. Default: min(1000, number of systems).")
    ] = None,
    per_class: Annotated[
        int | None, typer.Option(help="Images per class. Default: 1 for ofdb, else 1000.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Dataset seed; fixes every image.")] = 0,
    augment: Annotated[
        bool, typer.Option(help="Apply the recipe's augmentation (jitter, window, flips, blur).")
    ] = True,
) -> None:
    """Write a PNG contact sheet of images rendered with the recipe's augmentation."""
    _check_positive("image count", count, "64")
    from bench.fractals.preview import write_contact_sheet
    from bench.fractals.recipes import FractalImages, make_recipe

    loaded = load_systems(systems)
    spec = make_recipe(recipe, len(loaded), classes=classes, per_class=per_class, size=size, points=points, seed=seed, augment=augment)
    path = write_contact_sheet(FractalImages(loaded, spec), out, count)
    console.print(f"wrote a contact sheet of {min(count, len(spec))} {recipe} images to {path}")


@app.command()
def render(
    systems: Annotated[Path, typer.Option(help="Systems file (.npz) from `bench fractals sample`.")],
    out: Annotated[Path, typer.Option(help="Output folder of the ImageFolder tree.")],
    recipe: Annotated[str, typer.Option(help=RECIPE_HELP)] = "single",
    classes: Annotated[
        int | None, typer.Option(help="Number of classes. Default: min(1000, number of systems).")
    ] = None,
    per_class: Annotated[
        int | None, typer.Option(help="Images per class. Default: 1 for ofdb, else 1000.")
    ] = None,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    points: Annotated[int, typer.Option(help="Chaos-game points per fractal.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Dataset seed; fixes every image.")] = 0,
    workers: Annotated[int, typer.Option(help="Worker processes that render and write images.")] = 1,
    objects: Annotated[
        str | None,
        typer.Option(help="Fractals per image, LOW-HIGH (multi-instance, multi-system). Default: 1-5 for multi-instance, else 1."),
    ] = None,
    augment: Annotated[
        bool, typer.Option(help="Apply the recipe's augmentation (jitter, window, flips, blur).")
    ] = True,
) -> None:
    """Render a recipe's images to out/<class:05d>/<index:05d>.png; a rerun resumes an interrupted export."""
    _check_positive("worker count", workers, "2")
    object_range = _parse_objects(objects)
    from bench.fractals.export import export_images
    from bench.fractals.recipes import make_recipe

    loaded = load_systems(systems)
    spec = make_recipe(
        recipe, len(loaded), classes=classes, per_class=per_class, size=size, points=points,
        seed=seed, augment=augment, objects=object_range,
    )
    with _progress() as progress:
        task = progress.add_task(f"rendering {recipe}", total=len(spec))
        result = export_images(
            systems, spec, out, workers=workers, progress=lambda done: progress.update(task, completed=done)
        )
    console.print(
        f"{result.total} images in {out}: {result.written} rendered now, {result.kept} kept from an earlier run"
    )
