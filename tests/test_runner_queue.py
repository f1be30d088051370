"""The run queue on real databases: atomic claims, reclaims, lost claims and concurrent schema set-up.

Every test runs on a SQLite file and, when BENCH_TEST_POSTGRES_URL is set (`make test` sets it),
on a fresh database of a real PostgreSQL server. Workers are real processes.
"""

import multiprocessing
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update

from bench.errors import ConfigError
from bench.runners.config import RunConfig
from bench.runners.grid import PlannedRun
from bench.runners.runqueue import (
    DONE, FAILED, PENDING, RUNNING, claim_next, enqueue, finish, heartbeat, mark_failed, release, utc_now,
)
from bench.runners.environment import host_name
from bench.schema.db import open_engine, session_factory
from bench.schema.models import Metric, Run



@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A URL of an empty database: a SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    return request.getfixturevalue("postgres_url")


def planned_runs(count: int) -> list[PlannedRun]:
    runs = []
    for seed in range(count):
        config = RunConfig(method="padim", backbone="resnet18", weights="random", dataset="mvtec", root="/data",
                           category="washer", levels=(2,), image_size=32, eval_size=32, seed=seed)
        runs.append(PlannedRun(config, config.hash("test"), "test", None, False))
    return runs


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def statuses(sessions) -> dict[int, str]:
    with sessions() as session:
        return dict(session.execute(select(Run.id, Run.status)).all())


def test_enqueue_inserts_pending_once(db_url):
    sessions = session_factory(open_engine(db_url))
    first = enqueue(sessions, planned_runs(5))
    second = enqueue(sessions, planned_runs(5))
    assert [run.run_id for run in first] == [run.run_id for run in second]
    assert set(statuses(sessions).values()) == {PENDING}
    assert len(statuses(sessions)) == 5


def test_enqueue_requeues_only_when_asked(db_url):
    sessions = session_factory(open_engine(db_url))
    queued = enqueue(sessions, planned_runs(2))
    done_id, failed_id = queued[0].run_id, queued[1].run_id
    with sessions() as session, session.begin():
        session.execute(update(Run).where(Run.id == done_id).values(status=DONE))
        session.execute(update(Run).where(Run.id == failed_id).values(status=FAILED, error="boom"))

    again = enqueue(sessions, planned_runs(2))
    assert [run.status for run in again] == [DONE, FAILED]
    assert statuses(sessions) == {done_id: DONE, failed_id: FAILED}

    enqueue(sessions, planned_runs(2), retry_failed=True)
    assert statuses(sessions) == {done_id: DONE, failed_id: PENDING}

    enqueue(sessions, planned_runs(2), force=True)
    assert statuses(sessions) == {done_id: PENDING, failed_id: PENDING}


def test_claim_takes_each_row_once(db_url):
    sessions = session_factory(open_engine(db_url))
    ids = [run.run_id for run in enqueue(sessions, planned_runs(3))]
    first = claim_next(sessions, ids, 600, set())
    second = claim_next(sessions, ids, 600, {(first.run_id, first.attempt)})
    assert first.run_id == ids[0]
    assert second.run_id == ids[1]
    assert first.attempt == 1
    with sessions() as session:
        row = session.get(Run, first.run_id)
    assert (row.status, row.host, row.pid, row.attempts) == (RUNNING, host_name(), os.getpid(), 1)
    assert row.heartbeat_at is not None


def test_claim_reclaims_dead_local_worker(db_url):
    sessions = session_factory(open_engine(db_url))
    ids = [run.run_id for run in enqueue(sessions, planned_runs(1))]
    with sessions() as session, session.begin():
        session.execute(update(Run).values(status=RUNNING, host=host_name(), pid=dead_pid(), heartbeat_at=utc_now(),
                                           attempts=1))
    claim = claim_next(sessions, ids, 600, set())
    assert claim is not None
    assert claim.attempt == 2


def test_claim_skips_live_local_worker(db_url):
    sessions = session_factory(open_engine(db_url))
    ids = [run.run_id for run in enqueue(sessions, planned_runs(1))]
    with sessions() as session, session.begin():
        # The parent of this test process is alive and is not this process.
        session.execute(update(Run).values(status=RUNNING, host=host_name(), pid=os.getppid(), heartbeat_at=utc_now(),
                                           attempts=1))
    assert claim_next(sessions, ids, 600, set()) is None


def test_claim_reclaims_stale_remote_worker(db_url):
    sessions = session_factory(open_engine(db_url))
    ids = [run.run_id for run in enqueue(sessions, planned_runs(2))]
    with sessions() as session, session.begin():
        session.execute(update(Run).where(Run.id == ids[0]).values(
            status=RUNNING, host="node-a", pid=1234, heartbeat_at=utc_now() - timedelta(hours=1), attempts=1))
        session.execute(update(Run).where(Run.id == ids[1]).values(
            status=RUNNING, host="node-b", pid=1234, heartbeat_at=utc_now(), attempts=1))
    claim = claim_next(sessions, ids, 600, set())
    assert claim.run_id == ids[0]
    assert claim_next(sessions, ids, 600, {(claim.run_id, claim.attempt)}) is None


def test_lost_claim_writes_nothing(db_url):
    sessions = session_factory(open_engine(db_url))
    ids = [run.run_id for run in enqueue(sessions, planned_runs(1))]
    old = claim_next(sessions, ids, 600, set())
    with sessions() as session, session.begin():
        session.execute(update(Run).values(host="node-a", heartbeat_at=utc_now() - timedelta(hours=1)))
    new = claim_next(sessions, ids, 600, set())
    assert new.attempt == old.attempt + 1

    with sessions() as session, session.begin():
        assert not finish(session, old, {"status": DONE}, [Metric(name="image_auroc", value=0.5)])
    assert heartbeat(sessions, [old]) == [old]
    assert not mark_failed(sessions, old, "late failure")
    assert not release(sessions, old, "late stop")
    with sessions() as session:
        row = session.get(Run, new.run_id)
        metric_count = session.scalar(text("SELECT count(*) FROM metrics"))
    assert (row.status, row.attempts, row.error) == (RUNNING, new.attempt, None)
    assert metric_count == 0


def test_release_returns_run_to_pending(db_url):
    sessions = session_factory(open_engine(db_url))
    ids = [run.run_id for run in enqueue(sessions, planned_runs(1))]
    claim = claim_next(sessions, ids, 600, set())
    assert release(sessions, claim, "stopped")
    assert statuses(sessions) == {claim.run_id: PENDING}
    assert claim_next(sessions, ids, 600, set()).attempt == 2


def _claim_all(url: str, ids: list[int], results) -> None:
    """Claim and finish runs until none is left; put the claimed ids on `results`."""
    sessions = session_factory(open_engine(url, migrate=False))
    claimed, own = [], set()
    while (claim := claim_next(sessions, ids, 600, own)) is not None:
        own.add((claim.run_id, claim.attempt))
        with sessions() as session, session.begin():
            assert finish(session, claim, {"status": DONE, "ended_at": utc_now()}, [])
        claimed.append(claim.run_id)
    results.put(claimed)


def test_racing_workers_claim_each_once(db_url):
    sessions = session_factory(open_engine(db_url))
    ids = [run.run_id for run in enqueue(sessions, planned_runs(40))]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_claim_all, args=(db_url, ids, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    claimed = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)

    every = sorted(run_id for share in claimed for run_id in share)
    assert every == sorted(ids)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert set(statuses(sessions).values()) == {DONE}
    with sessions() as session:
        assert set(session.scalars(select(Run.attempts))) == {1}


def _open(url: str) -> None:
    open_engine(url).dispose()


def test_concurrent_opens_migrate_once(db_url):
    context = multiprocessing.get_context("spawn")
    openers = [context.Process(target=_open, args=(db_url,)) for _ in range(4)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(timeout=120)
    assert [opener.exitcode for opener in openers] == [0] * 4
    with open_engine(db_url).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_unreachable_server_is_config_error():
    # Nothing listens on port 1 of the loopback interface.
    with pytest.raises(ConfigError, match="cannot open the database postgresql"):
        open_engine("postgresql://bench@127.0.0.1:1/bench")
