"""`bench status` on databases with known rows, including one made by the first schema revision."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import text
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import ConfigError
from bench.runners.environment import host_name
from bench.runners.runqueue import utc_now
from bench.runners.status import read_status
from bench.schema.db import alembic_config, database_url, open_engine, session_factory
from bench.schema.models import Run


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def add_run(session, number: int, status: str, method: str, weights: str, category: str, **fields) -> None:
    session.add(Run(
        config_hash=f"{number:064d}", config={}, method=method, method_options={}, backbone="resnet18",
        weights_name=weights, dataset="mvtec", root="/data", category=category, layers="2,3", image_size=32, seed=0,
        status=status, versions={}, **fields,
    ))


@pytest.fixture
def known_db(tmp_path):
    """Six runs: 2 done (10 s and 20 s), 1 failed, 1 running with a live worker, 1 abandoned, 1 pending."""
    path = tmp_path / "status.db"
    sessions = session_factory(open_engine(path))
    now = utc_now()
    with sessions() as session, session.begin():
        add_run(session, 1, "done", "padim", "random", "washer", wall_time_s=10.0)
        add_run(session, 2, "done", "padim", "random", "weave", wall_time_s=20.0)
        add_run(session, 3, "failed", "padim", "imagenet", "washer", error="boom")
        # This test process stands in for a live worker on this host.
        add_run(session, 4, "running", "patchcore", "random", "washer", host=host_name(), pid=os.getpid(),
                heartbeat_at=now)
        add_run(session, 5, "running", "patchcore", "random", "weave", host=host_name(), pid=dead_pid(),
                heartbeat_at=now - timedelta(minutes=1))
        add_run(session, 6, "pending", "patchcore", "imagenet", "washer")
    return path


def test_status_reads_counts(known_db):
    status = read_status(open_engine(known_db), stale_after_s=600)
    assert dict(status.totals) == {"done": 2, "failed": 1, "running": 2, "pending": 1}
    assert status.in_progress == 1
    assert status.abandoned == 1
    assert status.mean_wall_time_s == 15.0
    assert status.eta_s() == 45.0


def test_status_output(known_db, tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench", "status", "--db", str(known_db)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert f"{database_url(known_db)}: 6 runs: 2 done, 2 running, 1 failed, 1 pending" in lines
    assert ("workers: 1 run in progress, claimed by 1 bench process; 1 running run lost its worker and will run again "
            "with the next bench run or sweep of the grid") in lines
    assert "ETA: 0:00:45 (estimate: 3 runs left x 15.0 s mean wall time / 1 in progress)" in lines
    assert "axis value done running failed pending" in lines
    assert "method padim 2 0 1 0" in lines
    assert "method patchcore 0 2 0 1" in lines
    assert "weights imagenet 0 0 1 1" in lines
    assert "weights random 2 2 0 0" in lines
    assert "backbone resnet18 2 2 1 1" in lines
    assert "dataset mvtec 2 2 1 1" in lines
    assert "category washer 1 1 1 1" in lines
    assert "category weave 1 1 0 0" in lines
    assert "layers 2,3 2 2 1 1" in lines
    assert "seed 0 2 2 1 1" in lines


def test_status_without_runs(tmp_path):
    open_engine(tmp_path / "empty.db")
    result = CliRunner().invoke(app, ["status", "--db", str(tmp_path / "empty.db")])
    assert result.exit_code == 0, result.output
    assert "0 runs: 0 done, 0 running, 0 failed, 0 pending" in result.output
    assert "ETA: nothing left to run" in result.output


def test_status_missing_database(tmp_path):
    result = CliRunner().invoke(app, ["status", "--db", str(tmp_path / "missing.db")])
    assert isinstance(result.exception, ConfigError)
    assert "database not found" in str(result.exception)
    assert not (tmp_path / "missing.db").exists()


def test_status_reads_upgraded_database(tmp_path):
    path = tmp_path / "old.db"
    command.upgrade(alembic_config(database_url(path)), "0001")
    with open_engine(path, migrate=False).begin() as connection:
        for number, status in enumerate(["done", "done", "failed"]):
            connection.execute(text(
                "INSERT INTO runs (config_hash, config, method, method_options, backbone, weights_name, dataset, "
                "root, category, layers, image_size, seed, status, wall_time_s, versions) VALUES (:hash, '{}', "
                "'padim', '{}', 'resnet18', 'random', 'mvtec', '/data', 'bottle', '1,2,3', 256, 0, :status, 30.0, '{}')"
            ), {"hash": f"{number:064d}", "status": status})

    status = read_status(open_engine(path), stale_after_s=600)
    assert dict(status.totals) == {"done": 2, "failed": 1}
    assert status.mean_wall_time_s == 30.0
    with open_engine(path).connect() as connection:
        assert connection.execute(text("SELECT sum(attempts) FROM runs")).scalar() == 0
