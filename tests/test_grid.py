"""Grids: the TOML grid file, expansion into configurations, and the --dry-run listing."""

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from bench.cli import app
from bench.data.demo import write_demo_dataset
from bench.errors import ConfigError
from bench.runners.grid import GridSpec, expand, load_grid_file, plan
from bench.runners.runqueue import enqueue
from bench.schema.db import open_engine, session_factory
from bench.schema.models import Run

GRID = """
method = ["padim"]
backbone = "resnet18"
weights = ["random"]
category = ["all"]
layers = ["2", [1, 2]]
seed = [0, 1]
root = "demo"
image_size = 32
save_maps = false

[options]
n_features = 50
"""


def table_rows(output: str) -> list[list[str]]:
    """Return the rows of the --dry-run table: number, status, 7 axis values and the hash."""
    rows = [line.split() for line in output.splitlines()]
    return [row for row in rows if len(row) == 10 and row[0].isdigit()]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grid") / "demo"
    write_demo_dataset(root, size=64, n_train=8, n_test_good=3, n_test_per_defect=2)
    return root


@pytest.fixture
def grid_file(demo_root, tmp_path) -> Path:
    path = demo_root.parent / f"{tmp_path.name}.toml"
    path.write_text(GRID)
    return path


def test_grid_file_reads_axes(grid_file, demo_root):
    spec = load_grid_file(grid_file)
    assert spec.method == ["padim"]
    assert spec.backbone == ["resnet18"]
    assert spec.layers == ["2", "1,2"]
    assert spec.seed == [0, 1]
    assert spec.root == demo_root
    assert spec.image_size == 32
    assert spec.save_maps is False
    assert spec.options == ["n_features=50"]
    assert spec.source == str(grid_file)


@pytest.mark.parametrize(("content", "message"), [
    ('methods = ["padim"]', "unknown key 'methods'; did you mean 'method'?"),
    ('method = ["padim", 3]', "key 'method' must be a list of strings, but it contains an integer (3)"),
    ("method = []", "key 'method' is an empty list"),
    ("image_size = [32, 64]", "key 'image_size' must be a single value, not a list"),
    ('image_size = "32"', "key 'image_size' must be an integer, not a string ('32')"),
    ("save_maps = 1", "key 'save_maps' must be a boolean, not an integer (1)"),
    ("seed = [true]", "key 'seed' must be a list of integers, but it contains a boolean (True)"),
    ("options = 3", "'options' must be a table"),
    ("method = [", "invalid TOML"),
])
def test_grid_file_errors_name_key(tmp_path, content, message):
    path = tmp_path / "grid.toml"
    base = {"method": 'method = ["padim"]', "weights": 'weights = ["random"]', "root": 'root = "data"',
            "category": 'category = ["all"]'}
    lines = [line for key, line in base.items() if not content.startswith(key)]
    path.write_text("\n".join([*lines, content]) + "\n")
    with pytest.raises(ConfigError) as raised:
        load_grid_file(path)
    assert message in str(raised.value)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(("changes", "message"), [
    ({"options": "[options.patchcore]\ncoreset_ratio = 0.01"},
     "table [options.patchcore] names method 'patchcore', which is not in key 'method' (padim)"),
    ({"options": "[options]\ncoreset_ratio = 0.01"}, "table [options]: unknown option 'coreset_ratio' for padim"),
    ({"layers": 'layers = ["5"]'}, "invalid value in key 'layers' '5'; levels must be in 1..4"),
    ({"options": "[options]\nn_features = -1"}, "invalid option n_features=-1"),
    ({"backbone": 'backbone = ["resnet181"]'}, "resnet181"),
])
def test_grid_values_name_file(demo_root, tmp_path, changes, message):
    lines = {"method": 'method = ["padim"]', "backbone": 'backbone = ["resnet18"]', "weights": 'weights = ["random"]',
             "category": 'category = ["all"]', "root": f'root = "{demo_root}"', "layers": 'layers = ["2"]',
             "options": ""}
    lines.update(changes)
    path = tmp_path / "grid.toml"
    path.write_text("\n".join(lines.values()) + "\n")

    with pytest.raises(ConfigError) as raised:
        expand(load_grid_file(path))
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)
    assert "--option" not in str(raised.value)
    assert "--layers" not in str(raised.value)


def test_grid_file_requires_keys(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('method = ["padim"]\nweights = ["random"]\ncategory = ["all"]\n')
    with pytest.raises(ConfigError, match="missing key 'root'"):
        load_grid_file(path)


def test_expand_is_cartesian_product(grid_file):
    configs = expand(load_grid_file(grid_file))
    combinations = [(config.category, config.layers, config.seed) for config in configs]
    assert combinations == [
        ("washer", "2", 0), ("washer", "2", 1), ("washer", "1,2", 0), ("washer", "1,2", 1),
        ("weave", "2", 0), ("weave", "2", 1), ("weave", "1,2", 0), ("weave", "1,2", 1),
    ]
    assert {config.method_options["n_features"] for config in configs} == {50}


def test_expand_collapses_equal_levels(demo_root):
    spec = GridSpec(method=["padim"], weights=["random"], root=demo_root, category=["washer"],
                    backbone=["resnet18"], layers=["1,2", "2,1", "2"])
    assert [config.layers for config in expand(spec)] == ["1,2", "2"]


def test_run_and_sweep_share_hashes(grid_file, demo_root, tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "none.db")
    swept = runner.invoke(app, ["sweep", str(grid_file), "--dry-run", "--db", db])
    ran = runner.invoke(app, ["run", "--method", "padim", "--backbone", "resnet18", "--weights", "random",
                              "--root", str(demo_root), "--category", "all", "--layers", "2", "--layers", "1,2",
                              "--seed", "0", "--seed", "1", "--image-size", "32", "--option", "n_features=50",
                              "--dry-run", "--db", db])
    assert swept.exit_code == 0, swept.output
    assert ran.exit_code == 0, ran.output
    swept_rows = table_rows(swept.output)
    ran_rows = table_rows(ran.output)
    assert len(swept_rows) == 8
    assert [row[-1] for row in swept_rows] == [row[-1] for row in ran_rows]
    assert not Path(db).exists()


def test_dry_run_lists_status(grid_file, tmp_path):
    db = tmp_path / "grid.db"
    sessions = session_factory(open_engine(db))
    with sessions() as session:
        planned = plan(session, expand(load_grid_file(grid_file)))
    queued = enqueue(sessions, planned[:4])
    with sessions() as session, session.begin():
        session.execute(update(Run).where(Run.id == queued[0].run_id).values(status="done"))
        session.execute(update(Run).where(Run.id == queued[1].run_id).values(status="failed"))

    result = CliRunner().invoke(app, ["sweep", str(grid_file), "--dry-run", "--db", str(db)])
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert [row[1] for row in rows] == ["done", "failed", "pending", "pending", "new", "new", "new", "new"]
    assert rows[0][2:9] == ["padim", "resnet18", "random", "mvtec", "washer", "2", "0"]
    assert rows[0][9] == planned[0].config_hash[:12]
    assert "8 runs: 1 done, 1 failed, 0 running, 2 pending, 4 new; dry run, nothing was queued or run" in result.output
    with sessions() as session:
        assert session.query(Run).count() == 4


def test_sweep_error_is_one_line(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('method = ["padim"]\nweights = ["random"]\nroot = "data"\ncategory = ["all"]\nimage_size = "big"\n')
    result = subprocess.run([sys.executable, "-m", "bench", "sweep", str(path), "--db", str(tmp_path / "r.db")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"{path}: key 'image_size' must be an integer, not a string ('big')" in result.stderr
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize(("arguments", "messages"), [
    (["--method", "fastflow", "--backbone", "efficientnet_lite0"],
     ["method fastflow does not support backbone efficientnet_lite0", "supported backbones: resnet18, wide_resnet50_2"]),
    (["--method", "patchcore", "--backbone", "resnet18", "--option", "coreset_ratio=2"],
     ["invalid option coreset_ratio=2.0; pass a fraction in (0, 1]"]),
    (["--method", "stfpm", "--backbone", "resnet18", "--option", "epochs=0"],
     ["invalid option epochs=0 for stfpm; pass 1 or more"]),
])
def test_invalid_run_fails_before_queueing(demo_root, tmp_path, arguments, messages):
    db = tmp_path / "r.db"
    result = subprocess.run([sys.executable, "-m", "bench", "run", *arguments, "--weights", "random",
                             "--root", str(demo_root), "--category", "washer", "--db", str(db)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for message in messages:
        assert message in result.stderr
    assert not db.exists()


def test_local_runner_rejects_slurm_options(grid_file):
    result = CliRunner().invoke(app, ["sweep", str(grid_file), "--partition", "gpu", "--dry-run"])
    assert isinstance(result.exception, ConfigError)
    assert "--partition applies to --runner slurm" in str(result.exception)
