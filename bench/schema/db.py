"""Opening the results database: URL handling, SQLite settings, schema migrations and lock retries."""

import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bench.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_DB = "bench.db"
MIGRATIONS = Path(__file__).parent / "migrations"

# Key of the PostgreSQL advisory lock that serialises schema upgrades by concurrent processes.
MIGRATION_LOCK_KEY = 0x62656E6368

# SQLSTATE codes after which PostgreSQL asks the client to run the transaction again:
# serialization_failure, deadlock_detected and lock_not_available.
RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}
SQLITE_LOCK_MESSAGES = ("database is locked", "database table is locked", "database is busy")

T = TypeVar("T")


def database_url(db: str | Path | None = None) -> str:
    """Return an SQLAlchemy URL for `db`, `$BENCH_DB` or `./bench.db`; a plain path means SQLite."""
    value = str(db or os.environ.get("BENCH_DB") or DEFAULT_DB)
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def engine_url(url: str) -> str:
    """Return `url` with the installed PostgreSQL driver (psycopg 3) where the URL names none.

    SQLAlchemy maps a bare `postgresql://` to psycopg2, which bench does not install.
    """
    parsed = make_url(url)
    if parsed.drivername not in ("postgresql", "postgres"):
        return url
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _configure_sqlite(dbapi_connection, _record) -> None:
    # The busy timeout (milliseconds) comes first, so that even switching to WAL waits for a
    # concurrent writer instead of failing with "database is locked". WAL lets readers work
    # while a run writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(url: str) -> Config:
    """Build an Alembic configuration for the migrations shipped in the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine_url(url).replace("%", "%%"))
    return config


def _schema_is_current(connection: Connection, head: str | None) -> bool:
    return MigrationContext.configure(connection).get_current_revision() == head


def _check_no_foreign_tables(connection: Connection, engine: Engine) -> None:
    """Raise ConfigError when a database without bench's schema version already has tables."""
    tables = inspect(connection).get_table_names()
    if tables and "alembic_version" not in tables:
        table_list = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise ConfigError(f"database {engine.url.render_as_string(hide_password=True)} has tables ({table_list}) but no "
                          "bench schema version, so it belongs to another program; pass a new path or a bench "
                          "results database with --db")


def _upgrade(engine: Engine, url: str) -> None:
    """Upgrade the schema to the newest migration, one process at a time."""
    config = alembic_config(url)
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as connection:
        if _schema_is_current(connection, head):
            return

    with engine.connect() as connection:
        # Take the write lock before reading the revision, so that processes opening a new
        # database together run the migrations once; the others wait, then find the schema current.
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        if not _schema_is_current(connection, head):
            _check_no_foreign_tables(connection, engine)
            logger.info("upgrading the schema of %s to revision %s", engine.url, head)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        connection.commit()


def open_existing_engine(db: str | Path | None = None) -> Engine:
    """Open a database that must already exist, for commands that only read results.

    A mistyped SQLite path raises ConfigError instead of creating an empty database there.
    """
    path = sqlite_file(db)
    if path is not None and not path.exists():
        raise ConfigError(f"database not found: {path}; pass --db or set BENCH_DB")
    return open_engine(db)


def open_engine(db: str | Path | None = None, migrate: bool = True) -> Engine:
    """Create an engine for the database and upgrade its schema to the newest migration.

    Raises ConfigError when the URL is invalid or, with `migrate`, when the database cannot be opened.
    """
    url = database_url(db)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    display_url = url
    try:
        display_url = make_url(engine_url(url)).render_as_string(hide_password=True)
        engine = create_engine(engine_url(url))
    except (ArgumentError, NoSuchModuleError, ImportError) as error:
        raise ConfigError(f"invalid database URL {display_url}: {error}; pass a SQLite path or a URL such as "
                          "postgresql://user@host/bench") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite)

    if migrate:
        try:
            run_with_retry(lambda: _upgrade(engine, url), "schema upgrade")
        except OperationalError as error:
            raise ConfigError(f"cannot open the database {display_url}: {str(error.orig).strip().splitlines()[0]}; "
                              "check --db or BENCH_DB and that the server is running") from None
        except DatabaseError as error:
            # SQLite raises this for a file that exists but is not a SQLite database.
            raise ConfigError(f"cannot open the database {display_url}: {str(error.orig).strip().splitlines()[0]}; "
                              "pass a bench results database, or a new path to create one, with --db") from None
    return engine


def sqlite_file(db: str | Path | None = None) -> Path | None:
    """Return the file of a SQLite database URL, or None for other engines and in-memory SQLite."""
    url = database_url(db)
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?")[0]
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def removed_if_created_on_error(db: str | Path | None = None) -> Iterator[None]:
    """Delete the SQLite database that the block creates when the block raises.

    A command that fails on its input (an unknown weights name, a missing checkpoint) then leaves
    no empty database behind. The file is kept when it already contains runs or weights, which only
    happens when another process wrote to it meanwhile.
    """
    path = sqlite_file(db)
    existed = path is None or path.exists()
    try:
        yield
    except BaseException:
        if not existed and path.exists() and _has_no_rows(path):
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        raise


def _has_no_rows(path: Path) -> bool:
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return all(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
                       for table in ("runs", "weights") if table in tables)
    except sqlite3.Error:
        return False


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def is_retryable(error: DBAPIError) -> bool:
    """Return whether `error` is a lock timeout, deadlock or serialization failure worth retrying."""
    original = error.orig
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    if sqlstate in RETRYABLE_SQLSTATES:
        return True
    message = str(original).lower()
    return any(lock_message in message for lock_message in SQLITE_LOCK_MESSAGES)


def run_with_retry(operation: Callable[[], T], description: str, tries: int = 8) -> T:
    """Call `operation` (one whole transaction) again after lock errors, with exponential backoff.

    SQLite's busy timeout already waits 30 s for a lock; a retry covers what it cannot, such as a
    busy checkpoint. On PostgreSQL a retry covers deadlocks and serialization failures. The last
    error is raised after `tries` attempts.
    """
    for attempt in range(1, tries + 1):
        try:
            return operation()
        except DBAPIError as error:
            if attempt == tries or not is_retryable(error):
                raise
            # Seconds; jitter keeps workers that collided from colliding again.
            delay = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
            logger.warning("%s: %s; retry %d of %d in %.2f s", description, error.orig, attempt, tries - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
