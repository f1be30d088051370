"""`bench run`: expand a grid of run configurations, validate it and execute it."""

import itertools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bench.errors import ConfigError

console = Console()
error_console = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="BENCH_DB", help="Results database: a SQLite file path or an SQLAlchemy URL "
                                                 "(postgresql://...). Default: ./bench.db."),
]


def _parse_options(texts: list[str], methods: list[str]) -> dict[str, dict[str, object]]:
    """Split `key=value` and `method.key=value` texts into resolved options per method."""
    from bench.methods import get_method

    given: dict[str, dict[str, str]] = {method: {} for method in methods}
    for text in texts:
        key, separator, value = text.partition("=")
        if not separator or not key:
            raise ConfigError(f"invalid --option '{text}'; write key=value or method.key=value, e.g. coreset_ratio=0.01")
        scope, dot, name = key.rpartition(".")
        if dot:
            if scope not in given:
                raise ConfigError(f"--option '{text}' names method '{scope}', which is not among --method {', '.join(methods)}")
            given[scope][name] = value
            continue
        targets = [method for method in methods if name in get_method(method).options]
        if not targets:
            raise ConfigError(f"unknown option '{name}' for {', '.join(methods)}; see `bench methods show NAME`")
        for method in targets:
            given[method][name] = value
    return {method: get_method(method).resolve_options(options) for method, options in given.items()}


def run(
    method: Annotated[list[str], typer.Option("--method", "-m", help="Method name; repeat for a grid (bench methods list).")],
    weights: Annotated[list[str], typer.Option("--weights", "-w", help="Weights name: random, imagenet or a registered name; repeat for a grid.")],
    root: Annotated[Path, typer.Option("--root", help="Dataset root folder that contains the category folders.")],
    category: Annotated[list[str], typer.Option("--category", "-c", help="Category name, or 'all'; repeat for a grid.")],
    backbone: Annotated[list[str], typer.Option("--backbone", "-b", help="Backbone architecture; repeat for a grid.")] = ["wide_resnet50_2"],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset layout: mvtec.")] = "mvtec",
    layers: Annotated[list[str] | None, typer.Option("--layers", help="Feature hierarchy levels 1..4 (stride 4, 8, 16, 32), e.g. 2,3; repeat for a grid. Default: the method's own (PaDiM 1,2,3; PatchCore 2,3).")] = None,
    image_size: Annotated[int, typer.Option("--image-size", help="Square model input size in pixels.", min=32)] = 256,
    eval_size: Annotated[str, typer.Option("--eval-size", help="Square size in pixels at which pixel metrics are computed, or 'original' for the test images' own resolution. Default: the image size.")] = "",
    seed: Annotated[list[int] | None, typer.Option("--seed", help="Random seed; repeat for a grid. Default: 0.")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Method option key=value or method.key=value (bench methods show NAME).")] = None,
    train_shots: Annotated[int | None, typer.Option("--train-shots", help="Few-shot: train on this many images drawn with the seed. Default: all of train/good.", min=1)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass; does not change results.", min=1)] = 8,
    save_maps: Annotated[bool, typer.Option("--save-maps/--no-save-maps", help="Store float16 anomaly maps of the test images beside the run log (for qualitative figures).")] = True,
    force: Annotated[bool, typer.Option("--force", help="Run again configurations that are already done.")] = False,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Folder for per-run log files.")] = Path("runs"),
    db: DbOption = None,
) -> None:
    """Run every combination of the given methods, weights, backbones, categories, layers and seeds.

    Each run is stored in the database when it ends; runs already done are skipped unless --force.
    """
    from bench.data import list_dataset_categories, load_dataset
    from bench.methods import get_method
    from bench.runners.config import ORIGINAL, RunConfig
    from bench.runners.local import DONE, FAILED, SKIPPED, execute
    from bench.schema.db import open_engine, session_factory
    from bench.weights.architectures import get_architecture, parse_levels
    from bench.weights.loading import backbone_state_dict
    from bench.weights.registry import resolve_weights

    # Validate every axis before any run starts, so a typo never costs a half-finished grid.
    methods = list(dict.fromkeys(method))
    for name in methods:
        get_method(name)
    for name in backbone:
        get_architecture(name)
    options = _parse_options(option or [], methods)
    if eval_size in ("", None):
        evaluation = image_size
    elif eval_size == "original":
        evaluation = ORIGINAL
    elif eval_size.isdigit() and int(eval_size) >= 16:
        evaluation = int(eval_size)
    else:
        raise ConfigError(f"invalid --eval-size '{eval_size}'; pass a size in pixels (>= 16) or 'original'")

    root = root.expanduser().resolve()
    categories: list[str] = []
    for name in category:
        categories += list_dataset_categories(dataset, root) if name == "all" else [name]
    categories = list(dict.fromkeys(categories))
    if not categories:
        raise ConfigError(f"no categories found in {root}; check --root")
    for name in categories:
        loaded = load_dataset(dataset, root, name)
        if train_shots is not None and train_shots > len(loaded.train):
            raise ConfigError(f"invalid --train-shots {train_shots}; {name} has {len(loaded.train)} training images")

    configs = []
    for method_name, backbone_name, weights_name, category_name, seed_value in itertools.product(
        methods, backbone, weights, categories, seed or [0]
    ):
        level_sets = [parse_levels(text) for text in layers] if layers else [list(get_method(method_name).default_levels)]
        for levels in level_sets:
            configs.append(RunConfig(
                method=method_name, backbone=backbone_name, weights=weights_name, dataset=dataset, root=str(root),
                category=category_name, levels=tuple(levels), image_size=image_size, eval_size=evaluation,
                seed=seed_value, method_options=options[method_name], train_shots=train_shots,
            ))

    engine = open_engine(db)
    sessions = session_factory(engine)
    with sessions() as session:
        for weights_name, backbone_name in itertools.product(dict.fromkeys(weights), dict.fromkeys(backbone)):
            record = resolve_weights(session, weights_name, backbone_name)
            if record.source.startswith("timm:"):
                # Fetch hub weights now, so that an offline machine fails before the grid starts.
                backbone_state_dict(record)

    counts = {DONE: 0, SKIPPED: 0, FAILED: 0}
    for number, config in enumerate(configs, start=1):
        console.rule(f"[{number}/{len(configs)}] {config.describe()}")
        outcome = execute(config, sessions, runs_dir, console, force=force, batch_size=batch_size,
                          save_anomaly_maps=save_maps)
        counts[outcome.status] += 1
        if outcome.status == SKIPPED:
            console.print(f"skipped: already done as run {outcome.run_id} (pass --force to run it again)")
        elif outcome.status == FAILED:
            error_console.print(f"[red]failed[/red] (run {outcome.run_id}): {outcome.error}")
        else:
            shown = ", ".join(f"{m.name} {100 * m.value:.1f}" if m.value is not None else f"{m.name} NULL"
                              for m in outcome.metrics)
            console.print(f"done (run {outcome.run_id}): {shown}")

    console.print(f"{counts[DONE]} done, {counts[SKIPPED]} skipped, {counts[FAILED]} failed; database {engine.url}")
    if counts[FAILED]:
        raise typer.Exit(1)


