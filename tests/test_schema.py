"""The results database: migrations, settings and URL handling."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from bench.schema.db import database_url, open_engine
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
