"""The CLI starts without importing the heavy libraries that only some commands need."""

import os
import subprocess
import sys

import pytest

# torch, timm and anomalib take seconds to import; `bench --help` needs none of them.
HEAVY = ("torch", "timm", "anomalib", "numba")


def loaded_after(code: str) -> set[str]:
    """Return which HEAVY modules a fresh interpreter has imported after running `code`."""
    script = f"import sys\n{code}\nprint(' '.join(name for name in {HEAVY!r} if name in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(completed.stdout.split())


def test_cli_mount_imports_no_heavy_library():
    assert loaded_after("import bench.cli\nbench.cli._mount_commands()") == set()


@pytest.mark.parametrize("package", ["bench.methods", "bench.fractals"])
def test_package_import_is_lazy(package):
    assert loaded_after(f"import {package}") == set()


def test_method_lookup_imports_adapter():
    code = "from bench.methods import get_method\nprint(get_method('padim').name)"
    assert "torch" in loaded_after(code)


def test_version_option_prints_package_version():
    from importlib.metadata import version

    completed = subprocess.run([sys.executable, "-m", "bench", "--version"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"bench {version('bench')}"


@pytest.mark.parametrize(("arguments", "message"), [
    (["run", "--method", "padim", "--image-size", "64", "--image-size", "96", "--db", "r.db"],
     "--image-size given 2 times (64, 96), but it takes one value"),
    (["report", "--table", "auroc", "--table=aupro", "--db", "r.db"], "--table given 2 times (auroc, aupro)"),
    (["fractals", "sample", "--systems", "3", "--systems", "4", "--out", "s.npz"], "--systems given 2 times (3, 4)"),
])
def test_repeated_single_option_rejected(arguments, message, tmp_path):
    completed = subprocess.run([sys.executable, "-m", "bench", *arguments], cwd=tmp_path, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 2
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
    assert message in completed.stderr
    assert list(tmp_path.iterdir()) == []


def test_repeated_axis_option_accepted():
    from bench.cli import check_repeated_options

    check_repeated_options(["run", "--method", "padim", "--method", "patchcore", "--seed", "0", "--seed", "1",
                            "--image-size", "64"])


def test_help_shows_no_value_for_flags():
    completed = subprocess.run([sys.executable, "-m", "bench", "fractals", "preview", "--help"],
                               capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "120"})
    assert completed.returncode == 0, completed.stderr

    lines = completed.stdout.splitlines()
    flag_lines = [line for line in lines if "--help" in line or "--no-augment" in line]
    assert len(flag_lines) == 2
    for line in flag_lines:
        assert "<bool>" not in line


def bench_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *arguments], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("arguments", "line"), [
    (["run", "--image-size", "16"],
     "error: Invalid value for '--image-size': 16 is not in the range x>=32. (see `bench run --help`)"),
    (["data", "check"], "error: Missing option '--root'. (see `bench data check --help`)"),
    (["runn"], "error: No such command 'runn'. Did you mean 'run'? (see `bench --help`)"),
])
def test_usage_error_is_one_line(arguments, line):
    completed = bench_cli(*arguments)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [line]
    assert completed.stdout == ""


def test_group_without_command_shows_help():
    completed = bench_cli("data")
    assert completed.returncode == 2
    assert "Usage: bench data [OPTIONS] COMMAND" in completed.stdout
    assert completed.stderr == ""


def test_help_and_version_exit_zero():
    assert bench_cli("status", "--help").returncode == 0
    assert bench_cli("--version").returncode == 0
