"""The results database: migrations, settings and URL handling."""

import sqlite3
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from bench.data.demo import write_demo_dataset
from bench.errors import ConfigError
from bench.schema.db import database_url, open_engine, removed_if_created_on_error
from bench.schema.models import Base


def test_migrations_match_models(tmp_path):
    engine = open_engine(tmp_path / "results.db")
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_tables_created(tmp_path):
    engine = open_engine(tmp_path / "results.db")
    assert set(inspect(engine).get_table_names()) >= {"runs", "metrics", "weights", "alembic_version"}


def test_reopen_keeps_rows(tmp_path):
    path = tmp_path / "results.db"
    with open_engine(path).begin() as connection:
        connection.execute(text(
            "INSERT INTO weights (name, arch, source, mean, std, meta, created_at) "
            "VALUES ('w', 'resnet18', 'test', '[0,0,0]', '[1,1,1]', '{}', '2026-01-01')"
        ))
    with open_engine(path).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM weights")).scalar() == 1
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"


def test_sqlite_uses_wal(tmp_path):
    engine = open_engine(tmp_path / "results.db")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_url_from_path_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DB", str(tmp_path / "env.db"))
    assert database_url() == f"sqlite:///{tmp_path / 'env.db'}"
    assert database_url("postgresql://user@localhost/bench") == "postgresql://user@localhost/bench"
    assert database_url(tmp_path / "x.db") == f"sqlite:///{tmp_path / 'x.db'}"


def test_upgrade_from_first_revision_keeps_rows(tmp_path):
    from alembic import command

    from bench.schema.db import alembic_config, database_url

    path = tmp_path / "old.db"
    config = alembic_config(database_url(path))
    command.upgrade(config, "0001")
    engine = open_engine(path, migrate=False)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO runs (config_hash, config, method, method_options, backbone, weights_name, dataset, root, "
            "category, layers, image_size, seed, status, versions) VALUES ('h', '{}', 'padim', '{}', 'resnet18', "
            "'random', 'mvtec', '/data', 'bottle', '1,2,3', 256, 0, 'done', '{}')"
        ))

    upgraded = open_engine(path)
    with upgraded.connect() as connection:
        row = connection.execute(text("SELECT category, attempts, backbone_fine_tuned, train_shots FROM runs")).one()
    assert tuple(row) == ("bottle", 0, 0, None)


def bench_cli(*arguments: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *arguments], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_file_that_is_no_database(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n")

    for arguments in (["status"], ["weights", "list"]):
        completed = bench_cli(*arguments, "--db", str(path), cwd=tmp_path)
        assert completed.returncode == 2, arguments
        assert completed.stderr.splitlines() == [
            f"error: cannot open the database sqlite:///{path}: file is not a database; pass a bench results "
            "database, or a new path to create one, with --db"]
    assert path.read_text() == "not a database\n"


def test_database_of_another_program(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE samples (id INTEGER)")

    with pytest.raises(ConfigError, match=r"has tables \(samples\) but no bench schema version"):
        open_engine(path)
    with sqlite3.connect(path) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert tables == ["samples"]


def test_failed_block_removes_new_database(tmp_path):
    path = tmp_path / "new.db"
    with pytest.raises(ConfigError), removed_if_created_on_error(path):
        open_engine(path)
        raise ConfigError("unknown weights")
    assert list(tmp_path.iterdir()) == []


def test_failed_block_keeps_existing_database(tmp_path):
    path = tmp_path / "old.db"
    open_engine(path).dispose()
    with pytest.raises(ConfigError), removed_if_created_on_error(path):
        raise ConfigError("unknown weights")
    assert path.is_file()


def test_failed_run_creates_no_database(tmp_path):
    demo = tmp_path / "demo"
    write_demo_dataset(demo, size=64, n_train=4, n_test_good=2, n_test_per_defect=1)

    completed = bench_cli("run", "--method", "padim", "--weights", "randm", "--backbone", "resnet18",
                          "--root", str(demo), "--category", "weave", "--image-size", "32", "--db", "results.db",
                          cwd=tmp_path)
    assert completed.returncode == 2
    assert "unknown weights 'randm'" in completed.stderr
    assert not any(path.name.startswith("results.db") for path in tmp_path.iterdir())


def test_failed_weights_add_creates_no_database(tmp_path):
    completed = bench_cli("weights", "add", "mine", "--arch", "resnet18", "--file", "missing.pth",
                          "--db", "results.db", cwd=tmp_path)
    assert completed.returncode == 2
    assert "weights file not found" in completed.stderr
    assert list(tmp_path.iterdir()) == []


def test_weights_list_creates_no_database(tmp_path):
    completed = bench_cli("weights", "list", "--db", "results.db", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "no registered weights: database" in completed.stdout
    assert "built in:" in completed.stdout
    assert list(tmp_path.iterdir()) == []
