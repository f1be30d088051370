"""Every method end to end on a real subset of MVTec AD bottle, with a registered non-ImageNet checkpoint."""

from pathlib import Path

import pytest
import timm
import torch
from rich.console import Console
from sqlalchemy import create_engine, text

from bench.data import load_dataset
from bench.data.loading import TrainData
from bench.methods import METHODS, get_method
from bench.runners.config import RunConfig
from bench.runners.local import DONE, execute
from bench.runners.progress import RichPhases
from bench.schema.db import open_engine, session_factory
from bench.weights.architectures import get_architecture
from bench.weights.loading import load_into
from bench.weights.registry import add_weights, resolve_weights

WEIGHTS = "fractal-test"
# One epoch on 12 images of 64 px: enough to exercise training, small enough for a CPU.
SMALL = {"epochs": "1", "train_batch_size": "4"}
# A backbone tensor every method's feature extractor holds.
PROBE = "conv1.weight"


@pytest.fixture
def database(tmp_path):
    """A results database in tmp_path with a seeded random resnet18 registered as WEIGHTS."""
    path = tmp_path / "results.db"
    sessions = session_factory(open_engine(path))
    torch.manual_seed(1234)
    checkpoint = tmp_path / "resnet18-fractal.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), checkpoint)
    with sessions() as session:
        add_weights(session, WEIGHTS, "resnet18", checkpoint, mean=(0.2,), std=(0.5,))
    return path, sessions, checkpoint


def small_options(method: str) -> dict:
    adapter = get_method(method)
    return adapter.resolve_options({key: value for key, value in SMALL.items() if key in adapter.options})


def rows(db: Path, query: str) -> list[tuple]:
    with create_engine(f"sqlite:///{db}").connect() as connection:
        return [tuple(row) for row in connection.execute(text(query))]


def build(method: str, sessions, levels=None):
    """Build `method` on resnet18 and load the registered checkpoint; return (adapter, checkpoint state)."""
    adapter_type = get_method(method)
    adapter = adapter_type(get_architecture("resnet18"), list(levels or adapter_type.default_levels),
                           small_options(method))
    with sessions() as session:
        record = resolve_weights(session, WEIGHTS, "resnet18")
    return adapter, record


def train_data(root: Path) -> TrainData:
    category = load_dataset("mvtec", root, "bottle")
    return TrainData(category.train, 64, (0.2, 0.2, 0.2), (0.5, 0.5, 0.5), 4, seed=0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_run_stores_metrics(method, bottle_subset, database, tmp_path):
    db, sessions, _ = database
    config = RunConfig(method=method, backbone="resnet18", weights=WEIGHTS, dataset="mvtec",
                       root=str(bottle_subset), category="bottle", levels=get_method(method).default_levels,
                       image_size=64, eval_size=64, method_options=small_options(method))

    outcome = execute(config, sessions, tmp_path / "runs", Console(quiet=True), save_anomaly_maps=False)

    assert outcome.status == DONE, outcome.error
    metrics = dict(rows(db, "SELECT name, value FROM metrics"))
    assert set(metrics) == {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max"}
    assert metrics["image_auroc"] is not None
    assert 0.0 <= metrics["image_auroc"] <= 1.0
    (fine_tuned, weights_name), = rows(db, "SELECT backbone_fine_tuned, weights_name FROM runs")
    assert bool(fine_tuned) == get_method(method).fine_tunes_backbone
    assert weights_name == WEIGHTS


def test_panda_pixel_metrics_are_null(bottle_subset, database, tmp_path):
    db, sessions, _ = database
    config = RunConfig(method="panda", backbone="resnet18", weights=WEIGHTS, dataset="mvtec",
                       root=str(bottle_subset), category="bottle", levels=(4,), image_size=64, eval_size=64,
                       method_options=small_options("panda"))

    outcome = execute(config, sessions, tmp_path / "runs", Console(quiet=True), save_anomaly_maps=False)

    assert outcome.status == DONE, outcome.error
    metrics = {name: (value, reason) for name, value, reason in rows(db, "SELECT name, value, null_reason FROM metrics")}
    assert metrics["image_auroc"][0] is not None
    for name in ("pixel_auroc", "aupro", "pixel_f1_max"):
        assert metrics[name] == (None, "method panda produces no anomaly maps (image scores only)")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpoint_loads_into_backbone(method, database):
    _, sessions, checkpoint = database
    adapter, record = build(method, sessions)
    expected = torch.load(checkpoint, weights_only=True)[PROBE]
    before = adapter.backbone_module().state_dict()[PROBE].clone()

    loaded = load_into(adapter.backbone_module(), record)

    after = adapter.backbone_module().state_dict()[PROBE]
    assert loaded > 0
    assert not torch.equal(before, expected)
    assert torch.equal(after, expected)


def test_fastflow_uses_loaded_encoder(bottle_subset, database):
    _, sessions, checkpoint = database
    adapter, record = build("fastflow", sessions)
    load_into(adapter.backbone_module(), record)

    adapter.fit(train_data(bottle_subset), RichPhases(Console(quiet=True)))

    used = adapter.model.feature_extractor.state_dict()[PROBE]
    assert torch.equal(used, torch.load(checkpoint, weights_only=True)[PROBE])


def test_cutpaste_fine_tunes_loaded_backbone(bottle_subset, database):
    _, sessions, checkpoint = database
    adapter, record = build("cutpaste", sessions)
    load_into(adapter.backbone_module(), record)

    adapter.fit(train_data(bottle_subset), RichPhases(Console(quiet=True)))

    tuned = adapter.backbone_module().state_dict()["layer4.1.conv2.weight"]
    original = torch.load(checkpoint, weights_only=True)["layer4.1.conv2.weight"]
    assert not torch.equal(tuned, original)


def test_panda_freezes_early_levels(bottle_subset, database):
    _, sessions, checkpoint = database
    adapter, record = build("panda", sessions)
    load_into(adapter.backbone_module(), record)
    original = torch.load(checkpoint, weights_only=True)

    adapter.fit(train_data(bottle_subset), RichPhases(Console(quiet=True)))

    state = adapter.backbone_module().state_dict()
    assert torch.equal(state["layer2.1.conv2.weight"], original["layer2.1.conv2.weight"])
    assert not torch.equal(state["layer4.1.conv2.weight"], original["layer4.1.conv2.weight"])
