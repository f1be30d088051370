"""End to end: `bench run` on a real subset of MVTec AD bottle into a tmp database, read back."""

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def padim_args(root: Path, db: Path, *extra: str) -> list[str]:
    return ["run", "--method", "padim", "--weights", "random", "--backbone", "resnet18", "--dataset", "mvtec",
            "--root", str(root), "--category", "bottle", "--image-size", "64", "--db", str(db), *extra]


@pytest.fixture
def finished_run(bottle_subset, tmp_path):
    db = tmp_path / "results.db"
    result = bench(*padim_args(bottle_subset, db), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return bottle_subset, db, result


def rows(db: Path, query: str) -> list[tuple]:
    with create_engine(f"sqlite:///{db}").connect() as connection:
        return [tuple(row) for row in connection.execute(text(query))]


def test_run_stores_row_and_metrics(finished_run):
    _, db, _ = finished_run
    runs = rows(db, "SELECT status, method, backbone, weights_name, category, layers, image_size, error FROM runs")
    assert runs == [("done", "padim", "resnet18", "random", "bottle", "1,2,3", 64, None)]

    metrics = dict(rows(db, "SELECT name, value FROM metrics"))
    assert set(metrics) == {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max"}
    for name, value in metrics.items():
        assert 0.0 <= value <= 1.0, name
    assert rows(db, "SELECT DISTINCT resolution FROM metrics WHERE name = 'aupro'") == [("64x64",)]


def test_run_records_environment(finished_run):
    _, db, _ = finished_run
    (wall_time, peak_memory, versions, log_path), = rows(db, "SELECT wall_time_s, peak_memory_mb, versions, log_path FROM runs")
    assert wall_time > 0
    assert peak_memory > 100
    assert '"anomalib": "2.7' in versions
    assert "metrics" not in Path(log_path).name
    assert "image_auroc" in Path(log_path).read_text()


def test_rerun_skips_and_force_reruns(finished_run, tmp_path):
    root, db, _ = finished_run
    (first_id,), = rows(db, "SELECT id FROM runs")
    (first_start,), = rows(db, "SELECT started_at FROM runs")

    again = bench(*padim_args(root, db), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "skipped" in again.stdout
    assert rows(db, "SELECT id FROM runs") == [(first_id,)]

    forced = bench(*padim_args(root, db, "--force"), cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    (second_start,), = rows(db, "SELECT started_at FROM runs")
    assert second_start > first_start
    assert rows(db, "SELECT count(*) FROM metrics") == [(5,)]


def test_report_reads_back(finished_run, tmp_path):
    _, db, _ = finished_run
    (auroc,), = rows(db, "SELECT value FROM metrics WHERE name = 'image_auroc'")
    report = bench("report", "--table", "auroc", "--format", "csv", "--db", str(db), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert lines[0] == "dataset,metric,category,method,source,mean,std,n,best"
    assert lines[1] == f"mvtec,image_auroc,bottle,padim,random,{auroc:.6f},,1,0"


def test_category_typo_is_one_line(bottle_subset, tmp_path):
    args = padim_args(bottle_subset, tmp_path / "results.db")
    args[args.index("bottle")] = "botle"
    result = bench(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "did you mean 'bottle'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results.db").exists()


def test_unknown_weights_fail_before_running(bottle_subset, tmp_path):
    args = padim_args(bottle_subset, tmp_path / "results.db")
    args[args.index("random")] = "nosuch"
    result = bench(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown weights 'nosuch'" in result.stderr
    # The database did not exist before, so the failed command removed the one it created.
    assert not (tmp_path / "results.db").exists()


def test_only_normal_test_images_store_null(bottle_subset, tmp_path):
    category = bottle_subset / "bottle"
    for defect in ("broken_large", "contamination"):
        for path in (category / "test" / defect).iterdir():
            path.unlink()
        (category / "test" / defect).rmdir()
    db = tmp_path / "results.db"
    result = bench(*padim_args(bottle_subset, db), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (value, reason), = rows(db, "SELECT value, null_reason FROM metrics WHERE name = 'image_auroc'")
    assert value is None
    assert "one label" in reason
