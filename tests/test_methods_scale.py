"""PatchCore and PaDiM on the full MVTec AD bottle category: the time and memory goals (nightly)."""

import pytest
from rich.console import Console

from bench.methods import get_method
from bench.runners.config import RunConfig
from bench.runners.local import DONE, execute
from bench.schema.db import open_engine, session_factory
from bench.schema.models import Run

# Goals on a 2-core CPU: PatchCore end to end within 5 minutes, PaDiM within 6 GiB of peak memory.
PATCHCORE_SECONDS = 300
PADIM_MEGABYTES = 6 * 1024


def full_bottle(method: str, mvtec_root, tmp_path):
    config = RunConfig(method=method, backbone="wide_resnet50_2", weights="random", dataset="mvtec",
                       root=str(mvtec_root), category="bottle", levels=get_method(method).default_levels,
                       image_size=256, eval_size=256, method_options=get_method(method).resolve_options({}))
    sessions = session_factory(open_engine(tmp_path / "results.db"))
    return execute(config, sessions, tmp_path / "runs", Console(quiet=True), save_anomaly_maps=False), sessions


@pytest.mark.slow
def test_patchcore_full_bottle_time(mvtec_root, tmp_path):
    outcome, sessions = full_bottle("patchcore", mvtec_root, tmp_path)
    assert outcome.status == DONE, outcome.error
    with sessions() as session:
        run = session.get(Run, outcome.run_id)
        assert run.wall_time_s <= PATCHCORE_SECONDS
    assert {metric.name: metric.value for metric in outcome.metrics}["image_auroc"] is not None


@pytest.mark.slow
def test_padim_full_bottle_memory(mvtec_root, tmp_path):
    outcome, sessions = full_bottle("padim", mvtec_root, tmp_path)
    assert outcome.status == DONE, outcome.error
    with sessions() as session:
        run = session.get(Run, outcome.run_id)
        assert run.peak_memory_mb <= PADIM_MEGABYTES
