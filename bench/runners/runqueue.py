"""The run queue in the `runs` table: states, atomic claims, heartbeats and reclaims.

A run's row goes pending -> running -> done or failed. A worker claims a row with one
compare-and-set UPDATE whose WHERE clause repeats the status and `attempts` it read, and the
claim increments `attempts`. So of two workers that read the same row, exactly one matches,
on SQLite (writers are serialised) and on PostgreSQL (the second UPDATE re-checks the row after
the first commits). Every later write of the claimer (heartbeat, result, release) repeats the
same check, so a worker whose row was reclaimed cannot overwrite the new claimer's row.

A running row is abandoned, and may be claimed again, when its worker ran on this host and
its pid is gone, or when its heartbeat is older than the stale timeout (any host).
"""

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Update, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bench.runners.environment import host_name
from bench.runners.grid import PlannedRun
from bench.schema.db import run_with_retry
from bench.schema.models import Metric, Run

logger = logging.getLogger(__name__)

PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
STATES = (DONE, RUNNING, FAILED, PENDING)

# Rows per statement for `IN (...)` lists and inserts; below SQLite's 32766 bound parameters.
CHUNK = 500


def utc_now() -> datetime:
    """Return the current UTC time without tzinfo, as the DateTime columns store it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _chunks(values: Sequence, size: int = CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one running row; `attempt` is the row's `attempts` after the claim."""

    run_id: int
    config_hash: str
    attempt: int
    host: str
    pid: int

    def matches(self) -> tuple:
        """Return the WHERE conditions that hold only while this claim owns the row."""
        return (Run.id == self.run_id, Run.status == RUNNING, Run.attempts == self.attempt)


@dataclass(frozen=True)
class QueuedRun:
    """A grid configuration's row after queueing: its id and its status before this command."""

    planned: PlannedRun
    run_id: int
    status: str
    error: str | None


def _insert_missing(session: Session, rows: list[dict]) -> None:
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        for chunk in _chunks(rows):
            # A concurrent command may insert the same configuration first; its row wins.
            session.execute(dialect_insert(Run).on_conflict_do_nothing(index_elements=["config_hash"]), list(chunk))
        return

    # Other databases: one savepoint per row, so a duplicate inserted concurrently is skipped.
    for row in rows:
        try:
            with session.begin_nested():
                session.execute(insert(Run), [row])
        except IntegrityError:
            logger.info("run %s was queued concurrently by another command", row["config_hash"][:16])


def enqueue(sessions: sessionmaker[Session], planned: list[PlannedRun], force: bool = False,
            retry_failed: bool = False) -> list[QueuedRun]:
    """Insert a pending row for every planned run without one, and return every run's row.

    Done rows stay done unless `force`, failed rows stay failed unless `retry_failed`; such rows
    go back to pending, and they keep their metrics until the new result replaces them.
    The returned status is the one before this call, so callers can report what was already done.
    """
    hashes = [run.config_hash for run in planned]
    inserted = []

    def transaction() -> list[QueuedRun]:
        with sessions() as session, session.begin():
            existing = {}
            for chunk in _chunks(hashes):
                for run_id, config_hash, status, error in session.execute(
                    select(Run.id, Run.config_hash, Run.status, Run.error).where(Run.config_hash.in_(chunk))
                ):
                    existing[config_hash] = (run_id, status, error)
            missing = [run.pending_row() for run in planned if run.config_hash not in existing]
            if missing:
                _insert_missing(session, missing)
            inserted[:] = missing

            requeue = [FAILED] if retry_failed else []
            requeue += [DONE] if force else []
            if requeue:
                for chunk in _chunks(hashes):
                    session.execute(
                        update(Run)
                        .where(Run.config_hash.in_(chunk), Run.status.in_(requeue))
                        .values(status=PENDING, host=None, pid=None, heartbeat_at=None)
                    )

            ids = {}
            for chunk in _chunks(hashes):
                ids.update(session.execute(select(Run.config_hash, Run.id).where(Run.config_hash.in_(chunk))).all())
        queued = []
        for run in planned:
            _, status, error = existing.get(run.config_hash, (None, PENDING, None))
            queued.append(QueuedRun(run, ids[run.config_hash], status, error))
        return queued

    queued = run_with_retry(transaction, "queueing the grid")
    logger.info("queued %d runs (%d new)", len(queued), len(inserted))
    return queued


def pid_alive(pid: int | None) -> bool:
    """Return whether a process with this id exists on this host and is not a zombie."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # The state is field 3 of /proc/PID/stat, and Z marks a zombie, which has exited but is not yet reaped.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Abandonment:
    """Why a running row's worker is gone: its process ended (`stale` False) or its heartbeat stopped."""

    stale: bool
    reason: str


def find_abandonment(row, host: str, now: datetime, stale_after_s: float,
                     own_claims: set[tuple[int, int]] | None) -> Abandonment | None:
    """Return why a running row's worker is gone, or None while it may still be working.

    A worker passes the (run id, attempt) pairs it holds as `own_claims`, so that a row with its
    own pid but not its claim counts as left by an earlier process with the same pid. Readers
    that are not workers pass None.
    """
    if row.host == host:
        own_pid = own_claims is not None and row.pid == os.getpid()
        if own_pid and (row.id, row.attempts) not in own_claims:
            return Abandonment(False, f"pid {row.pid} is this process, which did not claim it "
                                      "(an earlier process had the same pid)")
        if not own_pid and not pid_alive(row.pid):
            return Abandonment(False, f"worker pid {row.pid} on {host} is gone")
    if row.heartbeat_at is None or row.heartbeat_at < now - timedelta(seconds=stale_after_s):
        seen = row.heartbeat_at.isoformat(timespec="seconds") if row.heartbeat_at else "never"
        return Abandonment(True, f"no heartbeat from {row.host} pid {row.pid} for {stale_after_s:.0f} s (last {seen})")
    return None


def claim_next(sessions: sessionmaker[Session], run_ids: Sequence[int], stale_after_s: float,
               own_claims: set[tuple[int, int]], pid: int | None = None) -> Claim | None:
    """Claim the first pending or abandoned run among `run_ids` (in their order); None when none is left."""
    host = host_name()
    pid = pid if pid is not None else os.getpid()
    order = {run_id: index for index, run_id in enumerate(run_ids)}

    def read_candidates() -> list:
        with sessions() as session:
            rows = []
            for chunk in _chunks(list(run_ids)):
                rows += session.execute(
                    select(Run.id, Run.config_hash, Run.status, Run.attempts, Run.host, Run.pid, Run.heartbeat_at)
                    .where(Run.id.in_(chunk), Run.status.in_([PENDING, RUNNING]))
                ).all()
        return rows

    now = utc_now()
    pending, abandoned = [], []
    for row in run_with_retry(read_candidates, "reading the queue"):
        if row.status == PENDING:
            pending.append(row)
            continue
        abandonment = find_abandonment(row, host, now, stale_after_s, own_claims)
        if abandonment is not None:
            abandoned.append((row, abandonment))
    pending.sort(key=lambda row: order[row.id])
    abandoned.sort(key=lambda item: order[item[0].id])

    for row, abandonment in [(row, None) for row in pending] + abandoned:
        statement = update(Run).where(Run.id == row.id, Run.status == row.status, Run.attempts == row.attempts)
        if abandonment is not None and abandonment.stale:
            # Reclaimed for a stale heartbeat: the heartbeat must still be stale at write time.
            cutoff = now - timedelta(seconds=stale_after_s)
            statement = statement.where(or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < cutoff))
        claim = Claim(row.id, row.config_hash, row.attempts + 1, host, pid)
        statement = statement.values(status=RUNNING, host=host, pid=pid, heartbeat_at=utc_now(), started_at=utc_now(),
                                     ended_at=None, error=None, attempts=claim.attempt)
        if _write(sessions, statement, f"claiming run {row.id}"):
            if abandonment is not None:
                logger.warning("reclaimed run %d (%s), attempt %d: %s", row.id, row.config_hash[:16], claim.attempt,
                               abandonment.reason)
            logger.info("claimed run %d (%s), attempt %d", row.id, row.config_hash[:16], claim.attempt)
            return claim
    return None


def _write(sessions: sessionmaker[Session], statement: Update, description: str) -> bool:
    """Execute one UPDATE in its own transaction; return whether it changed a row."""
    def transaction() -> bool:
        with sessions() as session, session.begin():
            return session.execute(statement).rowcount == 1

    return run_with_retry(transaction, description)


def heartbeat(sessions: sessionmaker[Session], claims: Sequence[Claim]) -> list[Claim]:
    """Record that the claims' worker is alive, in one transaction; return the claims it no longer holds."""
    if not claims:
        return []

    def transaction() -> list[Claim]:
        lost = []
        with sessions() as session, session.begin():
            now = utc_now()
            for claim in claims:
                if session.execute(update(Run).where(*claim.matches()).values(heartbeat_at=now)).rowcount != 1:
                    lost.append(claim)
        return lost

    lost = run_with_retry(transaction, "heartbeat")
    for claim in lost:
        logger.warning("lost the claim on run %d (%s): another worker reclaimed it", claim.run_id, claim.config_hash[:16])
    return lost


def release(sessions: sessionmaker[Session], claim: Claim, reason: str) -> bool:
    """Put a claimed run back to pending (on stop or preemption); return whether the claim still held."""
    statement = update(Run).where(*claim.matches()).values(status=PENDING, host=None, pid=None, heartbeat_at=None)
    released = _write(sessions, statement, f"releasing run {claim.run_id}")
    if released:
        logger.info("released run %d (%s) back to pending: %s", claim.run_id, claim.config_hash[:16], reason)
    return released


def mark_failed(sessions: sessionmaker[Session], claim: Claim, error: str, started_at: datetime | None = None) -> bool:
    """Store a failed result for a claimed run whose process ended without storing one."""
    ended_at = utc_now()
    values = {"status": FAILED, "error": error, "ended_at": ended_at, "heartbeat_at": ended_at}
    if started_at is not None:
        values["wall_time_s"] = (ended_at - started_at).total_seconds()
    stored = _write(sessions, update(Run).where(*claim.matches()).values(**values), f"failing run {claim.run_id}")
    if stored:
        logger.error("run %d (%s) failed: %s", claim.run_id, claim.config_hash[:16], error)
    return stored


def finish(session: Session, claim: Claim, values: dict, metrics: list[Metric]) -> bool:
    """Store a claimed run's final row and metrics in the caller's transaction; return whether the claim held.

    When the claim was lost, nothing is written and the caller must roll back.
    """
    if session.execute(update(Run).where(*claim.matches()).values(**values)).rowcount != 1:
        return False
    session.execute(delete(Metric).where(Metric.run_id == claim.run_id))
    for metric in metrics:
        metric.run_id = claim.run_id
        session.add(metric)
    return True


def count_states(sessions: sessionmaker[Session], run_ids: Sequence[int]) -> Counter:
    """Count the rows of `run_ids` per status."""
    counts: Counter = Counter()
    with sessions() as session:
        for chunk in _chunks(list(run_ids)):
            for status, number in session.execute(
                select(Run.status, func.count()).where(Run.id.in_(chunk)).group_by(Run.status)
            ).all():
                counts[status] += number
    return counts


def split_running(sessions: sessionmaker[Session], run_ids: Sequence[int],
                  stale_after_s: float) -> tuple[set[int], set[int]]:
    """Split the running rows among `run_ids` into (active, abandoned) run ids."""
    host, now = host_name(), utc_now()
    active, abandoned = set(), set()
    with sessions() as session:
        for chunk in _chunks(list(run_ids)):
            for row in session.execute(
                select(Run.id, Run.status, Run.attempts, Run.host, Run.pid, Run.heartbeat_at)
                .where(Run.id.in_(chunk), Run.status == RUNNING)
            ).all():
                target = abandoned if find_abandonment(row, host, now, stale_after_s, set()) else active
                target.add(row.id)
    return active, abandoned
