"""Cluster runner: a Slurm job array through submitit, sharing the database with every job.

Each array task runs the same worker as `bench run` on its share of the run ids, so claims,
heartbeats and reclaims work across nodes as they do across local processes. On preemption or
time-out Slurm sends SIGUSR2 (submitit's `--signal`): the worker puts its runs back to
pending, then submitit calls `GridJob.checkpoint` and requeues the task.
"""

import logging
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from bench.errors import ConfigError
from bench.runners.grid import GridSpec

logger = logging.getLogger(__name__)

# Seconds between Slurm's preemption signal and its kill (submitit's `--signal=USR2@N`).
SIGNAL_DELAY_S = 120


@dataclass(frozen=True)
class ClusterOptions:
    """Resources and limits of the job array; `cluster` is "slurm" or "local" (submitit's local executor)."""

    cluster: str
    partition: str | None
    gpus_per_job: int
    cpus_per_job: int | None
    mem_gb: int | None
    time_min: int
    max_parallel: int
    runs_per_job: int
    log_dir: Path
    wait: bool


def executor_parameters(options: ClusterOptions) -> dict:
    """Return submitit AutoExecutor parameters; those prefixed with slurm_ apply only on Slurm."""
    parameters = {
        "name": "bench",
        "timeout_min": options.time_min,
        "gpus_per_node": options.gpus_per_job,
        "tasks_per_node": 1,
        "nodes": 1,
        "slurm_array_parallelism": options.max_parallel,
        "slurm_signal_delay_s": SIGNAL_DELAY_S,
        # Let Slurm requeue the job itself when it preempts it with PreemptMode=REQUEUE.
        "slurm_additional_parameters": {"requeue": True},
    }
    if options.partition:
        parameters["slurm_partition"] = options.partition
    if options.cpus_per_job:
        parameters["cpus_per_task"] = options.cpus_per_job
    if options.mem_gb:
        parameters["mem_gb"] = options.mem_gb
    return parameters


def make_executor(options: ClusterOptions):
    """Build the submitit executor that writes its job files and logs under `options.log_dir`."""
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=options.log_dir, cluster=options.cluster)
    except RuntimeError as error:
        # submitit raises RuntimeError when srun is not on PATH.
        raise ConfigError(f"cannot submit to Slurm from this machine ({error}); run bench sweep on a Slurm "
                          "login node, or test the grid here with --runner submitit-local") from None
    executor.update_parameters(**executor_parameters(options))
    options.log_dir.mkdir(parents=True, exist_ok=True)
    return executor


class GridJob:
    """The function a job array task runs: a worker over its run ids, checkpointable by submitit."""

    def __init__(self, db_url: str, runs_dir: Path, batch_size: int, save_maps: bool, heartbeat_s: float,
                 stale_after_s: float) -> None:
        self.db_url = db_url
        self.runs_dir = runs_dir
        self.batch_size = batch_size
        self.save_maps = save_maps
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self._worker = None
        self._preempted_by: int | None = None

    def __getstate__(self) -> dict:
        # The live worker (engine, child processes) stays in the task that owns it.
        state = dict(self.__dict__)
        state["_worker"] = None
        state["_preempted_by"] = None
        return state

    def _on_preemption(self, number: int, _frame) -> None:
        self._preempted_by = number
        logger.warning("job task pid %d received %s: stopping its runs", os.getpid(), signal.Signals(number).name)
        if self._worker is not None:
            self._worker.request_stop("preempted")

    def __call__(self, run_ids: list[int]) -> dict:
        """Execute the claimable runs among `run_ids`; return the worker's report as a dict."""
        import submitit

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        logging.getLogger("bench").setLevel(logging.INFO)

        from bench.runners.worker import Worker, WorkerSettings, visible_gpus

        gpus = visible_gpus()
        settings = WorkerSettings(
            db_url=self.db_url, runs_dir=self.runs_dir, jobs=max(1, min(len(gpus), len(run_ids))), gpus=tuple(gpus),
            batch_size=self.batch_size, save_maps=self.save_maps, heartbeat_s=self.heartbeat_s,
            stale_after_s=self.stale_after_s,
        )
        logger.info("job task pid %d on %s: runs %s, GPUs %s", os.getpid(), os.uname().nodename, run_ids,
                    ",".join(gpus) or "none")
        self._worker = Worker(settings, run_ids, Console(), handle_signals=False)

        # submitit's handler checkpoints, requeues and exits from inside the signal handler, which
        # can interrupt a database call or a finalizer that swallows the exit. So the signal only
        # stops the worker here, and submitit's handler runs once the runs are back to pending.
        preemption_signal = submitit.JobEnvironment._usr_sig()
        submitit_handler = signal.signal(preemption_signal, self._on_preemption)
        try:
            report = self._worker.run()
        finally:
            signal.signal(preemption_signal, submitit_handler)
        if self._preempted_by is not None and callable(submitit_handler):
            submitit_handler(self._preempted_by, None)
        return asdict(report)

    def checkpoint(self, run_ids: list[int]):
        """Return the submission that requeues this task after preemption or time-out.

        submitit calls it from its SIGUSR2 handler, which `__call__` runs once the worker has put
        its runs back to pending.
        """
        import submitit

        logger.warning("job task pid %d preempted or timed out; requeueing runs %s", os.getpid(), run_ids)
        return submitit.helpers.DelayedSubmission(GridJob(self.db_url, self.runs_dir, self.batch_size, self.save_maps,
                                                          self.heartbeat_s, self.stale_after_s), run_ids)


def submit_grid(spec: GridSpec, options, cluster: ClusterOptions) -> None:
    """Queue the grid, submit one array task per `runs_per_job` runs and, with `wait`, wait for them."""
    import typer
    from submitit.core.utils import UncompletedJobError

    from bench.runners.cli import console, print_grid_summary, queue_grid
    from bench.runners.grid import expand
    from bench.runners.runqueue import DONE, FAILED, split_running
    from bench.schema.db import database_url, session_factory

    url = database_url(options.db)
    if cluster.cluster == "slurm" and url.startswith("sqlite"):
        # NOTE: SQLite's WAL needs shared memory, which network file systems do not provide.
        console.print("[yellow]warning:[/yellow] SQLite works only when every job runs on this host; pass a "
                      "PostgreSQL URL with --db for a cluster", highlight=False, soft_wrap=True)
    configs = expand(spec)
    # The executor is built before queueing, so that a machine without Slurm fails with nothing queued.
    executor = make_executor(cluster)
    queued, engine, _ = queue_grid(spec, options, configs)

    active, _ = split_running(session_factory(engine), [run.run_id for run in queued], options.stale_after_s)
    skipped = {DONE} if not options.force else set()
    skipped |= {FAILED} if not options.retry_failed else set()
    run_ids = [run.run_id for run in queued if run.status not in skipped and run.run_id not in active]
    all_ids = [run.run_id for run in queued]
    if not run_ids:
        console.print("nothing to submit", highlight=False, soft_wrap=True)
        print_grid_summary(engine, all_ids, options.stale_after_s)
        return

    chunks = [run_ids[start:start + cluster.runs_per_job] for start in range(0, len(run_ids), cluster.runs_per_job)]
    job = GridJob(url, options.runs_dir.resolve(), spec.batch_size, spec.save_maps, options.heartbeat_s,
                  options.stale_after_s)
    try:
        jobs = executor.map_array(job, chunks)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        # submitit raises FailedSubmissionError (a RuntimeError) when sbatch rejects the job.
        raise ConfigError(f"job submission failed: {error}; the runs stay pending in the database, so submit "
                          "again once it is fixed") from None
    job_ids = sorted({submitted.job_id.split("_")[0] for submitted in jobs})
    console.print(f"submitted {len(jobs)} array tasks ({len(run_ids)} runs, at most {cluster.max_parallel} at once) "
                  f"as job {', '.join(job_ids)}; logs in {cluster.log_dir}", highlight=False, soft_wrap=True)
    logger.info("submitted %d tasks for %d runs as job %s", len(jobs), len(run_ids), ", ".join(job_ids))
    if not cluster.wait:
        console.print("follow the grid with `bench status`", highlight=False, soft_wrap=True)
        return

    errors = 0
    for submitted in jobs:
        try:
            report = submitted.result()
            logger.info("job %s ended: %s", submitted.job_id, report)
        except UncompletedJobError as error:
            # FailedJobError (a subclass) carries the task's traceback; its last line names the error.
            errors += 1
            logger.error("job %s failed: %s", submitted.job_id, error)
            console.print(f"[red]job {submitted.job_id} failed[/red]: {str(error).strip().splitlines()[-1]}; "
                          f"log in {submitted.paths.stderr}", highlight=False, soft_wrap=True)
    failed, left = print_grid_summary(engine, all_ids, options.stale_after_s)
    if left:
        console.print(f"{left} runs are still pending or running after every job ended; run the same bench sweep "
                      "again to submit them", highlight=False, soft_wrap=True)
    if failed or errors or left:
        raise typer.Exit(1)
