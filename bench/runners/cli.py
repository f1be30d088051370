"""`bench run` and `bench sweep`: expand a grid of run configurations, queue it and execute it."""

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from bench.errors import ConfigError
from bench.terminal import print_table
from bench.runners.grid import GridSpec

console = Console()
error_console = Console(stderr=True)
logger = logging.getLogger(__name__)

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="BENCH_DB", help="Results database: a SQLite file path or an SQLAlchemy URL "
                                                 "(postgresql://...). Default: ./bench.db."),
]
JobsOption = Annotated[
    int | None,
    typer.Option("--jobs", "-j", min=1, help="Runs executed at once, each in its own process. "
                                             "Default: one per visible GPU, else 1."),
]
RetryFailedOption = Annotated[bool, typer.Option("--retry-failed", help="Run again configurations that failed before.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Run again configurations that are already done; "
                                                           "their old result stays until the new one replaces it.")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="List the grid's runs and their status; run nothing.")]
RunsDirOption = Annotated[Path, typer.Option("--runs-dir", help="Folder for per-run log files and runner.log.")]
StaleAfterOption = Annotated[
    float,
    typer.Option("--stale-after", min=1, help="Seconds without a heartbeat after which a running run of another "
                                              "host counts as abandoned and is run again."),
]
HeartbeatOption = Annotated[float, typer.Option("--heartbeat", min=0.1, help="Seconds between heartbeats of running runs.")]

# Exit status after Ctrl-C, as shells report a process ended by SIGINT.
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class QueueOptions:
    """How to queue a grid and where its results and logs go."""

    db: str | None
    runs_dir: Path
    force: bool = False
    retry_failed: bool = False
    dry_run: bool = False
    jobs: int | None = None
    stale_after_s: float = 600.0
    heartbeat_s: float = 30.0


def _print_dry_run(spec: GridSpec, options: QueueOptions) -> None:
    from sqlalchemy import select

    from bench.runners.grid import expand, plan
    from bench.schema.db import open_engine, session_factory, sqlite_file
    from bench.schema.models import Run

    configs = expand(spec)
    # A dry run never creates a database: a missing SQLite file reads as an empty one.
    path = sqlite_file(options.db)
    missing = path is not None and not path.exists()
    engine = open_engine("sqlite://" if missing else options.db)
    sessions = session_factory(engine)
    with sessions() as session:
        planned = plan(session, configs, fetch_hub_weights=False)
        states = {}
        hashes = [run.config_hash for run in planned]
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            states.update(session.execute(select(Run.config_hash, Run.status).where(Run.config_hash.in_(chunk))).all())

    table = Table(box=box.SIMPLE, title=f"Grid from {spec.source}", title_justify="left")
    for column in ("#", "status", "method", "backbone", "weights", "dataset", "category", "layers", "seed", "hash"):
        table.add_column(column, no_wrap=True)
    counts: dict[str, int] = {}
    for number, run in enumerate(planned, start=1):
        config = run.config
        status = states.get(run.config_hash, "new")
        counts[status] = counts.get(status, 0) + 1
        table.add_row(str(number), status, config.method, config.backbone, config.weights, config.dataset,
                      config.category, config.layers, str(config.seed), run.config_hash[:12])
    print_table(console, table)
    counts_text = ", ".join(f"{counts.get(status, 0)} {status}" for status in ("done", "failed", "running", "pending", "new"))
    console.print(f"{_plural(len(planned), 'run')}: {counts_text}; dry run, nothing was queued or run", highlight=False, soft_wrap=True)


def _configure_logging(runs_dir: Path) -> None:
    """Send INFO records of bench to runs_dir/runner.log and keep the terminal at warnings."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if handler.level == logging.NOTSET:
                handler.setLevel(logging.WARNING)
    handler = logging.FileHandler(runs_dir / "runner.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    logging.getLogger("bench").setLevel(logging.INFO)


def _plural(number: int, word: str) -> str:
    return f"{number} {word}" + ("" if number == 1 else "s")


def queue_grid(spec: GridSpec, options: QueueOptions, configs: list | None = None):
    """Validate (unless `configs` are given), plan and queue the grid; print what was already done.

    Returns the queued runs, the engine and the number of runs left to run.
    """
    from bench.runners.grid import expand, plan
    from bench.runners.runqueue import DONE, FAILED, enqueue, split_running
    from bench.schema.db import open_engine, removed_if_created_on_error, session_factory

    if configs is None:
        configs = expand(spec)
    with removed_if_created_on_error(options.db):
        engine = open_engine(options.db)
        sessions = session_factory(engine)
        with sessions() as session:
            planned = plan(session, configs)
    queued = enqueue(sessions, planned, force=options.force, retry_failed=options.retry_failed)

    done = sum(1 for run in queued if run.status == DONE)
    failed = sum(1 for run in queued if run.status == FAILED)
    active, abandoned = split_running(sessions, [run.run_id for run in queued], options.stale_after_s)
    running = len(active)
    # Done and failed runs run again only when --force or --retry-failed asks for them.
    to_run = len(queued) - running
    if not options.force:
        to_run -= done
    if not options.retry_failed:
        to_run -= failed
    parts = [f"{_plural(len(queued), 'run')} in the grid"]
    if done:
        parts.append(f"{done} already done " + ("(run again: --force)" if options.force
                                                  else "(skipped; pass --force to run them again)"))
    if failed:
        parts.append(f"{failed} failed before " + ("(run again: --retry-failed)" if options.retry_failed
                                                     else "(pass --retry-failed to run them again)"))
    if running:
        parts.append(f"{running} running in other workers")
    if abandoned:
        parts.append(f"{len(abandoned)} abandoned by a stopped worker (run again)")
    parts.append(f"{to_run} to run")
    console.print(", ".join(parts), highlight=False, soft_wrap=True)
    for run in queued:
        if run.status == FAILED and not options.retry_failed:
            console.print(f"  failed before (run {run.run_id}): {run.planned.config.describe()}: {run.error}",
                          highlight=False, soft_wrap=True)
    logger.info("grid from %s: %d runs, %d to run, %d done, %d failed, %d running elsewhere, %d abandoned",
                spec.source, len(queued), to_run, done, failed, running, len(abandoned))
    return queued, engine, to_run


def print_grid_summary(engine, run_ids: list[int], stale_after_s: float) -> tuple[int, int]:
    """Print the grid's final counts; return (failed, left to run)."""
    from bench.runners.runqueue import DONE, FAILED, PENDING, RUNNING, count_states
    from bench.schema.db import session_factory

    counts = count_states(session_factory(engine), run_ids)
    console.print(f"grid: {counts[DONE]} of {len(run_ids)} done, {counts[FAILED]} failed, {counts[RUNNING]} running, "
                  f"{counts[PENDING]} pending; database {engine.url.render_as_string(hide_password=True)}",
                  highlight=False, soft_wrap=True)
    return counts[FAILED], counts[PENDING] + counts[RUNNING]


def run_locally(spec: GridSpec, options: QueueOptions) -> None:
    """Queue the grid and execute it with local worker processes; exit non-zero when a run failed."""
    # Imported before weights are resolved, which may compute; see IMPORT_THREADS in the worker.
    from bench.runners.grid import expand
    from bench.runners.worker import Worker, WorkerSettings, visible_gpus
    from bench.schema.db import database_url

    configs = expand(spec)
    _configure_logging(options.runs_dir)
    try:
        queued, engine, to_run = queue_grid(spec, options, configs)
    except KeyboardInterrupt:
        console.print("stopped (Ctrl-C) before any run started; run the same command again to continue",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    gpus = visible_gpus()
    settings = WorkerSettings(
        db_url=database_url(options.db), runs_dir=options.runs_dir.resolve(), jobs=options.jobs or max(1, len(gpus)),
        gpus=tuple(gpus), batch_size=spec.batch_size, save_maps=spec.save_maps, heartbeat_s=options.heartbeat_s,
        stale_after_s=options.stale_after_s,
    )
    run_ids = [run.run_id for run in queued]
    report = Worker(settings, run_ids, console, total=to_run).run()

    console.print(f"{report.done} done, {report.failed} failed in this command", highlight=False, soft_wrap=True)
    failed, left = print_grid_summary(engine, run_ids, options.stale_after_s)
    if report.stop_reason is not None:
        console.print(f"stopped ({report.stop_reason}): {_plural(report.released, 'run')} went back to pending, "
                      f"{left} of {len(run_ids)} left to run; run the same command again to continue",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if left:
        console.print(f"{left} runs are pending or running in other workers; check them with `bench status`",
                      highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def run(
    method: Annotated[list[str], typer.Option("--method", "-m", help="Method name; repeat for a grid (bench methods list).")],
    weights: Annotated[list[str], typer.Option("--weights", "-w", help="Weights name: random, imagenet or a registered name; repeat for a grid.")],
    root: Annotated[Path, typer.Option("--root", help="Dataset root folder that contains the category folders.")],
    category: Annotated[list[str], typer.Option("--category", "-c", help="Category name, or 'all'; repeat for a grid.")],
    backbone: Annotated[list[str], typer.Option("--backbone", "-b", help="Backbone architecture; repeat for a grid.")] = ["wide_resnet50_2"],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset layout: mvtec, visa (after `bench data prepare visa`) or folder (your own images in the MVTec layout).")] = "mvtec",
    layers: Annotated[list[str] | None, typer.Option("--layers", help="Feature hierarchy levels 1..4 (stride 4, 8, 16, 32), e.g. 2,3; repeat for a grid. Default: the method's own (PaDiM 1,2,3; PatchCore 2,3).")] = None,
    image_size: Annotated[int, typer.Option("--image-size", help="Square model input size in pixels.", min=32)] = 256,
    eval_size: Annotated[str, typer.Option("--eval-size", help="Square size in pixels at which pixel metrics are computed, or 'original' for the test images' own resolution. Default: the image size.")] = "",
    seed: Annotated[list[int] | None, typer.Option("--seed", help="Random seed; repeat for a grid. Default: 0.")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Method option key=value or method.key=value (bench methods show NAME).")] = None,
    train_shots: Annotated[int | None, typer.Option("--train-shots", help="Few-shot: train on this many images drawn with the seed. Default: all of train/good.", min=1)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass; does not change results.", min=1)] = 8,
    save_maps: Annotated[bool, typer.Option("--save-maps/--no-save-maps", help="Store float16 anomaly maps of the test images beside the run log (for qualitative figures).")] = True,
    force: ForceOption = False,
    retry_failed: RetryFailedOption = False,
    jobs: JobsOption = None,
    dry_run: DryRunOption = False,
    runs_dir: RunsDirOption = Path("runs"),
    stale_after: StaleAfterOption = 600.0,
    heartbeat: HeartbeatOption = 30.0,
    db: DbOption = None,
) -> None:
    """Run every combination of the given methods, weights, backbones, categories, layers and seeds.

    Every repeated option is an axis of the grid. Runs are queued in the database and executed
    by --jobs processes; done runs are skipped unless --force, failed runs are retried only with
    --retry-failed, and runs of a killed command are picked up again by the next one.
    """
    spec = GridSpec(
        method=method, weights=weights, root=root, category=category, backbone=backbone, dataset=dataset,
        layers=layers, seed=seed or [0], image_size=image_size, eval_size=eval_size, options=option or [],
        train_shots=train_shots, batch_size=batch_size, save_maps=save_maps,
    )
    options = QueueOptions(db=db, runs_dir=runs_dir, force=force, retry_failed=retry_failed, dry_run=dry_run,
                           jobs=jobs, stale_after_s=stale_after, heartbeat_s=heartbeat)
    if dry_run:
        _print_dry_run(spec, options)
        return
    run_locally(spec, options)


RUNNERS = ("local", "slurm", "submitit-local")


def _parse_minutes(text: str) -> int:
    """Parse a Slurm time limit: minutes, HH:MM:SS, MM:SS or D-HH:MM:SS; return whole minutes."""
    days, _, clock = text.rpartition("-") if "-" in text else ("0", "", text)
    parts = clock.split(":")
    try:
        numbers = [int(part) for part in parts]
        day_count = int(days)
    except ValueError:
        numbers, day_count = [], 0
    if not numbers or len(numbers) > 3 or min(numbers + [day_count]) < 0:
        raise ConfigError(f"invalid --time '{text}'; pass minutes (e.g. 120), HH:MM:SS or D-HH:MM:SS")
    if len(numbers) == 1:
        seconds = numbers[0] * 60
    else:
        numbers = [0] * (3 - len(numbers)) + numbers
        seconds = numbers[0] * 3600 + numbers[1] * 60 + numbers[2]
    minutes = math.ceil((seconds + day_count * 86400) / 60)
    if minutes < 1:
        raise ConfigError(f"invalid --time '{text}'; the limit must be at least one minute")
    return minutes


def _parse_gigabytes(text: str) -> int:
    """Parse a memory size such as 32G, 32GB or 32000M; return whole GiB, rounded up."""
    units = {"": 1 / 1024, "k": 1 / 1024**2, "m": 1 / 1024, "g": 1, "t": 1024}
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    number, unit = (value[:-1], value[-1]) if value and value[-1] in units else (value, "m")
    try:
        gigabytes = float(number) * units[unit]
    except ValueError:
        raise ConfigError(f"invalid --mem '{text}'; pass a size such as 32G or 16000M") from None
    if gigabytes <= 0:
        raise ConfigError(f"invalid --mem '{text}'; pass a positive size such as 32G")
    return math.ceil(gigabytes)


def sweep(
    grid_file: Annotated[Path, typer.Argument(help="TOML grid file: axes as lists (method, backbone, weights, category, layers, seed), fixed options as scalars, method options under \\[options].")],
    runner: Annotated[str, typer.Option("--runner", help="Where runs execute: local (worker processes here), slurm (a Slurm job array through submitit) or submitit-local (the Slurm code path on this machine, to test a grid before submitting).")] = "local",
    jobs: JobsOption = None,
    force: ForceOption = False,
    retry_failed: RetryFailedOption = False,
    dry_run: DryRunOption = False,
    runs_dir: RunsDirOption = Path("runs"),
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition.")] = None,
    gpus_per_job: Annotated[int, typer.Option("--gpus-per-job", min=0, help="GPUs per Slurm job.")] = 1,
    cpus_per_job: Annotated[int | None, typer.Option("--cpus-per-job", min=1, help="CPU cores per Slurm job. Default: the partition's.")] = None,
    mem: Annotated[str | None, typer.Option("--mem", help="Memory per Slurm job, e.g. 32G. Default: the partition's.")] = None,
    time_limit: Annotated[str, typer.Option("--time", help="Time limit per Slurm job: minutes, HH:MM:SS or D-HH:MM:SS.")] = "240",
    max_parallel: Annotated[int, typer.Option("--max-parallel", min=1, help="Slurm array tasks running at once.")] = 16,
    runs_per_job: Annotated[int, typer.Option("--runs-per-job", min=1, help="Runs per Slurm array task; more amortise the start-up of each job (about 10 s).")] = 1,
    log_dir: Annotated[Path | None, typer.Option("--log-dir", help="Folder for the submitit job logs, one set per job. Default: RUNS_DIR/slurm.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until every submitted job has ended (always for submitit-local).")] = False,
    stale_after: StaleAfterOption = 600.0,
    heartbeat: HeartbeatOption = 30.0,
    db: DbOption = None,
) -> None:
    """Run the grid that a TOML file describes, locally or as a Slurm job array."""
    from bench.runners.grid import load_grid_file

    if runner not in RUNNERS:
        raise ConfigError(f"unknown --runner '{runner}'; choose one of {', '.join(RUNNERS)}")
    spec = load_grid_file(grid_file)
    options = QueueOptions(db=db, runs_dir=runs_dir, force=force, retry_failed=retry_failed, dry_run=dry_run,
                           jobs=jobs, stale_after_s=stale_after, heartbeat_s=heartbeat)

    if runner == "local":
        cluster_options = {"--partition": partition, "--cpus-per-job": cpus_per_job, "--mem": mem, "--log-dir": log_dir}
        for name, value in cluster_options.items():
            if value is not None:
                raise ConfigError(f"{name} applies to --runner slurm or submitit-local, not to --runner local")
        if dry_run:
            _print_dry_run(spec, options)
            return
        run_locally(spec, options)
        return

    from bench.runners.slurm import ClusterOptions, submit_grid

    if jobs is not None:
        raise ConfigError("--jobs applies to --runner local; on a cluster use --max-parallel and --gpus-per-job")
    cluster = ClusterOptions(
        cluster="slurm" if runner == "slurm" else "local", partition=partition, gpus_per_job=gpus_per_job,
        cpus_per_job=cpus_per_job, mem_gb=_parse_gigabytes(mem) if mem else None,
        time_min=_parse_minutes(time_limit), max_parallel=max_parallel, runs_per_job=runs_per_job,
        log_dir=(log_dir or runs_dir / "slurm").resolve(), wait=wait or runner == "submitit-local",
    )
    if dry_run:
        _print_dry_run(spec, options)
        return
    submit_grid(spec, options, cluster)
