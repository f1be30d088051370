"""The methods' own algorithms against references: coreset, nearest neighbours, PaDiM Gaussians, scoring."""

import numpy as np
import pytest
import torch
from anomalib.models.components.stats import MultiVariateGaussian
from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from rich.console import Console
from typer.testing import CliRunner

from bench.data import load_dataset
from bench.data.loading import TrainData
from bench.errors import ConfigError
from bench.methods import get_method
from bench.methods.cli import app as methods_app
from bench.methods.coreset import _mean_distance_to, _pruned_greedy, greedy_coreset
from bench.methods.cutpaste_augment import cut_paste, scar
from bench.methods.padim import GaussianBank
from bench.methods.patchcore import nearest_neighbours
from bench.methods.training import train_epochs, validation_split
from bench.runners.config import RunConfig
from bench.runners.progress import RichPhases
from bench.weights.architectures import get_architecture


def plain_greedy(points: np.ndarray, initial: np.ndarray, size: int) -> list[int]:
    """The greedy k-centre loop of the PatchCore reference code, one full distance column per step."""
    minimum = initial.astype(np.float64).copy()
    selected = []
    for _ in range(size):
        index = int(np.argmax(minimum))
        selected.append(index)
        minimum = np.minimum(minimum, np.sqrt(((points - points[index]) ** 2).sum(1)))
        minimum[index] = -1.0
    return selected


def test_pruned_greedy_matches_plain_greedy():
    rng = np.random.default_rng(0)
    # Clustered points, as patch features are, so that pruning skips most clusters.
    centres = rng.normal(size=(20, 16)) * 5
    points = (centres[rng.integers(20, size=3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    initial = _mean_distance_to(points, np.array([3, 70, 900]))

    selected = _pruned_greedy(points, initial, 300)

    assert selected.tolist() == plain_greedy(points, initial, 300)


def test_coreset_selects_distinct_rows():
    features = torch.randn(2000, 200)
    selected = greedy_coreset(features, 150, generator=torch.Generator().manual_seed(0))
    assert selected.shape == (150,)
    assert len(set(selected.tolist())) == 150


def test_coreset_is_seeded():
    features = torch.randn(1000, 200)
    first = greedy_coreset(features, 50, generator=torch.Generator().manual_seed(3))
    again = greedy_coreset(features, 50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_coreset_rejects_invalid_size():
    with pytest.raises(ValueError, match="1..10"):
        greedy_coreset(torch.randn(10, 4), 11)


def test_nearest_neighbours_match_anomalib():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(3000, 64, generator=generator)
    queries = torch.randn(5000, 64, generator=generator)

    distances, indices = nearest_neighbours(queries, bank, (bank * bank).sum(1), k=3)

    reference = PatchcoreModel.euclidean_dist(queries, bank).topk(3, largest=False, dim=1)
    torch.testing.assert_close(distances, reference.values, rtol=1e-4, atol=1e-4)
    assert torch.equal(indices, reference.indices)


def fitted_bank(embeddings: torch.Tensor, chunk_size: int) -> GaussianBank:
    batch, channels, height, width = embeddings.shape
    bank = GaussianBank(height * width, channels, chunk_size)
    vectors = embeddings.reshape(batch, channels, height * width).permute(2, 0, 1)
    for start, stop in bank.chunks():
        bank.fit_chunk(start, stop, vectors[start:stop].clone())
    return bank


@pytest.fixture
def padim_case():
    """Training embeddings (12, 40, 9, 9) and test embeddings (3, 40, 9, 9), 81 positions."""
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(12, 40, 9, 9, generator=generator) * 2 + torch.randn(1, 40, 9, 9, generator=generator)
    return train, torch.randn(3, 40, 9, 9, generator=generator) * 2


def test_padim_chunks_equal_unchunked(padim_case):
    train, test = padim_case
    unchunked = fitted_bank(train, chunk_size=0).mahalanobis(test)
    for chunk_size in (1, 7, 64):
        chunked = fitted_bank(train, chunk_size).mahalanobis(test)
        # Batched products and factorisations of other sizes round differently: 1.5e-5 at most here.
        torch.testing.assert_close(chunked, unchunked, rtol=1e-4, atol=0, msg=f"chunk_size {chunk_size}")


def test_padim_matches_anomalib_gaussian(padim_case):
    train, test = padim_case
    mean, inverse = MultiVariateGaussian().fit(train)
    reference = AnomalyMapGenerator.compute_distance(test, [mean, inverse])

    torch.testing.assert_close(fitted_bank(train, chunk_size=7).mahalanobis(test), reference, rtol=1e-4, atol=1e-4)


def test_cflow_score_ignores_batch(bottle_subset):
    category = load_dataset("mvtec", bottle_subset, "bottle")
    train = TrainData(category.train[:4], 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 4, seed=0)
    method = get_method("cflow")
    torch.manual_seed(0)
    adapter = method(get_architecture("resnet18"), [2, 3, 4], method.resolve_options({"epochs": "1"}))
    adapter.fit(train, RichPhases(Console(quiet=True)))
    images = next(train.batches())

    together, _ = adapter.predict(images)
    alone, _ = adapter.predict(images[:1])

    torch.testing.assert_close(alone, together[:1], rtol=1e-5, atol=1e-6)


def test_cut_paste_changes_one_rectangle():
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    augmented = cut_paste(image, torch.Generator().manual_seed(1))
    changed = (augmented != image).any(dim=0)
    rows, columns = changed.nonzero(as_tuple=True)
    assert changed.any()
    assert changed.sum() <= (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
    assert changed.float().mean() <= 0.15


def test_scar_is_seeded():
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    first = scar(image, torch.Generator().manual_seed(5))
    again = scar(image, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    assert not torch.equal(first, image)


def test_validation_split_is_disjoint():
    train, validation = validation_split(20, 0.25, seed=4)
    assert len(validation) == 5
    assert not set(train) & set(validation)
    assert sorted(train + validation) == list(range(20))
    assert validation_split(20, 0.25, seed=4) == (train, validation)


def test_early_stopping_restores_best_epoch(bottle_subset):
    category = load_dataset("mvtec", bottle_subset, "bottle")
    train = TrainData(category.train, 32, (0.5,) * 3, (0.5,) * 3, 4, seed=0)
    weight = torch.nn.Linear(1, 1, bias=False)
    weight.weight.data.fill_(0.0)
    config = {"epochs": 10, "train_batch_size": 4, "validation_fraction": 0.25, "patience": 2}

    def step(images):
        # Each step moves the weight by +1; the validation loss is lowest at weight 6.
        weight.weight.data += 1.0
        return 0.0

    def validation_loss(images):
        return abs(weight.weight.item() - 6.0)

    result = train_epochs(train, RichPhases(Console(quiet=True)), config, step, validation_loss, weight, "test")

    # 9 training images in batches of 4: 3 steps per epoch, so weight 6 is the end of epoch 2.
    assert result.best_epoch == 2
    assert result.epochs_run == 4
    assert weight.weight.item() == 6.0


@pytest.mark.parametrize(("method", "backbone", "levels", "message"), [
    ("fastflow", "efficientnet_lite0", [1, 2, 3], "supported backbones: resnet18, wide_resnet50_2"),
    ("reverse_distillation", "efficientnet_lite0", [1, 2, 3], "supported backbones: resnet18, resnet50"),
    ("fastflow", "resnet18", [2, 3], "built for layers 1,2,3"),
    ("reverse_distillation", "resnet18", [1, 2], "built for layers 1,2,3"),
])
def test_unsupported_configuration_fails(method, backbone, levels, message):
    adapter = get_method(method)
    with pytest.raises(ConfigError, match=message):
        adapter(get_architecture(backbone), levels, adapter.resolve_options({}))


def test_stfpm_builds_without_download(monkeypatch):
    import timm.models._builder

    def reject_download(*args, **kwargs):
        raise AssertionError("STFPM tried to load pretrained weights")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", reject_download)
    stfpm = get_method("stfpm")
    adapter = stfpm(get_architecture("resnet18"), [1, 2, 3], stfpm.resolve_options({}))
    assert adapter.backbone_module() is adapter.model.teacher_model.feature_extractor


def test_options_change_run_hash():
    method = get_method("stfpm")
    base = dict(method="stfpm", backbone="resnet18", weights="random", dataset="mvtec", root="/data",
                category="bottle", levels=(1, 2, 3))
    default = RunConfig(**base, method_options=method.resolve_options({}))
    shorter = RunConfig(**base, method_options=method.resolve_options({"epochs": "2"}))
    assert default.hash("x") != shorter.hash("x")
    assert default.method_options["epochs"] == 100


@pytest.mark.parametrize("method", ["fastflow", "cflow", "reverse_distillation", "stfpm", "cutpaste", "panda"])
def test_methods_show_lists_epochs(method):
    result = CliRunner().invoke(methods_app, ["show", method], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "epochs" in result.output
