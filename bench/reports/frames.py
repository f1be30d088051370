"""Read-only access to the results database as pandas DataFrames, and `bench query`'s engine.

Read-only is enforced by the database, not by inspecting the SQL. SQLite files are opened with
`mode=ro`, `PRAGMA query_only=ON` and an authorizer that allows only reading statements, so
INSERT, UPDATE, DELETE, DROP, CREATE and ATTACH all fail inside SQLite. Other engines run every
query in a transaction started with `SET TRANSACTION READ ONLY`, which is rolled back.
"""

import logging
import sqlite3
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from bench.errors import BenchError
from bench.schema.db import database_url
from bench.schema.models import Metric, Run

logger = logging.getLogger(__name__)

# SQLite authorizer action codes a read-only query needs: reading tables and columns, calling
# functions, recursive CTEs, transaction control and pragmas that only read (no argument).
_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE,
                 sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT}

RUN_COLUMNS = ("id", "method", "backbone", "weights_name", "dataset", "category", "layers", "image_size", "seed",
               "train_shots", "backbone_fine_tuned", "status", "root", "started_at", "ended_at", "wall_time_s",
               "peak_memory_mb", "host", "git_revision", "maps_path", "log_path", "error", "config_hash")


class QueryError(BenchError):
    """A query that the database rejected (a write on a read-only connection, invalid SQL) or could not run."""


def _authorize(action: int, argument: str | None, value: str | None, _database: str | None,
               _trigger: str | None) -> int:
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and value is None:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise QueryError(f"cannot open an in-memory SQLite database read-only: {url}; pass a database file")
    path = Path(database.removeprefix("file:").split("?")[0]).expanduser().resolve()
    if not path.is_file():
        raise QueryError(f"database not found: {path} (pass --db or set BENCH_DB)")
    return path


def read_only_engine(db: str | Path | Engine | None = None) -> Engine:
    """Create an engine that cannot change the database; `db` as for `bench --db`, or an engine's URL."""
    url = db.url.render_as_string(hide_password=False) if isinstance(db, Engine) else database_url(db)
    if not url.startswith("sqlite"):
        engine = create_engine(_engine_url(url))
        event.listen(engine, "begin", _begin_read_only)
        return engine

    path = _sqlite_path(url)

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, check_same_thread=False)
        connection.execute("PRAGMA query_only=ON")
        connection.set_authorizer(_authorize)
        return connection

    return create_engine("sqlite://", creator=connect)


def _engine_url(url: str) -> str:
    # Uses the driver choice of bench.schema.db (psycopg 3 for a bare postgresql:// URL) where
    # that module provides it.
    try:
        from bench.schema.db import engine_url
    except ImportError:
        return url
    return engine_url(url)


def _begin_read_only(connection) -> None:
    # NOTE: tested on SQLite only. PostgreSQL and MySQL accept this as the first statement of a
    # transaction; an engine that rejects it fails here instead of running the query writable.
    connection.exec_driver_sql("SET TRANSACTION READ ONLY")


def query_frame(db: str | Path | Engine | None, sql: str) -> pd.DataFrame:
    """Run one SQL statement on a read-only connection and return its rows as a DataFrame.

    The statement goes to the database driver unchanged, so colons and percent signs inside
    string literals keep their meaning. Raises QueryError with the database's message when the statement is rejected (any write)
    or fails; nothing is committed in any case.
    """
    engine = read_only_engine(db)
    try:
        with engine.connect() as connection:
            result = connection.exec_driver_sql(sql)
            if not result.returns_rows:
                connection.rollback()
                raise QueryError("the statement returns no rows; `bench query` runs read-only SELECT statements")
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
            connection.rollback()
    except DBAPIError as error:
        reason = str(error.orig).splitlines()[0] if error.orig is not None else str(error)
        if reason == "not authorized" or "read-only" in reason or "readonly" in reason:
            if reason == "not authorized":
                reason = "not authorized (the authorizer allows only reading statements)"
            raise QueryError(f"query rejected by the database (read-only connection): {reason}") from None
        raise QueryError(f"query failed: {reason}") from None
    except SQLAlchemyError as error:
        raise QueryError(f"query failed: {str(error).splitlines()[0]}") from None
    finally:
        engine.dispose()
    return frame


def runs_frame(db: str | Path | Engine | None = None, status: str | None = "done") -> pd.DataFrame:
    """Return one row per run: its configuration columns and one column per metric (NaN when NULL).

    `status` keeps runs with that status (default "done"); None keeps every run. Columns: the
    run columns of RUN_COLUMNS, eval_size and method_options from the stored configuration, then
    one column per metric name, as fractions.
    """
    engine = read_only_engine(db)
    query = select(*(getattr(Run, column) for column in RUN_COLUMNS), Run.config, Run.method_options)
    if status is not None:
        query = query.where(Run.status == status)
    metrics_query = select(Metric.run_id, Metric.name, Metric.value)
    try:
        with engine.connect() as connection:
            runs = pd.DataFrame(connection.execute(query.order_by(Run.id)).mappings().all(),
                                columns=[*RUN_COLUMNS, "config", "method_options"])
            metrics = pd.DataFrame(connection.execute(metrics_query).mappings().all(),
                                   columns=["run_id", "name", "value"])
    finally:
        engine.dispose()

    runs["eval_size"] = runs.pop("config").map(lambda config: (config or {}).get("eval_size"))
    runs["backbone_fine_tuned"] = runs["backbone_fine_tuned"].astype(bool)
    if metrics.empty:
        return runs
    wide = metrics.pivot(index="run_id", columns="name", values="value").astype(float)
    wide.columns.name = None
    return runs.merge(wide, left_on="id", right_index=True, how="left")


def metrics_frame(db: str | Path | Engine | None = None, status: str | None = "done") -> pd.DataFrame:
    """Return one row per metric value with its run's configuration.

    Columns: run_id, name, value (fraction, NaN when undefined), null_reason, resolution, then
    method, backbone, weights_name, dataset, category, layers, image_size, seed, train_shots,
    backbone_fine_tuned and status of the run.
    """
    engine = read_only_engine(db)
    run_columns = ("method", "backbone", "weights_name", "dataset", "category", "layers", "image_size", "seed",
                   "train_shots", "backbone_fine_tuned", "status")
    query = (select(Metric.run_id, Metric.name, Metric.value, Metric.null_reason, Metric.resolution,
                    *(getattr(Run, column) for column in run_columns))
             .join(Run, Run.id == Metric.run_id).order_by(Metric.run_id, Metric.name))
    if status is not None:
        query = query.where(Run.status == status)
    try:
        with engine.connect() as connection:
            frame = pd.DataFrame(connection.execute(query).mappings().all(),
                                 columns=["run_id", "name", "value", "null_reason", "resolution", *run_columns])
    finally:
        engine.dispose()
    frame["value"] = frame["value"].astype(float)
    frame["backbone_fine_tuned"] = frame["backbone_fine_tuned"].astype(bool)
    return frame
