"""`bench status`: runs per status and axis, active workers and an ETA, read from the database."""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

console = Console()

# Axes shown per row of the table: (label, runs column).
STATUS_AXES = (("method", "method"), ("weights", "weights_name"), ("backbone", "backbone"), ("dataset", "dataset"),
               ("category", "category"), ("layers", "layers"), ("seed", "seed"))


@dataclass
class GridStatus:
    """Counts of runs per status, overall and per axis value, with what is needed for an ETA.

    `in_progress` counts running rows whose worker is alive, `abandoned` those whose worker is
    gone (the next `bench run` or `bench sweep` of their grid reclaims them). `workers` are the
    (host, pid) pairs of live workers.
    """

    totals: Counter = field(default_factory=Counter)
    per_axis: dict[str, dict[str, Counter]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(Counter)))
    in_progress: int = 0
    abandoned: int = 0
    workers: set[tuple[str, int]] = field(default_factory=set)
    mean_wall_time_s: float | None = None

    @property
    def remaining(self) -> int:
        """Runs not yet finished: pending and running."""
        return self.totals["pending"] + self.totals["running"]

    def eta_s(self) -> float | None:
        """Estimate the seconds until every remaining run is done; None without done runs or live workers."""
        if self.mean_wall_time_s is None or self.in_progress == 0:
            return None
        return self.remaining * self.mean_wall_time_s / self.in_progress


def read_status(engine, stale_after_s: float) -> GridStatus:
    """Count every row of `runs` per status and axis value."""
    from bench.runners.environment import host_name
    from bench.runners.runqueue import RUNNING, find_abandonment, utc_now
    from bench.schema.models import Run

    status = GridStatus()
    wall_times = []
    host, now = host_name(), utc_now()
    columns = [getattr(Run, column) for _, column in STATUS_AXES]
    with engine.connect() as connection:
        rows = connection.execute(select(Run.id, Run.status, Run.attempts, Run.host, Run.pid, Run.heartbeat_at,
                                         Run.wall_time_s, *columns)).all()
    for row in rows:
        status.totals[row.status] += 1
        for label, column in STATUS_AXES:
            status.per_axis[label][str(getattr(row, column))][row.status] += 1
        if row.status == "done" and row.wall_time_s is not None:
            wall_times.append(row.wall_time_s)
        if row.status == RUNNING:
            if find_abandonment(row, host, now, stale_after_s, None) is None:
                status.in_progress += 1
                status.workers.add((row.host, row.pid))
            else:
                status.abandoned += 1
    if wall_times:
        status.mean_wall_time_s = sum(wall_times) / len(wall_times)
    return status


def _plural(number: int, word: str, plural: str | None = None) -> str:
    return f"{number} {word if number == 1 else plural or word + 's'}"


def _format_duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def render_status(status: GridStatus, url: str, target: Console) -> None:
    """Print the totals, workers, ETA and the per-axis table."""
    from bench.terminal import print_table

    states = ("done", "running", "failed", "pending")
    total = sum(status.totals.values())
    counts = ", ".join(f"{status.totals[state]} {state}" for state in states)
    target.print(f"{url}: {_plural(total, 'run')}: {counts}", highlight=False, soft_wrap=True)

    workers = len(status.workers)
    # One bench process runs all the workers of its --jobs, so processes are counted, not workers.
    line = (f"workers: {_plural(status.in_progress, 'run')} in progress, claimed by "
            f"{_plural(workers, 'bench process', 'bench processes')}")
    if status.abandoned:
        line += (f"; {_plural(status.abandoned, 'running run')} lost {'its' if status.abandoned == 1 else 'their'} "
                 "worker and will run again with the next bench run or sweep of the grid")
    target.print(line, highlight=False, soft_wrap=True)

    eta = status.eta_s()
    if status.remaining == 0:
        target.print("ETA: nothing left to run", highlight=False, soft_wrap=True)
    elif eta is None:
        reason = "no run is done yet" if status.mean_wall_time_s is None else "no active workers"
        target.print(f"ETA: unknown ({reason})", highlight=False, soft_wrap=True)
    else:
        target.print(f"ETA: {_format_duration(eta)} (estimate: {status.remaining} runs left x "
                     f"{status.mean_wall_time_s:.1f} s mean wall time / {status.in_progress} in progress)",
                     highlight=False, soft_wrap=True)
    if not total:
        return

    table = Table(box=box.SIMPLE)
    for column in ("axis", "value", *states):
        table.add_column(column, no_wrap=True, justify="right" if column in states else "left")
    for label, _ in STATUS_AXES:
        values = status.per_axis[label]
        for value in sorted(values):
            table.add_row(label, value, *(str(values[value][state]) for state in states))
        table.add_section()
    print_table(target, table)


def status(
    db: Annotated[str | None, typer.Option("--db", envvar="BENCH_DB", help="Results database: a SQLite file path or an SQLAlchemy URL. Default: ./bench.db.")] = None,
    stale_after: Annotated[float, typer.Option("--stale-after", min=1, help="Seconds without a heartbeat after which a running run of another host counts as abandoned.")] = 600.0,
) -> None:
    """Show done, running, failed and pending runs per axis, the active workers and an ETA."""
    from bench.schema.db import open_existing_engine

    engine = open_existing_engine(db)
    render_status(read_status(engine, stale_after), engine.url.render_as_string(hide_password=True), console)
