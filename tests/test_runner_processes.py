"""Grids under real processes: SIGKILL and restart, crashed runs, Ctrl-C, concurrent writers and submitit.

Runs are tiny (PaDiM, resnet18 with random weights, 32 px inputs, the demo dataset at 64 px),
so each takes about a second; most of a test's time is the start-up of `bench` (imports).
"""

import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bench.data.demo import write_demo_dataset
from bench.runners.grid import GridSpec, expand, plan
from bench.runners.runqueue import enqueue
from bench.schema.db import engine_url, open_engine, session_factory


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """The demo dataset (washer, weave) at 64 px with 8 training and 9 test images per category."""
    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(root, size=64, n_train=8, n_test_good=3, n_test_per_defect=2)
    return root


def grid_args(root: Path, db: str, runs_dir: Path, layers: list[str], seeds: range, *extra: str) -> list[str]:
    args = ["run", "--method", "padim", "--weights", "random", "--backbone", "resnet18", "--root", str(root),
            "--category", "all", "--image-size", "32", "--no-save-maps", "--db", db, "--runs-dir", str(runs_dir)]
    for level_set in layers:
        args += ["--layers", level_set]
    for seed in seeds:
        args += ["--seed", str(seed)]
    return [*args, *extra]


def start_bench(args: list[str], cwd: Path, threads: int | None = None) -> subprocess.Popen:
    # OMP_NUM_THREADS=1 keeps several commands on this 2-core machine from oversubscribing it.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    # A new session makes the command a process group leader, as a shell job is.
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)


def run_bench(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def query(url: str, sql: str) -> list[tuple]:
    engine = create_engine(engine_url(url))
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]
    except Exception:
        # The database may not exist yet while a command is starting.
        return []
    finally:
        engine.dispose()


def wait_for(condition, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def live_group_members(group: int) -> list[int]:
    """Return the pids of processes in this process group that are not zombies."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp.
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def child_pids(pid: int) -> list[int]:
    try:
        return [int(text) for text in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_process_pids(worker: int) -> list[int]:
    """Return the run processes of a worker: its descendants other than multiprocessing's helpers."""
    descendants, frontier = [], child_pids(worker)
    while frontier:
        pid = frontier.pop()
        descendants.append(pid)
        frontier += child_pids(pid)
    runs = []
    for pid in descendants:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"forkserver" not in command and b"resource_tracker" not in command:
            runs.append(pid)
    return runs


def process_state(pid: int) -> str:
    """Return the state letter of `pid` from /proc (R, S, T stopped, Z finished), or "" when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def stop_run_process(worker: int, timeout: float) -> int | None:
    """Freeze a live run process of `worker` with SIGSTOP and return its pid; None if none was caught.

    A run of the tiny grid takes about a second, so a pid seen a moment ago may belong to a run
    that has already ended. A stopped process is certain to be mid-run when it is killed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in run_process_pids(worker):
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            if wait_for(lambda: process_state(pid) in ("T", "Z", ""), timeout=5) and process_state(pid) == "T":
                return pid
        time.sleep(0.02)
    return None


def done_rows(url: str) -> dict[str, tuple]:
    return {row[0]: row[1:] for row in query(url, "SELECT config_hash, id, ended_at, wall_time_s FROM runs "
                                                  "WHERE status = 'done'")}


def test_sigkill_restart_loses_nothing(demo_root, tmp_path):
    db = f"sqlite:///{tmp_path / 'grid.db'}"
    # 2 categories x 3 layer sets x 2 seeds = 12 runs.
    args = grid_args(demo_root, db, tmp_path / "runs", ["2", "1,2", "2,3"], range(2), "--jobs", "2")
    rng = random.Random(int(os.environ.get("BENCH_KILL_SEED", "7")))
    finished: dict[str, tuple] = {}
    kills = []

    for cycle in range(10):
        process = start_bench(args, tmp_path)
        if cycle % 3 == 0:
            # Any moment: start-up, queueing or a run.
            delay = rng.uniform(0.5, 9.0)
            time.sleep(delay)
        else:
            # A moment while this command runs a run, so that the kill lands in a run or its commit.
            running = f"SELECT 1 FROM runs WHERE status = 'running' AND pid = {process.pid}"
            wait_for(lambda: process.poll() is not None or query(db, running), timeout=120)
            delay = rng.uniform(0.0, 2.5)
            time.sleep(delay)
        whole_group = cycle % 2 == 1
        if process.poll() is None:
            # On a fast machine the grid may end first; then there is nothing left to kill.
            try:
                if whole_group:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.communicate(timeout=60)
        kills.append((cycle, round(delay, 2), "group" if whole_group else "worker"))

        # Run processes die with their worker; none may write after the kill.
        assert wait_for(lambda: not live_group_members(process.pid), timeout=10), kills
        snapshot = done_rows(db)
        for config_hash, row in finished.items():
            assert snapshot.get(config_hash) == row, (config_hash, kills)
        finished.update(snapshot)

    final = run_bench(args, tmp_path)
    assert final.returncode == 0, final.stderr
    snapshot = done_rows(db)
    for config_hash, row in finished.items():
        assert snapshot.get(config_hash) == row, (config_hash, kills)
    assert len(snapshot) == 12
    assert query(db, "SELECT count(*) FROM runs") == [(12,)]
    assert query(db, "SELECT count(*) FROM runs WHERE status != 'done'") == [(0,)]
    assert query(db, "SELECT count(*) FROM metrics") == [(60,)]
    assert query(db, "SELECT count(DISTINCT run_id) FROM metrics") == [(12,)]
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    # Runs claimed more than once were killed mid-run and reclaimed, which this test must exercise.
    (claims,), = query(db, "SELECT sum(attempts) FROM runs")
    assert claims > 12, kills


def test_crashed_run_fails_alone(demo_root, tmp_path):
    db = f"sqlite:///{tmp_path / 'grid.db'}"
    args = grid_args(demo_root, db, tmp_path / "runs", ["2"], range(1), "--jobs", "1")
    process = start_bench(args, tmp_path)
    victim = stop_run_process(process.pid, timeout=120)
    assert victim is not None

    # The out-of-memory killer ends a process with SIGKILL.
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=300)

    assert process.returncode == 1, stderr
    rows = query(db, "SELECT status, error FROM runs")
    assert sorted(status for status, _ in rows) == ["done", "failed"]
    (error,), = [(error,) for status, error in rows if status == "failed"]
    assert "signal 9 (SIGKILL)" in error
    assert "failed" in stdout

    retried = run_bench([*args, "--retry-failed"], tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert sorted(query(db, "SELECT status, attempts FROM runs")) == [("done", 1), ("done", 2)]


def test_ctrl_c_releases_runs(demo_root, tmp_path):
    db = f"sqlite:///{tmp_path / 'grid.db'}"
    args = grid_args(demo_root, db, tmp_path / "runs", ["2"], range(3), "--jobs", "1")
    process = start_bench(args, tmp_path)
    assert wait_for(lambda: query(db, "SELECT 1 FROM runs WHERE status = 'running'"), timeout=120)

    # A terminal sends SIGINT to the whole foreground process group.
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert "stopped (Ctrl-C)" in stdout
    assert "run the same command again to continue" in stdout
    assert query(db, "SELECT count(*) FROM runs WHERE status = 'running'") == [(0,)]
    assert query(db, "SELECT count(*) FROM runs WHERE status = 'pending'") != [(0,)]
    assert not live_group_members(process.pid)


def _run_four_workers(url: str, root: Path, tmp_path: Path) -> list[subprocess.CompletedProcess]:
    # 2 categories x 2 layer sets x 10 seeds = 40 runs; a short heartbeat adds write contention.
    args = grid_args(root, url, tmp_path / "runs", ["2", "1,2"], range(10), "--jobs", "1", "--heartbeat", "0.5")
    processes = [start_bench(args, tmp_path, threads=1) for _ in range(4)]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def _check_forty_runs(url: str, results: list[subprocess.CompletedProcess]) -> None:
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "locked" not in result.stderr.lower()
    assert query(url, "SELECT count(*) FROM runs") == [(40,)]
    assert query(url, "SELECT count(*) FROM runs WHERE status = 'done'") == [(40,)]
    assert query(url, "SELECT count(*) FROM runs WHERE attempts != 1") == [(0,)]
    assert query(url, "SELECT count(*) FROM metrics") == [(200,)]
    (workers,), = query(url, "SELECT count(DISTINCT pid) FROM runs")
    assert workers >= 2


def test_four_workers_share_sqlite(demo_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    results = _run_four_workers(url, demo_root, tmp_path)
    _check_forty_runs(url, results)
    assert query(url, "PRAGMA integrity_check") == [("ok",)]


def test_four_workers_share_postgres(demo_root, tmp_path, postgres_url):
    results = _run_four_workers(postgres_url, demo_root, tmp_path)
    _check_forty_runs(postgres_url, results)


def test_submitit_local_grid(demo_root, tmp_path):
    db = f"sqlite:///{tmp_path / 'grid.db'}"
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'method = "padim"\nbackbone = "resnet18"\nweights = ["random"]\ncategory = ["washer", "weave"]\n'
        f'layers = ["2"]\nseed = [0]\nroot = "{demo_root}"\nimage_size = 32\nsave_maps = false\n'
    )
    log_dir = tmp_path / "jobs"
    process = start_bench(["sweep", str(grid), "--runner", "submitit-local", "--runs-per-job", "1",
                           "--gpus-per-job", "0", "--time", "10", "--log-dir", str(log_dir), "--db", db,
                           "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert wait_for(lambda: query(db, "SELECT 1 FROM runs WHERE status = 'running'"), timeout=180)
    (preempted_id, task_pid), = query(db, "SELECT id, pid FROM runs WHERE status = 'running' LIMIT 1")

    # Slurm signals preemption with SIGUSR2 to the job task; submitit then checkpoints and requeues it.
    os.kill(task_pid, signal.SIGUSR2)
    stdout, stderr = process.communicate(timeout=400)

    assert process.returncode == 0, stderr + stdout
    assert "submitted 2 array tasks" in stdout
    assert "grid: 2 of 2 done" in stdout
    assert query(db, "SELECT count(*) FROM runs WHERE status = 'done'") == [(2,)]
    assert query(db, f"SELECT attempts FROM runs WHERE id = {preempted_id}") == [(2,)]
    logs = sorted(path.name for path in log_dir.rglob("*_log.err"))
    assert len(logs) == 2
    task_log = "".join(path.read_text() for path in log_dir.rglob("*_log.err"))
    assert "preempted or timed out" in task_log
    assert f"released run {preempted_id} (" in task_log


# The check runs in a fresh interpreter: a pytest process that already ran torch code has
# OpenMP threads of its own, and the test must control exactly which threads exist.
FORK_SERVER_SCRIPT = """
import io, sys, threading
from pathlib import Path
from rich.console import Console
from bench.runners.worker import Worker, WorkerSettings, run_process_context
from bench.runners.grid import GridSpec, expand, plan
from bench.runners.runqueue import enqueue
from bench.schema.db import open_engine, session_factory

demo_root, tmp_path = Path(sys.argv[1]), Path(sys.argv[2])
url = f"sqlite:///{tmp_path / 'grid.db'}"
sessions = session_factory(open_engine(url))
spec = GridSpec(method=["padim"], weights=["random"], root=demo_root, category=["washer"], backbone=["resnet18"],
                layers=["2"], image_size=32, save_maps=False)
with sessions() as session:
    ids = [run.run_id for run in enqueue(sessions, plan(session, expand(spec)))]

# A thread started after the imports stands in for an OpenMP pool, which a fork would leave hung.
stop = threading.Event()
thread = threading.Thread(target=stop.wait)
thread.start()
try:
    start_method = run_process_context().get_start_method()
    settings = WorkerSettings(db_url=url, runs_dir=tmp_path / "runs", save_maps=False)
    report = Worker(settings, ids, Console(file=io.StringIO()), handle_signals=False).run()
finally:
    stop.set()
    thread.join()
print(start_method, report.done)
"""


def test_threaded_worker_uses_fork_server(demo_root, tmp_path):
    result = subprocess.run([sys.executable, "-c", FORK_SERVER_SCRIPT, str(demo_root), str(tmp_path)],
                            capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    start_method, done = result.stdout.split()[-2:]
    assert start_method == "forkserver"
    assert done == "1"
    assert query(f"sqlite:///{tmp_path / 'grid.db'}", "SELECT status FROM runs") == [("done",)]
