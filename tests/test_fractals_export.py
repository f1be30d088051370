"""Disk export and the `bench fractals` commands: layout, manifest, resume after SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.errors import ConfigError
from bench.fractals.cli import app
from bench.fractals.export import export_images
from bench.fractals.recipes import FractalImages, make_recipe
from bench.fractals.systems import file_sha256, load_systems, sample_sigma_systems, save_systems


@pytest.fixture(scope="module")
def systems_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("systems") / "systems.npz"
    save_systems(sample_sigma_systems(12, seed=4), path)
    return path


def png_files(out):
    return sorted(path.relative_to(out).as_posix() for path in out.rglob("*.png"))


def test_export_layout(systems_file, tmp_path):
    spec = make_recipe("single", 12, classes=3, per_class=4, size=32, points=5_000, seed=1)
    result = export_images(systems_file, spec, tmp_path, workers=1)
    assert result.written == 12
    assert png_files(tmp_path) == [f"{c:05d}/{i:05d}.png" for c in range(3) for i in range(4)]


def test_export_matches_dataset(systems_file, tmp_path):
    spec = make_recipe("single", 12, classes=2, per_class=2, size=32, points=5_000, seed=1)
    export_images(systems_file, spec, tmp_path, workers=2)
    images = FractalImages(load_systems(systems_file), spec)
    on_disk = np.asarray(Image.open(tmp_path / "00001" / "00001.png"))
    assert np.array_equal(on_disk, images.image(3))


def test_manifest_contents(systems_file, tmp_path):
    spec = make_recipe("ofdb", 12, classes=2, per_class=2, size=32, points=5_000, seed=6)
    export_images(systems_file, spec, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["recipe"] == "ofdb"
    assert manifest["seed"] == 6
    assert manifest["classes"] == 2
    assert manifest["per_class"] == 2
    assert manifest["size"] == 32
    assert manifest["systems_sha256"] == file_sha256(systems_file)
    assert manifest["complete"] is True


def test_multi_instance_labels_file(systems_file, tmp_path):
    spec = make_recipe("multi-instance", 12, classes=3, per_class=2, size=32, points=5_000, seed=2)
    export_images(systems_file, spec, tmp_path)
    labels = json.loads((tmp_path / "00002" / "labels.json").read_text())
    images = FractalImages(load_systems(systems_file), spec)
    assert labels == {"00000.png": images.target(4), "00001.png": images.target(5)}


def test_other_dataset_rejected(systems_file, tmp_path):
    export_images(systems_file, make_recipe("single", 12, classes=2, per_class=1, size=32, points=5_000), tmp_path)
    other = make_recipe("single", 12, classes=2, per_class=1, size=32, points=5_000, seed=8)
    with pytest.raises(ConfigError, match="export of another dataset"):
        export_images(systems_file, other, tmp_path)


EXPORT_SCRIPT = """
import sys
from bench.fractals.export import export_images
from bench.fractals.recipes import make_recipe
spec = make_recipe("single", 12, classes=12, per_class=60, size=96, points=60_000, seed=3)
export_images(sys.argv[1], spec, sys.argv[2], workers=2)
"""


def test_killed_export_resumes(systems_file, tmp_path):
    out = tmp_path / "export"
    process = subprocess.Popen(
        [sys.executable, "-c", EXPORT_SCRIPT, str(systems_file), str(out)],
        start_new_session=True,
    )
    # Kill the export's whole process group (parent and pool workers) once some images exist.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.rglob("*.png"))) < 40:
        if process.poll() is not None:
            break
        time.sleep(0.005)
    finished_early = process.poll() is not None
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not finished_early, "the export finished before it could be killed"
    done_before = len(list(out.rglob("*.png")))
    assert 0 < done_before < 720

    spec = make_recipe("single", 12, classes=12, per_class=60, size=96, points=60_000, seed=3)
    result = export_images(systems_file, spec, out, workers=2)
    assert result.kept >= done_before - 2
    assert result.kept + result.written == 720
    assert png_files(out) == [f"{c:05d}/{i:05d}.png" for c in range(12) for i in range(60)]
    assert list(out.rglob("*.partial")) == []
    for path in out.rglob("*.png"):
        with Image.open(path) as image:
            image.load()
            assert image.size == (96, 96)
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


runner = CliRunner()


def test_cli_sample_and_preview(tmp_path):
    systems = tmp_path / "systems.npz"
    result = runner.invoke(app, ["sample", "--systems", "20", "--n-maps", "2-4", "--seed", "1", "--out", str(systems)])
    assert result.exit_code == 0, result.output
    assert load_systems(systems).settings["n_maps"] == [2, 4]
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(
        app, ["preview", "--systems", str(systems), "--count", "4", "--size", "32", "--points", "5000", "--out", str(sheet)]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(sheet).size == (66, 66)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["sample", "--n-maps", "9-2", "--out", "x.npz"], "invalid map-count range '9-2'"),
        (["render", "--systems", "SYSTEMS", "--size", "0", "--out", "OUT"], "invalid image size 0"),
        (["render", "--systems", "missing.npz", "--out", "OUT"], "systems file 'missing.npz' not found"),
        (["preview", "--systems", "SYSTEMS", "--recipe", "bogus", "--out", "x.png"], "unknown recipe 'bogus'"),
        (["render", "--systems", "SYSTEMS", "--workers", "0", "--out", "OUT"], "invalid worker count 0"),
    ],
)
def test_cli_bad_input(systems_file, tmp_path, arguments, message):
    placeholders = {"SYSTEMS": str(systems_file), "OUT": str(tmp_path / "out")}
    arguments = [placeholders.get(argument, argument) for argument in arguments]
    result = runner.invoke(app, arguments)
    assert isinstance(result.exception, ConfigError)
    assert message in str(result.exception)
    assert "\n" not in str(result.exception)


def test_cli_help_gives_defaults():
    result = runner.invoke(app, ["render", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Image side in pixels. [default: 256]" in result.output
    assert "Default: 1 for ofdb, else 1000." in result.output
