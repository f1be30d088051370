"""`bench query` and the DataFrame helpers: read-only access enforced by SQLite itself."""

import hashlib

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from test_reports_support import STUDY_AUROC, build_study_db, run_cli

from bench.reports.frames import QueryError, metrics_frame, query_frame, runs_frame

# One run per STUDY_AUROC entry plus the second PatchCore seed; two metrics each.
N_RUNS = len(STUDY_AUROC) + 1


@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    return build_study_db(tmp_path_factory.mktemp("query") / "results.db")


def counts(path) -> tuple[int, int, int]:
    with create_engine(f"sqlite:///{path}").connect() as connection:
        return tuple(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()
                     for table in ("runs", "metrics", "weights"))


def test_query_prints_rows(study_db, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "query",
                             "SELECT method, count(*) AS n FROM runs GROUP BY method ORDER BY method",
                             "--format", "csv", "--db", str(study_db))
    assert code == 0, err
    assert out.splitlines() == ["method,n", "cutpaste,4", "padim,8", "patchcore,9"]


def test_query_writes_csv_file(study_db, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs.csv"
    code, _, err = run_cli(monkeypatch, capsys, "query", "SELECT id FROM runs", "--out", str(out),
                           "--db", str(study_db))
    assert code == 0, err
    assert len(pd.read_csv(out)) == N_RUNS


@pytest.mark.parametrize("sql", [
    "INSERT INTO runs (config_hash, config, method, method_options, backbone, weights_name, dataset, root, "
    "category, layers, image_size, seed, status, versions) VALUES ('x', '{}', 'padim', '{}', 'resnet18', "
    "'random', 'mvtec', '/data', 'bottle', '1,2,3', 256, 0, 'done', '{}')",
    "UPDATE metrics SET value = 1.0",
    "DELETE FROM runs",
    "DROP TABLE metrics",
    "ATTACH DATABASE 'attached.db' AS other",
    "PRAGMA query_only = OFF",
])
def test_query_rejects_writes(study_db, sql, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = counts(study_db), hashlib.sha256(study_db.read_bytes()).hexdigest()
    code, out, err = run_cli(monkeypatch, capsys, "query", sql, "--db", str(study_db))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "rejected by the database" in err
    assert (counts(study_db), hashlib.sha256(study_db.read_bytes()).hexdigest()) == before
    assert not (tmp_path / "attached.db").exists()


def test_query_missing_database(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "query", "SELECT 1", "--db", str(tmp_path / "none.db"))
    assert code == 2
    assert "database not found" in err
    assert not (tmp_path / "none.db").exists()


def test_query_writes_parquet(study_db, tmp_path, monkeypatch, capsys):
    out = tmp_path / "tables" / "metrics.parquet"
    sql = "SELECT run_id, name, value, null_reason FROM metrics ORDER BY run_id, name"
    code, _, err = run_cli(monkeypatch, capsys, "query", sql, "--out", str(out), "--db", str(study_db))
    assert code == 0, err

    written = pd.read_parquet(out)
    expected = query_frame(study_db, sql)
    assert len(written) == 2 * N_RUNS
    pd.testing.assert_frame_equal(written, expected)


def test_parquet_needs_out_file(study_db, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "query", "SELECT id FROM runs", "--format", "parquet",
                             "--db", str(study_db))
    assert code == 2
    assert "--out FILE.parquet" in err
    assert out == ""


def test_query_frame_rejects_insert(study_db):
    with pytest.raises(QueryError, match="rejected by the database"):
        query_frame(study_db, "INSERT INTO weights (name, arch, source, mean, std, meta, created_at) "
                              "VALUES ('w', 'resnet18', 'test', '[0,0,0]', '[1,1,1]', '{}', '2026-01-01')")


def test_query_frame_keeps_colons(study_db):
    frame = query_frame(study_db, "SELECT '10:30' AS time, count(*) AS n FROM runs WHERE layers LIKE '%,%'")
    assert frame.to_dict("records") == [{"time": "10:30", "n": N_RUNS}]


def test_runs_frame_has_metric_columns(study_db):
    frame = runs_frame(study_db)
    row = frame[(frame["category"] == "cable") & (frame["method"] == "padim")
                & (frame["weights_name"] == "fractals")].iloc[0]
    assert len(frame) == N_RUNS
    assert row["image_auroc"] == pytest.approx(0.85)
    assert row["pixel_auroc"] == pytest.approx(0.84)
    assert row["eval_size"] == 256
    assert frame["backbone_fine_tuned"].sum() == 4


def test_metrics_frame_is_long(study_db):
    frame = metrics_frame(study_db)
    assert len(frame) == 2 * N_RUNS
    assert set(frame["name"]) == {"image_auroc", "pixel_auroc"}
    assert {"run_id", "value", "null_reason", "method", "weights_name", "seed"} <= set(frame.columns)


def test_query_syntax_error_is_not_a_rejection(study_db, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "query", "SELEC 1", "--db", str(study_db))
    assert code == 2
    assert 'query failed: near "SELEC": syntax error' in err
    assert "rejected" not in err


def test_unknown_out_suffix_rejected(study_db, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs.xlsx"
    code, _, err = run_cli(monkeypatch, capsys, "query", "SELECT id FROM runs", "--out", str(out), "--db", str(study_db))
    assert code == 2
    assert f"cannot tell the format of --out {out} from its suffix" in err
    assert not out.exists()


def test_format_overrides_out_suffix(study_db, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs.data"
    code, _, err = run_cli(monkeypatch, capsys, "query", "SELECT id FROM runs ORDER BY id LIMIT 2", "--out", str(out),
                           "--format", "csv", "--db", str(study_db))
    assert code == 0, err
    assert out.read_text().splitlines()[0] == "id"
