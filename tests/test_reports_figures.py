"""Figures written from real databases: spider chart, layer ablation, filters, qualitative maps, --all."""

import re

import numpy as np
import pytest
import timm
import torch
from test_reports_support import (STUDY_AUROC, add_run, build_study_db, run_cli, tiny_maps, write_maps,
                                  write_tiny_category)

from bench.reports.figures import group_means, layer_values, layers_figure, spider_figure
from bench.reports.filters import filters_figure, load_filters, normalise_filters
from bench.reports.qualitative import f1_max_threshold, qualitative_figure
from bench.reports.tables import RunFilter, build_tables, load_results
from bench.schema.db import open_engine, session_factory
from bench.weights.registry import add_weights


def assert_figure_files(paths):
    png, pdf = paths
    assert png.suffix == ".png"
    assert pdf.suffix == ".pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert png.stat().st_size > 10_000
    assert pdf.stat().st_size > 1_000


@pytest.fixture(scope="module")
def study_tables(tmp_path_factory):
    path = build_study_db(tmp_path_factory.mktemp("figures") / "results.db")
    tables, _ = build_tables(open_engine(path), "image_auroc")
    return tables


def test_group_means(study_tables):
    means = group_means(study_tables)
    textures = means[(means["group"] == "textures") & (means["method"] == "patchcore")
                     & (means["source"] == "fractals")].iloc[0]
    expected = (STUDY_AUROC[("carpet", "patchcore", "fractals")] + STUDY_AUROC[("grid", "patchcore", "fractals")]) / 2
    assert textures["value"] == pytest.approx(expected)
    assert textures["n"] == 2


def test_spider_written(study_tables, tmp_path):
    assert_figure_files(spider_figure(study_tables, tmp_path / "spider"))


@pytest.fixture(scope="module")
def ablation_frames(tmp_path_factory):
    path = tmp_path_factory.mktemp("layers") / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        for layers, base in (("1,2", 0.80), ("2,3", 0.90), ("3,4", 0.70), ("1,2,3", 0.85)):
            for weights, shift in (("imagenet", 0.05), ("fractals", -0.2)):
                for category in ("bottle", "carpet"):
                    value = base + shift
                    add_run(session, method="patchcore", weights=weights, category=category, layers=layers,
                            metrics={"image_auroc": value, "pixel_auroc": value, "aupro": value - 0.1})
        # Only one layer set has this category, so it must not enter the means.
        add_run(session, method="patchcore", weights="imagenet", category="grid", layers="2,3",
                metrics={"image_auroc": 0.1, "pixel_auroc": 0.1, "aupro": 0.1})
    engine = open_engine(path)
    return {metric: load_results(engine, metric) for metric in ("image_auroc", "pixel_auroc", "aupro")}


def test_layer_values_use_common_categories(ablation_frames):
    values = layer_values(ablation_frames, "mvtec")
    bar = values[(values["metric"] == "image_auroc") & (values["layers"] == "2,3")
                 & (values["source"] == "imagenet")].iloc[0]
    assert bar["value"] == pytest.approx(0.95)
    assert bar["n"] == 2


def test_layers_written(ablation_frames, tmp_path):
    assert_figure_files(layers_figure(ablation_frames, "mvtec", tmp_path / "layers"))


@pytest.fixture
def filters_db(tmp_path):
    torch.manual_seed(11)
    checkpoint = tmp_path / "fractals_resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), checkpoint)
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session:
        add_weights(session, "fractals", "resnet18", checkpoint)
    return path, checkpoint


def test_filters_come_from_checkpoint(filters_db):
    path, checkpoint = filters_db
    with session_factory(open_engine(path))() as session:
        panel = load_filters(session, "fractals", "resnet18")
    assert panel.key == "conv1.weight"
    assert panel.weight.shape == (64, 3, 7, 7)
    assert np.array_equal(panel.weight, torch.load(checkpoint)["conv1.weight"].numpy())


def test_filters_scaled_per_filter():
    weight = np.random.default_rng(0).normal(size=(4, 3, 5, 5))
    weight[3] = 0.2
    scaled = normalise_filters(weight)
    assert scaled[:3].reshape(3, -1).min(axis=1).tolist() == [0, 0, 0]
    assert scaled[:3].reshape(3, -1).max(axis=1).tolist() == [1, 1, 1]
    assert np.all(scaled[3] == 0.5)


def test_filters_written(filters_db, tmp_path):
    path, _ = filters_db
    with session_factory(open_engine(path))() as session:
        panels = [load_filters(session, "fractals", "resnet18"), load_filters(session, "random", "resnet18", seed=1)]
    assert_figure_files(filters_figure(panels, tmp_path / "filters"))


def test_f1_threshold_matches_brute_force():
    rng = np.random.default_rng(5)
    maps = rng.random((3, 6, 6)).astype(np.float16)
    masks = rng.random((3, 6, 6)) < 0.3
    maps[masks] += np.float16(0.4)
    best_f1, best_threshold = -1.0, None
    for threshold in np.unique(maps):
        predicted = maps >= threshold
        f1 = 2 * (predicted & masks).sum() / (predicted.sum() + masks.sum())
        if f1 > best_f1:
            best_f1, best_threshold = f1, float(threshold)
    threshold, f1 = f1_max_threshold(maps, masks)
    assert threshold == best_threshold
    assert f1 == pytest.approx(best_f1)


@pytest.fixture
def maps_db(tmp_path):
    root = tmp_path / "mvtec"
    paths = write_tiny_category(root, "bottle")
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        for weights, noise in (("imagenet", 0.3), ("fractals", 0.9)):
            maps = write_maps(tmp_path / f"maps_{weights}.npz", [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9],
                              tiny_maps(paths, 16, noise, seed=1), [str(p) for p in paths])
            add_run(session, method="patchcore", weights=weights, category="bottle", root=str(root),
                    maps_path=maps, eval_size=16, metrics={"image_auroc": 1.0, "pixel_auroc": 0.99, "aupro": 0.9})
    return path


def test_qualitative_written(maps_db, tmp_path):
    paths = qualitative_figure(open_engine(maps_db), RunFilter(), "mvtec", "bottle", "patchcore",
                               tmp_path / "qualitative", requested=["crack/001.png", "good/000"])
    assert_figure_files(paths)


def test_qualitative_unknown_image(maps_db, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "figure", "qualitative", "--dataset", "mvtec", "--category", "bottle",
                           "--method", "patchcore", "--image", "crack/009", "--out", str(tmp_path / "q"),
                           "--db", str(maps_db))
    assert code == 2
    assert "test image 'crack/009' not found" in err


def test_report_all_writes_index(maps_db, tmp_path, monkeypatch, capsys):
    out = tmp_path / "reports"
    code, printed, err = run_cli(monkeypatch, capsys, "report", "--all", "--resamples", "500", "--out", str(out),
                                 "--db", str(maps_db))
    assert code == 0, err
    incomplete = [line for line in printed.splitlines() if line.startswith("incomplete:")]
    assert incomplete
    assert f"{len(incomplete)} of " in printed
    assert "tables and figures are incomplete or missing" in printed
    index = (out / "index.html").read_text()
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()
                     and not path.name.startswith("index."))
    linked = sorted(set(re.findall(r'href="([^"]+)"', index)))
    assert linked == written
    assert "figures/spider.png" in written
    assert "figures/qualitative_mvtec_patchcore_bottle.png" in written
    assert "tables/mvtec_image_auroc_published.tex" in written
    assert (out / "index.md").read_text().count("![") == 2
    assert "not drawn or incomplete: imagenet: cannot load imagenet weights" in index


def test_groups_add_other():
    from bench.reports.groups import assign_groups

    groups = assign_groups("mvtec", ["carpet", "bottle", "weave"])
    assert groups == {"textures": ["carpet"], "objects": ["bottle"], "other": ["weave"]}


def test_qualitative_seed_help():
    import typer

    from bench.cli import app

    command = typer.main.get_command(app).commands["figure"].commands["qualitative"]
    (seed,) = [parameter for parameter in command.params if parameter.name == "seed"]
    assert "lowest seed" in seed.help
    assert "mean" not in seed.help


def test_report_all_lists_missing_maps(maps_db, tmp_path, monkeypatch, capsys):
    with session_factory(open_engine(maps_db))() as session, session.begin():
        # PaDiM stored no maps, and its random runs add a source that PatchCore lacks.
        for weights in ("imagenet", "random"):
            add_run(session, method="padim", weights=weights, category="bottle", metrics={"image_auroc": 0.9})
        # CutPaste has maps for one of its two sources only.
        maps = write_maps(tmp_path / "maps_cutpaste.npz", [0, 1], [0.1, 0.9])
        add_run(session, method="cutpaste", weights="imagenet", category="bottle", maps_path=maps,
                metrics={"image_auroc": 1.0})
        add_run(session, method="cutpaste", weights="fractals", category="bottle", metrics={"image_auroc": 1.0})
    out = tmp_path / "reports"
    code, printed, err = run_cli(monkeypatch, capsys, "report", "--all", "--resamples", "500", "--out", str(out),
                                 "--db", str(maps_db))
    assert code == 0, err
    index = (out / "index.md").read_text()
    assert (out / "figures" / "qualitative_mvtec_patchcore_bottle.png").is_file()
    assert ("not drawn or incomplete: no padim run on mvtec stored anomaly maps (runs.maps_path is empty); "
            "rerun them with --save-maps") in index
    assert ("not drawn or incomplete: no mvtec category has cutpaste maps for every weights source "
            "(imagenet, fractals); categories with maps: imagenet in 1, fractals in 0") in index
    assert "incomplete: mvtec: padim, maps and masks" in printed


def test_filters_unknown_weights_leaves_no_database(tmp_path, monkeypatch, capsys):
    db = tmp_path / "new.db"
    code, _, err = run_cli(monkeypatch, capsys, "figure", "filters", "--weights", "fractalz", "--backbone", "resnet18",
                           "--out", str(tmp_path / "filters"), "--db", str(db))
    assert code == 2
    assert "unknown weights 'fractalz'" in err
    assert list(tmp_path.iterdir()) == []
