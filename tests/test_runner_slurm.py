"""The Slurm job array that `bench sweep --runner slurm` submits, and its option parsing."""

import os
import stat
from pathlib import Path

import pytest
from submitit.slurm.slurm import _make_sbatch_string
from typer.testing import CliRunner

from bench.cli import app
from bench.data.demo import write_demo_dataset
from bench.errors import ConfigError
from bench.runners.cli import _parse_gigabytes, _parse_minutes
from bench.runners.slurm import ClusterOptions, make_executor


def cluster_options(log_dir: Path) -> ClusterOptions:
    return ClusterOptions(cluster="slurm", partition="gpu", gpus_per_job=1, cpus_per_job=8, mem_gb=32, time_min=90,
                          max_parallel=16, runs_per_job=1, log_dir=log_dir, wait=False)


@pytest.fixture
def fake_srun(tmp_path, monkeypatch):
    """Put an `srun` on PATH, which is all that submitit checks before it writes sbatch files."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_sbatch_requests_resources(tmp_path, fake_srun):
    executor = make_executor(cluster_options(tmp_path / "jobs"))._executor
    script = _make_sbatch_string(command="python -m submitit.core._submit", folder=executor.folder, map_count=37,
                                 **executor.parameters)
    lines = script.splitlines()
    assert "#SBATCH --partition=gpu" in lines
    assert "#SBATCH --gpus-per-node=1" in lines
    assert "#SBATCH --cpus-per-task=8" in lines
    assert "#SBATCH --mem=32GB" in lines
    assert "#SBATCH --time=90" in lines
    assert "#SBATCH --array=0-36%16" in lines
    assert "#SBATCH --requeue" in lines
    assert "#SBATCH --signal=USR2@120" in lines
    assert f"#SBATCH --output={tmp_path / 'jobs'}/%A_%a_0_log.out" in lines


def test_slurm_missing_is_one_error(tmp_path, monkeypatch):
    write_demo_dataset(tmp_path / "demo", size=64, n_train=8, n_test_good=3, n_test_per_defect=2)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    grid = tmp_path / "grid.toml"
    grid.write_text('method = "padim"\nbackbone = "resnet18"\nweights = "random"\nroot = "demo"\ncategory = "all"\n')
    result = CliRunner().invoke(app, ["sweep", str(grid), "--runner", "slurm", "--db", str(tmp_path / "r.db")])
    assert isinstance(result.exception, ConfigError)
    assert "cannot submit to Slurm from this machine" in str(result.exception)
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize(("text", "minutes"), [("90", 90), ("01:30:00", 90), ("45:30", 46), ("1-02:00:00", 1560)])
def test_time_limit_parses(text, minutes):
    assert _parse_minutes(text) == minutes


@pytest.mark.parametrize(("text", "gigabytes"), [("32G", 32), ("32GB", 32), ("16000M", 16), ("1T", 1024)])
def test_memory_parses(text, gigabytes):
    assert _parse_gigabytes(text) == gigabytes


@pytest.mark.parametrize("text", ["soon", "0", "1:2:3:4"])
def test_invalid_time_limit(text):
    with pytest.raises(ConfigError, match="invalid --time"):
        _parse_minutes(text)


@pytest.mark.parametrize("text", ["lots", "0G", "-1G"])
def test_invalid_memory(text):
    with pytest.raises(ConfigError, match="invalid --mem"):
        _parse_gigabytes(text)
