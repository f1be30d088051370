"""`bench pretrain`: train a backbone on fractal images and register it as named weights."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bench.errors import ConfigError
from bench.terminal import print_table

console = Console()

DEFAULT_NAME = "fractals"
# Steps between rewrites of last.ckpt.
DEFAULT_CHECKPOINT_EVERY = 1000

# Options of PretrainConfig fields default to None, so that a preset or the checkpoint of a resumed
# run supplies what the command line leaves out.
PRESET_HELP = ("Named settings: paper (the study's WideResNet-50-2 recipe; the defaults), cpu-small (about 15 "
               "minutes on 2 CPU cores), demo (about 2 minutes). Explicit options override the preset.")


def pretrain_command(
    preset: Annotated[str | None, typer.Option("--preset", help=PRESET_HELP)] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Backbone: resnet18, resnet50, wide_resnet50_2 or efficientnet_lite0. Default: wide_resnet50_2.")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="Fractal recipe: single, multi-system, ofdb or multi-instance (trained with BCE). Default: multi-system.")] = None,
    classes: Annotated[int | None, typer.Option("--classes", help="Number of fractal classes. Default: 1000.")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Side of the square training images in pixels (at least 32). Default: 256.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs. Default: 100.")] = None,
    samples_per_epoch: Annotated[int | None, typer.Option("--samples-per-epoch", help="Rendered images per epoch, a multiple of --classes. Default: 1000000.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Global batch over all devices. Default: 512.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak SGD learning rate. Default: 0.1.")] = None,
    momentum: Annotated[float | None, typer.Option("--momentum", help="SGD momentum (OneCycle cycles it between 0.85 and 0.95 instead). Default: 0.9.")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="Weight decay, not applied to normalisation weights and biases. Default: 1e-4.")] = None,
    schedule: Annotated[str | None, typer.Option("--schedule", help="Learning-rate schedule: step (x0.1 after 30 % and 60 % of the steps) or onecycle. Default: step.")] = None,
    mean: Annotated[str | None, typer.Option("--mean", help="Input mean on the 0..1 scale, 1 or 3 comma-separated values; stored with the weights. Default: 0.2.")] = None,
    std: Annotated[str | None, typer.Option("--std", help="Input std on the 0..1 scale, 1 or 3 comma-separated values; stored with the weights. Default: 0.5.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the systems, the images, the data order and the initialisation. Default: 0.")] = None,
    points: Annotated[int | None, typer.Option("--points", help="Chaos-game points per fractal. Default: 100000 x (size/256)^2, at least 10000.")] = None,
    objects: Annotated[str | None, typer.Option("--objects", help="Fractals per image, LOW-HIGH (multi-instance, multi-system). Default: 1-5 for multi-instance, else 1.")] = None,
    system_count: Annotated[int | None, typer.Option("--system-count", help="IFS systems to sample when --systems is not given. Default: 100 per class for multi-system, else one per class.")] = None,
    held_out_per_class: Annotated[int | None, typer.Option("--held-out-per-class", help="Held-out images per class for the final accuracy. Default: 20.")] = None,
    systems: Annotated[Path | None, typer.Option("--systems", help="IFS systems file (.npz) from `bench fractals sample`. Default: sample them from --seed and save them in the run folder.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Train on an ImageFolder tree (ROOT/<class>/<image>, or ROOT/train and ROOT/val) instead of rendering.")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue a run from its last.ckpt; training options come from the checkpoint.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Weights name to register the finished backbone under. Default: fractals; with --resume, the name the run started with.", show_default=False)] = None,
    register: Annotated[bool, typer.Option("--register/--no-register", help="Register the finished backbone in the database.")] = True,
    db: Annotated[str | None, typer.Option("--db", envvar="BENCH_DB", help="Results database: SQLite path or SQLAlchemy URL. Default: ./bench.db.")] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Parent folder of the run folders.")] = Path("runs/pretrain"),
    accelerator: Annotated[str, typer.Option("--accelerator", help="auto, cpu or gpu.")] = "auto",
    devices: Annotated[int, typer.Option("--devices", help="Devices (GPUs, or CPU processes) per node; more than one trains with DDP.")] = 1,
    num_nodes: Annotated[int, typer.Option("--num-nodes", help="Nodes of a multi-node DDP job.")] = 1,
    precision: Annotated[str | None, typer.Option("--precision", help="32, 16-mixed (GPU) or bf16-mixed. Default: bf16-mixed on GPUs that support it, else 16-mixed; 32 on CPU.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="DataLoader worker processes per device. Default: 0 on CPU, up to 8 per GPU.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", help="Steps between rewrites of last.ckpt, which is also written at the end and when Ctrl-C or SIGTERM stops training. Default: 1000; with --resume, the interval the run started with.", show_default=False)] = None,
    single_thread: Annotated[bool, typer.Option("--single-thread", help="Run the model on one CPU thread; much faster when other jobs share the cores.")] = False,
    stop_at_step: Annotated[int | None, typer.Option("--stop-at-step", help="End this session at this global step and keep last.ckpt for --resume, e.g. to fit a job time limit.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Delete an earlier run of the same configuration and train again.")] = False,
) -> None:
    """Pre-train a backbone on fractal images, write backbone.pth and register it under --name.

    The run folder is RUNS_DIR/<hash of the configuration>. `bench run --weights NAME` then loads
    the backbone with the normalisation it was trained with.
    """
    from bench.pretrain.config import RESERVED_NAMES, RuntimeOptions, parse_channels, parse_objects, resolve_config
    from bench.pretrain.train import Registration, is_primary_process, read_session, resume_run, start_run

    # A resumed session keeps the name and checkpoint interval of the run unless they are given again.
    stored = read_session(resume.expanduser().resolve().parent) if resume is not None else {}
    if name is None:
        name = stored.get("name", DEFAULT_NAME)
        register = register and name is not None
    if checkpoint_every is None:
        checkpoint_every = stored.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)

    if register and not name.strip():
        raise ConfigError(f"invalid --name {name!r}: pass a non-empty name, for example fractals")
    if register and name in RESERVED_NAMES:
        raise ConfigError(f"invalid --name {name!r}: {' and '.join(RESERVED_NAMES)} are built-in weights; choose another name, for example fractals")
    options = {
        "arch": arch, "recipe": recipe, "classes": classes, "image_size": image_size, "epochs": epochs,
        "samples_per_epoch": samples_per_epoch, "batch_size": batch_size, "lr": lr, "momentum": momentum,
        "weight_decay": weight_decay, "schedule": schedule, "seed": seed, "points": points,
        "system_count": system_count, "held_out_per_class": held_out_per_class,
        "mean": parse_channels(mean, "--mean") if mean is not None else None,
        "std": parse_channels(std, "--std") if std is not None else None,
        "objects": parse_objects(objects) if objects is not None else None,
        "data_dir": str(data_dir.expanduser().resolve()) if data_dir is not None else None,
    }
    runtime = RuntimeOptions(accelerator=accelerator, devices=devices, num_nodes=num_nodes, precision=precision,
                             workers=workers, checkpoint_every=checkpoint_every, stop_at_step=stop_at_step,
                             single_thread=single_thread)
    registration = Registration(name if register else None, db)

    if resume is not None:
        for flag, value in (("--preset", preset), ("--systems", systems)):
            if value is not None:
                raise ConfigError(f"{flag} does not combine with --resume, which reads the run's settings from its checkpoint: drop {flag}")
        result = resume_run(resume, runtime, registration, console, overrides=options)
    else:
        if systems is not None and system_count is not None:
            raise ConfigError("--system-count samples systems, --systems loads them: pass only one")
        if systems is not None and data_dir is not None:
            raise ConfigError("--systems renders fractals, --data-dir reads a folder: pass only one")
        config = resolve_config(preset, options)
        if systems is not None:
            # The file determines the number of systems, whatever the preset sets.
            config = replace(config, system_count=None)
        result = start_run(config, runtime, runs_dir, registration, console, systems_file=systems, force=force)

    if not is_primary_process():
        return
    if not result.finished:
        console.print(f"stopped at step {result.global_step} of {result.total_steps}. Continue with "
                      f"`bench pretrain --resume {result.run_dir / 'last.ckpt'}`")
        if result.stopped_by is not None:
            # The shell's status for a process ended by that signal, so scripts see the interruption.
            raise typer.Exit(128 + signal.Signals[result.stopped_by])
        return
    _print_summary(result, registration)


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "-"


def _print_summary(result, registration) -> None:
    meta = result.meta
    table = Table(title=f"pre-training run {result.run_id}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    table.add_row("backbone", f"{meta['arch']} ({meta['timm_name']})")
    table.add_row("steps", f"{result.global_step} ({meta['samples_seen']:,} images)")
    seconds = meta["train_time_s"]
    table.add_row("training time", f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s")
    table.add_row("train accuracy (last epoch)", _percent(meta["train_accuracy"]))
    table.add_row("held-out accuracy", f"{_percent(meta['held_out_accuracy'])} on {meta['held_out_images']} images "
                                       f"(chance {_percent(meta['chance_accuracy'])})")
    table.add_row("normalisation", f"mean {meta['mean']}, std {meta['std']}")
    table.add_row("checkpoint", str(result.backbone_path))
    table.add_row("filters", str(result.run_dir / "filters.png"))
    if result.weights_id is not None:
        table.add_row("registered", f"'{registration.name}' (weights id {result.weights_id}); "
                                    f"use `bench run --weights {registration.name} --backbone {meta['arch']}`")
    print_table(console, table)
