"""`bench pretrain`: tiny real trainings on CPU, their checkpoints, resume, registration and loading."""

import io
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from rich.console import Console
from sqlalchemy import create_engine, text
from torch.nn import functional as F

from bench.errors import ConfigError, WeightsError
from bench.fractals.recipes import FractalImages, make_recipe
from bench.fractals.systems import sample_sigma_systems
from bench.methods.padim import Padim
from bench.pretrain.config import PretrainConfig, RuntimeOptions, resolve_config, validate_config
from bench.pretrain.data import EpochBatchSampler
from bench.pretrain.module import PretrainModule, count_correct, evaluate
from bench.pretrain.train import Registration, resume_run, start_run
from bench.schema.db import open_engine, session_factory
from bench.weights.architectures import get_architecture
from bench.weights.loading import load_into
from bench.weights.registry import add_weights, resolve_weights

from conftest import make_bottle_subset

# 2 epochs x 32 images in batches of 8: 8 optimizer steps at 32 px.
TINY = ["--arch", "resnet18", "--recipe", "single", "--classes", "4", "--image-size", "32", "--epochs", "2",
        "--samples-per-epoch", "32", "--batch-size", "8", "--held-out-per-class", "4", "--mean", "0.3",
        "--std", "0.4"]


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def rows(db: Path, query: str) -> list[tuple]:
    with create_engine(f"sqlite:///{db}").connect() as connection:
        return [tuple(row) for row in connection.execute(text(query))]


def quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A tiny pre-training through the command line, registered as `fractals-test` in a fresh database."""
    work = tmp_path_factory.mktemp("pretrain")
    db = work / "bench.db"
    result = bench("pretrain", *TINY, "--name", "fractals-test", "--db", str(db), cwd=work)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (work / "runs" / "pretrain").iterdir()
    return work, db, run_dir, result


def lite_config(**changes) -> PretrainConfig:
    """Return a 6-step EfficientNet-Lite0 configuration with OneCycle (two epochs of 3 steps)."""
    config = PretrainConfig(arch="efficientnet_lite0", recipe="single", classes=3, image_size=32, epochs=2,
                            samples_per_epoch=24, batch_size=8, held_out_per_class=2, schedule="onecycle")
    return replace(config, **changes)


def test_cli_writes_run_folder(cli_run):
    _, _, run_dir, _ = cli_run
    names = {path.name for path in run_dir.iterdir()}
    for expected in ("backbone.pth", "last.ckpt", "filters.png", "log.jsonl", "pretrain.log", "config.json", "systems.npz"):
        assert expected in names
    assert not [name for name in names if name.endswith(".partial")]


def test_meta_records_training(cli_run):
    _, _, run_dir, _ = cli_run
    meta = torch.load(run_dir / "backbone.pth", weights_only=True)["meta"]
    assert meta["arch"] == "resnet18"
    assert meta["recipe"] == "single"
    assert meta["seed"] == 0
    assert meta["classes"] == 4
    assert meta["image_size"] == 32
    assert meta["steps"] == 8
    assert meta["samples_seen"] == 64
    assert 0.0 <= meta["train_accuracy"] <= 1.0
    assert 0.0 <= meta["held_out_accuracy"] <= 1.0
    assert meta["held_out_images"] == 16
    assert meta["chance_accuracy"] == pytest.approx(0.25)
    assert meta["mean"] == pytest.approx([0.3, 0.3, 0.3])
    assert meta["std"] == pytest.approx([0.4, 0.4, 0.4])
    assert meta["versions"]["torch"].startswith("2.")
    assert meta["versions"]["lightning"].startswith("2.")
    assert meta["run_id"] == run_dir.name


def test_training_used_stored_normalisation(cli_run):
    _, _, run_dir, _ = cli_run
    trained = torch.load(run_dir / "last.ckpt", weights_only=True)["state_dict"]
    meta = torch.load(run_dir / "backbone.pth", weights_only=True)["meta"]
    assert trained["mean"].flatten().tolist() == pytest.approx(meta["mean"])
    assert trained["std"].flatten().tolist() == pytest.approx(meta["std"])


def test_backbone_has_timm_keys(cli_run):
    _, _, run_dir, _ = cli_run
    backbone = torch.load(run_dir / "backbone.pth", weights_only=True)["backbone"]
    reference = timm.create_model("resnet18", pretrained=False, features_only=True).state_dict()
    assert set(reference) <= set(backbone)
    assert not [key for key in backbone if key.startswith("fc.")]


def test_registered_with_normalisation(cli_run):
    _, db, run_dir, _ = cli_run
    (name, arch, source, path, mean, std), = rows(db, "SELECT name, arch, source, path, mean, std FROM weights")
    assert name == "fractals-test"
    assert arch == "resnet18"
    assert source == f"bench pretrain {run_dir.name}"
    assert Path(path) == run_dir / "backbone.pth"
    assert json.loads(mean) == pytest.approx([0.3, 0.3, 0.3])
    assert json.loads(std) == pytest.approx([0.4, 0.4, 0.4])


def test_padim_loads_every_tensor(cli_run):
    _, db, _, _ = cli_run
    with session_factory(open_engine(db))() as session:
        record = resolve_weights(session, "fractals-test", "resnet18")
    padim = Padim(get_architecture("resnet18"), [1, 2, 3], Padim.resolve_options({}))
    module = padim.backbone_module()
    assert load_into(module, record) == len(module.state_dict())


def test_log_separates_data_and_model(cli_run):
    _, _, run_dir, _ = cli_run
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [record for record in records if record["event"] == "step"]
    epochs = [record for record in records if record["event"] == "epoch"]
    assert steps[-1]["step"] == 8
    assert all(record["data_images_per_s"] > 0 for record in steps)
    assert all(record["model_images_per_s"] > 0 for record in steps)
    assert [record["epoch"] for record in epochs] == [0, 1]


def test_filters_png_shows_first_conv(cli_run):
    _, _, run_dir, _ = cli_run
    with Image.open(run_dir / "filters.png") as image:
        width, height = image.size
        mode = image.mode
    # resnet18's conv1 has 64 filters of 7x7: an 8 x 8 grid with 1-pixel gaps, 12 px per weight.
    assert mode == "RGB"
    assert width == (8 * 8 - 1) * 12
    assert height == (8 * 8 - 1) * 12


def test_bench_run_uses_fractal_weights(cli_run, mvtec_root):
    work, db, _, _ = cli_run
    root = make_bottle_subset(mvtec_root, work / "mvtec", n_train=6, n_per_defect=2)
    result = bench("run", "--method", "padim", "--weights", "fractals-test", "--backbone", "resnet18", "--dataset",
                   "mvtec", "--root", str(root), "--category", "bottle", "--image-size", "64", "--db", str(db),
                   "--no-save-maps", cwd=work)
    assert result.returncode == 0, result.stderr
    (status, weights_name, mean), = rows(
        db, "SELECT runs.status, runs.weights_name, weights.mean FROM runs JOIN weights ON runs.weights_id = weights.id"
    )
    assert status == "done"
    assert weights_name == "fractals-test"
    assert json.loads(mean) == pytest.approx([0.3, 0.3, 0.3])


def test_finished_configuration_is_reused(cli_run):
    work, db, run_dir, _ = cli_run
    modified = (run_dir / "backbone.pth").stat().st_mtime_ns
    result = bench("pretrain", *TINY, "--name", "fractals-test", "--db", str(db), cwd=work)
    assert result.returncode == 0, result.stderr
    assert "has already finished" in result.stdout
    assert (run_dir / "backbone.pth").stat().st_mtime_ns == modified
    assert rows(db, "SELECT count(*) FROM weights WHERE name = 'fractals-test'") == [(1,)]


def test_bad_option_is_one_line(tmp_path):
    args = [*TINY, "--db", str(tmp_path / "bench.db")]
    args[args.index("--samples-per-epoch") + 1] = "30"
    result = bench("pretrain", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid --samples-per-epoch 30: it must be a multiple of --classes 4" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "bench.db").exists()


@pytest.mark.parametrize(("name", "message"), [
    ("", "invalid --name '': pass a non-empty name, for example fractals"),
    ("imagenet", "invalid --name 'imagenet': random and imagenet are built-in weights"),
])
def test_invalid_name_is_one_line(tmp_path, name, message):
    result = bench("pretrain", *TINY, "--name", name, "--db", str(tmp_path / "bench.db"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {message}")
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "bench.db").exists()


def test_resume_matches_uninterrupted(tmp_path):
    config = lite_config()
    no_registry = Registration(None)
    full = start_run(config, RuntimeOptions(), tmp_path / "full", no_registry, quiet())
    stopped = start_run(config, RuntimeOptions(stop_at_step=4), tmp_path / "split", no_registry, quiet())
    checkpoint = stopped.run_dir / "last.ckpt"
    saved_step = torch.load(checkpoint, weights_only=True)["global_step"]
    # The resumed session loads its data in a worker process; items depend only on their key.
    resumed = resume_run(checkpoint, RuntimeOptions(workers=1), no_registry, quiet())

    assert full.global_step == 6
    assert stopped.global_step == 4
    assert saved_step == 4
    assert resumed.global_step == 6
    assert resumed.meta["samples_seen"] == full.meta["samples_seen"]
    full_weights = torch.load(full.backbone_path, weights_only=True)["backbone"]
    resumed_weights = torch.load(resumed.backbone_path, weights_only=True)["backbone"]
    different = [key for key in full_weights if not torch.equal(full_weights[key], resumed_weights[key])]
    assert different == []
    assert resumed.meta["train_accuracy"] == full.meta["train_accuracy"]


# 120 steps of about 40 ms each on 2 CPU cores (measured), so a signal after the first steps lands mid-run.
SIGNALLED = ["--arch", "resnet18", "--recipe", "single", "--classes", "4", "--image-size", "32", "--epochs", "30",
             "--samples-per-epoch", "32", "--batch-size", "8", "--held-out-per-class", "4", "--single-thread"]


def signal_after_steps(args: list[str], work: Path, signum: int, steps: int = 3) -> tuple[subprocess.CompletedProcess, Path]:
    """Start `bench pretrain ARGS`, send `signum` once log.jsonl has `steps` step records; return the result and run folder."""
    process = subprocess.Popen([sys.executable, "-m", "bench", "pretrain", *args], cwd=work, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    logged = 0
    while process.poll() is None and time.monotonic() < deadline and logged < steps:
        logs = list((work / "runs" / "pretrain").glob("*/log.jsonl"))
        logged = logs[0].read_text().count('"event": "step"') if logs else 0
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    (run_dir,) = (work / "runs" / "pretrain").iterdir()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), run_dir


def stopped_step(stdout: str) -> int:
    return int(re.search(r"stopped at step (\d+) of 120", " ".join(stdout.split())).group(1))


def test_ctrl_c_saves_step_for_resume(tmp_path):
    db = tmp_path / "bench.db"
    stopped, run_dir = signal_after_steps([*SIGNALLED, "--name", "fract-int", "--checkpoint-every", "7",
                                           "--db", str(db)], tmp_path, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    step = stopped_step(stopped.stdout)
    assert 3 <= step < 120
    assert torch.load(run_dir / "last.ckpt", weights_only=True)["global_step"] == step

    # The resumed session keeps the name and checkpoint interval of the first one.
    resumed = bench("pretrain", "--resume", str(run_dir / "last.ckpt"), "--single-thread", "--db", str(db), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert rows(db, "SELECT name FROM weights") == [("fract-int",)]
    saved = re.findall(r"saved \S+ at step (\d+)", (run_dir / "pretrain.log").read_text())
    assert [int(value) for value in saved[1:4]] == [7, 14, 21]


def test_resume_of_finished_run_keeps_backbone(tmp_path):
    db = tmp_path / "bench.db"
    stopped, run_dir = signal_after_steps([*SIGNALLED, "--name", "fract-done", "--db", str(db)], tmp_path,
                                          signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    first = bench("pretrain", "--resume", str(run_dir / "last.ckpt"), "--single-thread", "--db", str(db), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    backbone = (run_dir / "backbone.pth").read_bytes()

    again = bench("pretrain", "--resume", str(run_dir / "last.ckpt"), "--db", str(db), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "has already finished" in " ".join(again.stdout.split())
    assert (run_dir / "backbone.pth").read_bytes() == backbone
    assert rows(db, "SELECT count(*) FROM weights") == [(1,)]


def test_sigterm_saves_step(tmp_path):
    stopped, run_dir = signal_after_steps([*SIGNALLED, "--no-register"], tmp_path, signal.SIGTERM)
    assert stopped.returncode == 143, stopped.stderr
    step = stopped_step(stopped.stdout)
    assert torch.load(run_dir / "last.ckpt", weights_only=True)["global_step"] == step
    assert json.loads((run_dir / "session.json").read_text()) == {"name": None, "checkpoint_every": 1000}


STOPPED = PretrainConfig(arch="resnet18", recipe="single", classes=4, image_size=32, epochs=2, samples_per_epoch=32,
                         batch_size=8, held_out_per_class=2)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """The last.ckpt of the STOPPED run, stopped at step 2 of 8 (tests must not change it)."""
    runs_dir = tmp_path_factory.mktemp("stopped")
    result = start_run(STOPPED, RuntimeOptions(stop_at_step=2), runs_dir, Registration(None), quiet())
    return result.run_dir / "last.ckpt"


def test_unfinished_configuration_asks_to_resume(stopped_run):
    runs_dir = stopped_run.parent.parent
    with pytest.raises(ConfigError, match=f"continue it with `bench pretrain --resume {stopped_run}`"):
        start_run(STOPPED, RuntimeOptions(), runs_dir, Registration(None), quiet())


def test_resume_rejects_other_arch(stopped_run):
    with pytest.raises(ConfigError, match="--arch resnet50 differs from the checkpoint's resnet18"):
        resume_run(stopped_run, RuntimeOptions(), Registration(None), quiet(), overrides={"arch": "resnet50"})


def test_truncated_checkpoint_is_rejected(stopped_run, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(stopped_run.read_bytes()[:5000])
    with pytest.raises(WeightsError, match=f"cannot read checkpoint {broken}"):
        resume_run(broken, RuntimeOptions(), Registration(None), quiet())


def test_checkpoint_of_other_arch_is_rejected(stopped_run, tmp_path):
    checkpoint = torch.load(stopped_run, weights_only=True)
    checkpoint["bench_pretrain"]["config"]["arch"] = "resnet50"
    relabelled = tmp_path / "last.ckpt"
    torch.save(checkpoint, relabelled)
    with pytest.raises(WeightsError, match="do not fit resnet50"):
        resume_run(relabelled, RuntimeOptions(), Registration(None), quiet())


def test_foreign_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": timm.create_model("resnet18", pretrained=False).state_dict()}, path)
    with pytest.raises(WeightsError, match="not a `bench pretrain` checkpoint"):
        resume_run(path, RuntimeOptions(), Registration(None), quiet())


def test_backbone_rejected_for_other_arch(cli_run, tmp_path):
    _, _, run_dir, _ = cli_run
    with session_factory(open_engine(tmp_path / "other.db"))() as session:
        with pytest.raises(WeightsError, match="were trained for resnet18, not resnet50: pass --arch resnet18"):
            add_weights(session, "fractals", "resnet50", run_dir / "backbone.pth")


def test_folder_run_reads_imagefolder(tmp_path):
    systems = sample_sigma_systems(2, seed=3)
    images = FractalImages(systems, make_recipe("single", 2, classes=2, per_class=6, size=32, points=5000))
    for index in range(len(images)):
        folder = tmp_path / "tree" / f"class{images.class_of(index)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images.image(index)).save(folder / f"{index}.png")
    config = resolve_config(None, {"arch": "resnet18", "image_size": 32, "epochs": 1, "batch_size": 4,
                                   "held_out_per_class": 2, "data_dir": str(tmp_path / "tree")})
    result = start_run(config, RuntimeOptions(), tmp_path / "runs", Registration(None), quiet())
    assert result.meta["recipe"] == "folder"
    assert result.meta["classes"] == 2
    assert result.meta["samples_per_epoch"] == 8
    assert result.meta["held_out_images"] == 4
    assert result.global_step == 2


def test_folder_rejects_classes_option(tmp_path):
    with pytest.raises(ConfigError, match="--classes does not apply to --data-dir"):
        resolve_config(None, {"classes": 10, "data_dir": str(tmp_path)})


def test_preset_yields_to_explicit_option():
    config = resolve_config("cpu-small", {"epochs": 1, "arch": "resnet18"})
    assert config.epochs == 1
    assert config.arch == "resnet18"
    assert config.image_size == 32


def test_paper_preset_is_the_study_recipe():
    config = resolve_config("paper", {})
    assert (config.arch, config.recipe, config.classes, config.system_count) == ("wide_resnet50_2", "multi-system", 1000, 100_000)
    assert (config.image_size, config.epochs, config.samples_per_epoch, config.batch_size) == (256, 100, 1_000_000, 512)
    assert (config.lr, config.momentum, config.weight_decay, config.schedule) == (0.1, 0.9, 1e-4, "step")
    assert config.mean == (0.2, 0.2, 0.2)
    assert config.std == (0.5, 0.5, 0.5)


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError, match="unknown preset 'gpu': use one of paper, cpu-small, demo"):
        resolve_config("gpu", {})


def test_small_image_is_rejected():
    with pytest.raises(ConfigError, match="invalid --image-size 16: use at least 32 pixels"):
        validate_config(PretrainConfig(image_size=16))


def test_run_id_follows_configuration():
    assert PretrainConfig().run_id() == PretrainConfig().run_id()
    assert PretrainConfig(seed=1).run_id() != PretrainConfig().run_id()


def test_sampler_resumes_mid_epoch():
    position = {"step": 0}
    sampler = EpochBatchSampler(40, 8, seed=5, rank=0, world_size=1, position=lambda: position["step"])
    first_epoch = list(sampler)
    position["step"] = 5
    second_epoch = list(sampler)
    position["step"] = 7
    resumed = list(sampler)
    assert len(first_epoch) == 5
    assert {key[0] for batch in second_epoch for key in batch} == {1}
    assert resumed == second_epoch[2:]
    assert sorted(index for batch in first_epoch for _, index in batch) == list(range(40))


def test_sampler_splits_global_batch():
    single = list(EpochBatchSampler(32, 8, seed=1, rank=0, world_size=1, position=lambda: 0))
    halves = [list(EpochBatchSampler(32, 8, seed=1, rank=rank, world_size=2, position=lambda: 0)) for rank in (0, 1)]
    for step, batch in enumerate(single):
        assert sorted(halves[0][step] + halves[1][step]) == sorted(batch)
        assert len(halves[0][step]) == 4


def test_multi_label_uses_bce_and_top1_hit():
    module = PretrainModule(PretrainConfig(arch="resnet18", recipe="multi-instance", classes=4))
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 3.0, 0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert float(module.loss(logits, targets)) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, targets)))
    assert int(count_correct(logits, targets, multi_label=True)) == 1


def test_evaluate_reports_chance():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    loader = [(torch.rand(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0]))]
    accuracy, seen, chance = evaluate(model, loader, torch.device("cpu"), multi_label=False)
    assert seen == 6
    assert 0.0 <= accuracy <= 1.0
    assert chance == pytest.approx(0.2)


def test_resume_restores_random_state():
    module = PretrainModule(PretrainConfig(arch="resnet18", classes=4))
    torch.manual_seed(11)
    saved = torch.get_rng_state()
    module.on_load_checkpoint({"bench_pretrain": {
        "counted_epoch": 0, "epoch_correct": 0, "epoch_seen": 0, "last_epoch_accuracy": None, "train_time_s": 0.0,
        "rng": {"torch": saved, "cuda": []},
    }})
    torch.manual_seed(12)
    module.on_train_start()
    assert torch.equal(torch.get_rng_state(), saved)


def test_no_decay_on_norms_and_biases():
    module = PretrainModule(PretrainConfig(arch="resnet18", classes=4))
    optimizer = module.configure_optimizers()["optimizer"]
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == pytest.approx(1e-4)
    assert plain["weight_decay"] == 0.0
    assert all(parameter.ndim > 1 for parameter in decayed["params"])
    assert all(parameter.ndim == 1 for parameter in plain["params"])
