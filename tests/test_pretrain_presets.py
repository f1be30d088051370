"""The CPU presets of `bench pretrain` learn their fractal task (minutes of CPU each, so marked slow)."""

import subprocess
import sys

import pytest
import torch


def pretrain_preset(preset: str, tmp_path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "pretrain", "--preset", preset, "--single-thread", "--name", f"fractals-{preset}",
         "--db", str(tmp_path / "bench.db")],
        cwd=tmp_path, capture_output=True, text=True, timeout=3600,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs" / "pretrain").iterdir()
    return torch.load(run_dir / "backbone.pth", weights_only=True)["meta"]


@pytest.mark.slow
def test_cpu_small_beats_chance(tmp_path):
    meta = pretrain_preset("cpu-small", tmp_path)
    assert meta["chance_accuracy"] == pytest.approx(0.01)
    # Measured: 50 % held-out accuracy on 2000 images (2 CPU cores, about 14 minutes).
    assert meta["held_out_accuracy"] > 0.3


@pytest.mark.slow
def test_demo_beats_chance(tmp_path):
    meta = pretrain_preset("demo", tmp_path)
    assert meta["chance_accuracy"] == pytest.approx(0.1)
    assert meta["held_out_accuracy"] > 0.15
