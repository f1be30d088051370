"""The worker: claims runs from the queue and executes each one in its own child process.

Process model: the worker is one process (`bench run`, or one Slurm job task) with a
single-threaded loop that imports torch and anomalib once. It forks one child per run, so a
crash, segfault or out-of-memory kill ends only that run, which the worker then marks failed
with the exit signal, and it heartbeats each claim while the child works. Children die with the
worker (PR_SET_PDEATHSIG), so a killed worker leaves running rows with a dead pid, which the next
worker reclaims.

A child forked after its parent ran OpenMP code hangs in libgomp's thread pool, which the fork
did not copy. So the worker forks directly only while it has no more threads than when this
module was imported (the imports themselves start a few, which are fork-safe); otherwise, e.g.
after registering weights built a model, it forks runs from multiprocessing's fork server, a
helper that imports the same modules once more (about 5 s) and never computes. The worker closes
its database connections before a direct fork, because SQLite and libpq connections must not be
used on both sides of a fork.
"""

import ctypes
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from sqlalchemy import select

# The fork server is a fresh interpreter that never imports bench.cli, so it needs bench.cli's
# filters for these import-time notices of timm and anomalib.
warnings.filterwarnings("ignore", message="Importing from timm.models.layers is deprecated")
warnings.filterwarnings("ignore", message="The anomalib.models.components.dinov2 package is deprecated")

# Imported here, before any fork, so that every child starts with torch and anomalib loaded.
from bench.runners.config import RunConfig  # noqa: E402
from bench.runners.local import DONE, FAILED, LOST, execute  # noqa: E402
from bench.runners.runqueue import Claim, claim_next, heartbeat, mark_failed, pid_alive, release  # noqa: E402
from bench.schema.db import open_engine, run_with_retry, session_factory  # noqa: E402
from bench.schema.models import Run  # noqa: E402
from bench.methods import METHOD_NAMES, get_method  # noqa: E402

# Every adapter too: `bench.methods` loads them on first use, which would repeat in each child.
for _method in METHOD_NAMES:
    get_method(_method)

logger = logging.getLogger(__name__)

# Module preloaded by the fork server; importing it imports torch, timm and anomalib.
PRELOAD = "bench.runners.worker"
# Seconds that stopped children get to exit after SIGTERM before SIGKILL.
TERMINATE_GRACE_S = 10.0
# Seconds between checks for finished children and for a stop request.
POLL_S = 0.25
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker runs its share of a grid.

    `gpus` are CUDA device ids handed out one per job slot (empty on CPU-only machines);
    `heartbeat_s` is the interval between heartbeats and `stale_after_s` the heartbeat age after
    which a running row of another host counts as abandoned.
    """

    db_url: str
    runs_dir: Path
    jobs: int = 1
    gpus: tuple[str, ...] = ()
    batch_size: int = 8
    save_maps: bool = True
    heartbeat_s: float = 30.0
    stale_after_s: float = 600.0


@dataclass
class WorkerReport:
    """What one worker did: runs started, finished per outcome, and released on stop."""

    started: int = 0
    done: int = 0
    failed: int = 0
    lost: int = 0
    released: int = 0
    stop_reason: str | None = None
    failures: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class _Slot:
    index: int
    gpu: str | None
    process: BaseProcess | None = None
    receiver: multiprocessing.connection.Connection | None = None
    claim: Claim | None = None
    label: str = ""
    number: int = 0
    started_at: float = 0.0
    message: dict | None = None


def visible_gpus() -> list[str]:
    """Return the CUDA device ids this process may use: $CUDA_VISIBLE_DEVICES, else every device found."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return [device.strip() for device in value.split(",") if device.strip() and device.strip() != "-1"]
    import torch

    # device_count() asks NVML first, which does not initialise CUDA in this process; a CUDA
    # context created before fork would be unusable in the children.
    return [str(index) for index in range(torch.cuda.device_count())]


def thread_count() -> int | None:
    """Return the number of threads of this process; None where /proc is missing."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


# NOTE: this assumes that no OpenMP code ran before this module was imported; `bench run`,
# `bench sweep` and the Slurm job task import it before they resolve any weights.
IMPORT_THREADS = thread_count()


def run_process_context() -> multiprocessing.context.BaseContext:
    """Return the context for run processes: fork while no thread started since the imports, else the fork server."""
    threads = thread_count()
    if threads is not None and IMPORT_THREADS is not None and threads <= IMPORT_THREADS:
        return multiprocessing.get_context("fork")
    multiprocessing.set_forkserver_preload([PRELOAD])
    return multiprocessing.get_context("forkserver")


def describe_exit(exitcode: int | None, log_hint: str) -> str:
    """Return the error text for a run process that ended without storing a result."""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        text = f"run process was killed by signal {number} ({name})"
        if number == signal.SIGKILL:
            text += "; the kernel's out-of-memory killer sends SIGKILL, so check the memory limit"
        return text + log_hint
    return f"run process exited with code {exitcode} before storing a result" + log_hint


def _die_with_worker(worker_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent (worker or fork server) exits; exit if the worker is gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        # NOTE: off Linux there is no parent-death signal; a killed worker's run process then finishes its run.
        logger.debug("prctl(PR_SET_PDEATHSIG) is not available")
    if not pid_alive(worker_pid):
        os._exit(1)


def _child_main(sender: multiprocessing.connection.Connection, settings: WorkerSettings, claim: Claim,
                config_values: dict, gpu: str | None, worker_pid: int, show_progress: bool,
                single_thread: bool) -> None:
    """Execute one claimed run in the forked child and send its outcome to the worker."""
    _die_with_worker(worker_pid)
    # Ctrl-C and Slurm's preemption signal reach every process of the group or job step; the
    # worker alone decides how children stop. A forked child would otherwise run the worker's
    # handlers, including submitit's requeue on SIGUSR2.
    for number in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if single_thread:
        import torch

        # At least as many runs as cores: one thread per run avoids oversubscription.
        torch.set_num_threads(1)

    engine = open_engine(settings.db_url, migrate=False)
    sessions = session_factory(engine)
    console = Console() if show_progress else Console(file=io.StringIO())
    try:
        config = RunConfig.from_dict(config_values)
        outcome = execute(config, sessions, settings.runs_dir, console, batch_size=settings.batch_size,
                          save_anomaly_maps=settings.save_maps, claim=claim)
        message = {
            "status": outcome.status,
            "error": outcome.error,
            "metrics": [(metric.name, metric.value) for metric in outcome.metrics],
        }
    except Exception as error:
        # Failures before the run starts (dataset gone, weights changed): store them on the row.
        text = f"{type(error).__name__}: {error}"
        logger.exception("run %d (%s) failed before starting", claim.run_id, claim.config_hash[:16])
        stored = mark_failed(sessions, claim, text)
        message = {"status": FAILED if stored else LOST, "error": text, "metrics": []}
    sender.send(message)
    sender.close()
    engine.dispose()


class Worker:
    """Runs the claimable runs among `run_ids` with up to `settings.jobs` child processes at once."""

    def __init__(self, settings: WorkerSettings, run_ids: list[int], console: Console, total: int | None = None,
                 handle_signals: bool = True) -> None:
        self.settings = settings
        self.run_ids = run_ids
        self.console = console
        self.total = total if total is not None else len(run_ids)
        self.handle_signals = handle_signals
        self.engine = open_engine(settings.db_url)
        self.sessions = session_factory(self.engine)
        self.report = WorkerReport()
        self.own_claims: set[tuple[int, int]] = set()
        gpus = list(settings.gpus)
        self.slots = [_Slot(index, gpus[index % len(gpus)] if gpus else None) for index in range(settings.jobs)]
        cores = os.cpu_count() or 1
        self.single_thread = settings.jobs > 1 and cores // settings.jobs <= 1
        self._stop_requested: str | None = None
        self._fork_server_logged = False

    def request_stop(self, reason: str) -> None:
        """Stop claiming, end running children and release their runs; safe to call from a signal handler."""
        if self._stop_requested is None:
            self._stop_requested = reason

    def _on_signal(self, number: int, _frame) -> None:
        name = "Ctrl-C" if number == signal.SIGINT else signal.Signals(number).name
        if self._stop_requested is None:
            self.console.print(f"[yellow]{name}: stopping; runs in progress go back to pending[/yellow]")
        self.request_stop(name)

    def run(self) -> WorkerReport:
        """Claim and execute runs until none is left or a stop is requested; return the report."""
        previous = {}
        if self.handle_signals:
            for number in (signal.SIGINT, signal.SIGTERM):
                previous[number] = signal.signal(number, self._on_signal)
        logger.info("worker pid %d started: %d jobs, %d runs in its grid", os.getpid(), self.settings.jobs,
                    len(self.run_ids))
        try:
            self._loop()
        finally:
            self._shutdown()
            for number, handler in previous.items():
                signal.signal(number, handler)
        self.report.stop_reason = self._stop_requested
        logger.info("worker pid %d stopped: %d done, %d failed, %d released", os.getpid(), self.report.done,
                    self.report.failed, self.report.released)
        return self.report

    def _loop(self) -> None:
        exhausted = False
        next_heartbeat = time.monotonic() + self.settings.heartbeat_s
        while self._stop_requested is None:
            if not exhausted:
                exhausted = not self._fill_slots()
            active = [slot for slot in self.slots if slot.process is not None]
            if not active:
                return

            timeout = max(0.0, min(POLL_S, next_heartbeat - time.monotonic()))
            waitables = [slot.process.sentinel for slot in active]
            waitables += [slot.receiver for slot in active if slot.receiver is not None]
            multiprocessing.connection.wait(waitables, timeout)
            for slot in active:
                self._receive(slot)
                if not slot.process.is_alive():
                    self._finish(slot)

            if time.monotonic() >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = time.monotonic() + self.settings.heartbeat_s
                # A run of another worker may have become reclaimable since the last look.
                exhausted = False

    def _fill_slots(self) -> bool:
        """Start a run in every free slot; return False when no claimable run was left."""
        for slot in self.slots:
            if slot.process is not None:
                continue
            if self._stop_requested is not None:
                return True
            claim = claim_next(self.sessions, self.run_ids, self.settings.stale_after_s, self.own_claims)
            if claim is None:
                return False
            # The slot owns the claim from here on, so a stop before the fork still releases it.
            slot.claim = claim
            self.own_claims.add((claim.run_id, claim.attempt))
            self._start(slot, claim)
        return True

    def _start(self, slot: _Slot, claim: Claim) -> None:
        with self.sessions() as session:
            config_values = run_with_retry(
                lambda: session.scalar(select(Run.config).where(Run.id == claim.run_id)), "reading a run configuration"
            )
        config = RunConfig.from_dict(config_values)

        self.report.started += 1
        slot.number = self.report.started
        slot.label = f"[{slot.number}/{max(self.total, slot.number)}]"
        slot.message = None
        slot.started_at = time.monotonic()
        gpu_text = f", GPU {slot.gpu}" if slot.gpu is not None else ""
        self.console.print(f"{slot.label} start {escape(config.describe())} (run {claim.run_id}, "
                           f"attempt {claim.attempt}{gpu_text})", highlight=False, soft_wrap=True)
        logger.info("starting run %d (%s) in slot %d", claim.run_id, claim.config_hash[:16], slot.index)

        context = run_process_context()
        if context.get_start_method() == "fork":
            # No database connection may cross the fork; the worker reconnects on its next query.
            self.engine.dispose()
        elif not self._fork_server_logged:
            self._fork_server_logged = True
            logger.info("worker has %s threads, %s after its imports; forking runs from the fork server",
                        thread_count(), IMPORT_THREADS)
        receiver, sender = context.Pipe(duplex=False)
        show_progress = self.settings.jobs == 1
        process = context.Process(
            target=_child_main,
            args=(sender, self.settings, claim, config_values, slot.gpu, os.getpid(), show_progress,
                  self.single_thread),
            name=f"bench-run-{claim.run_id}",
        )
        process.start()
        sender.close()
        slot.process = process
        slot.receiver = receiver

    def _receive(self, slot: _Slot) -> None:
        if slot.receiver is None or not slot.receiver.poll():
            return
        try:
            slot.message = slot.receiver.recv()
        except EOFError:
            pass
        slot.receiver.close()
        slot.receiver = None

    def _log_hint(self, claim: Claim) -> str:
        log_path = (self.settings.runs_dir / claim.config_hash[:16] / "run.log").resolve()
        return f"; see {log_path}"

    def _row_status(self, run_id: int) -> str | None:
        with self.sessions() as session:
            return run_with_retry(lambda: session.scalar(select(Run.status).where(Run.id == run_id)), "reading a run")

    def _finish(self, slot: _Slot) -> None:
        """Record the outcome of a slot whose child has exited, and free the slot."""
        slot.process.join()
        self._receive(slot)
        claim, message = slot.claim, slot.message
        seconds = time.monotonic() - slot.started_at
        if message is None:
            error = describe_exit(slot.process.exitcode, self._log_hint(claim))
            if mark_failed(self.sessions, claim, error):
                message = {"status": FAILED, "error": error, "metrics": []}
            else:
                # The child stored its result before it died, or another worker holds the row now.
                status = self._row_status(claim.run_id)
                message = {"status": status if status in (DONE, FAILED) else LOST, "error": error, "metrics": []}
        self._print_outcome(slot, message, seconds)
        slot.process.close()
        slot.process = None
        slot.claim = None
        slot.message = None

    def _print_outcome(self, slot: _Slot, message: dict, seconds: float) -> None:
        claim = slot.claim
        status = message["status"]
        if status == DONE:
            self.report.done += 1
            metrics_text = ", ".join(f"{name} {100 * value:.1f}" if value is not None else f"{name} NULL"
                                     for name, value in message["metrics"])
            self.console.print(f"{slot.label} done (run {claim.run_id}, {seconds:.1f} s): {metrics_text}",
                               highlight=False, soft_wrap=True)
            logger.info("run %d (%s) done in %.1f s", claim.run_id, claim.config_hash[:16], seconds)
        elif status == FAILED:
            self.report.failed += 1
            self.report.failures.append((claim.run_id, message["error"]))
            self.console.print(f"{slot.label} [red]failed[/red] (run {claim.run_id}): {escape(str(message['error']))}",
                               highlight=False, soft_wrap=True)
        else:
            self.report.lost += 1
            self.console.print(f"{slot.label} [yellow]discarded[/yellow] (run {claim.run_id}): another worker "
                               "reclaimed the run", highlight=False, soft_wrap=True)

    def _heartbeat(self) -> None:
        claims = [slot.claim for slot in self.slots if slot.claim is not None]
        lost = {(claim.run_id, claim.attempt) for claim in heartbeat(self.sessions, claims)}
        for slot in self.slots:
            if slot.claim is not None and (slot.claim.run_id, slot.claim.attempt) in lost and slot.process is not None:
                # Another worker runs it now; only one result can be stored, so stop this copy.
                slot.process.kill()

    def _shutdown(self) -> None:
        """End running children and put their runs back to pending."""
        active = [slot for slot in self.slots if slot.process is not None]
        for slot in active:
            if slot.process.is_alive():
                slot.process.terminate()
        deadline = time.monotonic() + TERMINATE_GRACE_S
        for slot in active:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()

        for slot in self.slots:
            if slot.claim is None:
                continue
            self._receive(slot)
            seconds = time.monotonic() - slot.started_at
            if slot.message is not None:
                # The run finished while the worker was stopping; its result is stored.
                self._print_outcome(slot, slot.message, seconds)
            elif release(self.sessions, slot.claim, self._stop_requested or "worker stopped"):
                self.report.released += 1
                self.console.print(f"{slot.label} released (run {slot.claim.run_id}) back to pending",
                                   highlight=False, soft_wrap=True)
            if slot.process is not None:
                slot.process.close()
            slot.process = None
            slot.claim = None
            slot.message = None
