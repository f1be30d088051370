"""Opening the results database: URL handling, SQLite settings and schema migrations."""

import logging
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

DEFAULT_DB = "bench.db"
MIGRATIONS = Path(__file__).parent / "migrations"


def database_url(db: str | Path | None = None) -> str:
    """Return an SQLAlchemy URL for `db`, `$BENCH_DB` or `./bench.db`; a plain path means SQLite."""
    value = str(db or os.environ.get("BENCH_DB") or DEFAULT_DB)
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def _configure_sqlite(dbapi_connection, _record) -> None:
    # WAL lets readers work while a run writes; the busy timeout makes concurrent writers wait
    # (milliseconds) instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(url: str) -> Config:
    """Build an Alembic configuration for the migrations shipped in the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def open_engine(db: str | Path | None = None, migrate: bool = True) -> Engine:
    """Create an engine for the database and upgrade its schema to the newest migration."""
    url = database_url(db)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite)

    if migrate:
        config = alembic_config(url)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)
