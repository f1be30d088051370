"""Paired statistics across categories and bootstrap intervals over test images, checked against scipy."""

import numpy as np
import pytest
from scipy import stats
from test_reports_support import STUDY_AUROC, add_run, build_study_db, run_cli, write_maps

from bench.metrics import auroc
from bench.reports.published import published_table
from bench.reports.stats import (auroc_from_ranks, auroc_interval, bootstrap_mean_ci, image_auroc_intervals,
                                 paired_tests)
from bench.reports.tables import build_tables, load_results
from bench.schema.db import open_engine, session_factory


@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    return build_study_db(tmp_path_factory.mktemp("stats") / "results.db")


@pytest.fixture(scope="module")
def tests_by_method(study_db):
    tables, _ = build_tables(open_engine(study_db), "image_auroc")
    return {test.method: test for test in paired_tests(tables[0], resamples=2000)}


def test_pairs_are_categories(tests_by_method):
    patchcore = tests_by_method["patchcore"]
    assert patchcore.treatment == "fractals"
    assert patchcore.baseline == "imagenet"
    assert patchcore.categories == ("bottle", "cable", "carpet", "grid")


def test_differences_average_seeds(tests_by_method):
    bottle = tests_by_method["patchcore"].differences[0]
    assert bottle == pytest.approx(STUDY_AUROC[("bottle", "patchcore", "fractals")] - 0.98)


def test_wilcoxon_matches_scipy(tests_by_method):
    padim = tests_by_method["padim"]
    expected = stats.wilcoxon(np.array(padim.differences))
    assert padim.statistic == pytest.approx(expected.statistic)
    assert padim.p_value == pytest.approx(expected.pvalue)


def test_wilcoxon_exact_for_all_negative(tests_by_method):
    # Four negative differences without ties: the exact two-sided p is 2 / 2**4.
    patchcore = tests_by_method["patchcore"]
    assert patchcore.statistic == 0
    assert patchcore.p_value == pytest.approx(0.125)


def test_bootstrap_matches_scipy(tests_by_method):
    padim = tests_by_method["padim"]
    expected = stats.bootstrap((np.array(padim.differences),), np.mean, n_resamples=2000, method="percentile",
                               confidence_level=0.95, rng=np.random.default_rng(0))
    assert padim.ci_low == pytest.approx(expected.confidence_interval.low)
    assert padim.ci_high == pytest.approx(expected.confidence_interval.high)


def test_bootstrap_brackets_mean(tests_by_method):
    padim = tests_by_method["padim"]
    assert padim.ci_low <= padim.mean <= padim.ci_high
    assert padim.mean == pytest.approx(np.mean(padim.differences))


def test_bootstrap_is_seeded():
    values = np.array([0.1, -0.3, 0.25, 0.05, -0.1, 0.4])
    assert bootstrap_mean_ci(values, 1000, seed=3) == bootstrap_mean_ci(values, 1000, seed=3)
    assert bootstrap_mean_ci(values, 1000, seed=3) != bootstrap_mean_ci(values, 1000, seed=4)


def test_one_pair_has_note(tmp_path):
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        for weights, value in (("imagenet", 0.9), ("fractals", 0.8)):
            add_run(session, method="padim", weights=weights, category="bottle", metrics={"image_auroc": value})
    tables, _ = build_tables(open_engine(path), "image_auroc")
    (test,) = paired_tests(tables[0])
    assert test.p_value is None
    assert test.note == "1 paired category; the test needs 2 or more"


def test_random_is_a_second_baseline(tmp_path):
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        for category in ("bottle", "cable"):
            for weights, value in (("imagenet", 0.9), ("fractals", 0.8), ("random", 0.6)):
                add_run(session, method="padim", weights=weights, category=category, metrics={"image_auroc": value})
    tables, _ = build_tables(open_engine(path), "image_auroc")
    comparisons = [(test.treatment, test.baseline) for test in paired_tests(tables[0])]
    assert comparisons == [("fractals", "imagenet"), ("fractals", "random")]


def test_published_statistics():
    tests = {test.method: test for test in paired_tests(published_table("mvtec", "image_auroc"), resamples=1000)}
    assert len(tests["patchcore"].categories) == 15
    assert tests["patchcore"].mean == pytest.approx(0.751 - 0.987, abs=0.002)
    assert tests["patchcore"].p_value < 0.001


def test_rank_auroc_matches_mann_whitney():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 30 + [1] * 20)
    scores = np.round(rng.normal(size=50) + labels, 1)
    expected = stats.mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic / (30 * 20)
    assert auroc_from_ranks(labels, scores) == pytest.approx(expected)
    assert auroc_from_ranks(labels, scores) == pytest.approx(auroc(labels, scores))


def test_interval_brackets_auroc():
    rng = np.random.default_rng(2)
    labels = np.array([0] * 40 + [1] * 25)
    scores = rng.normal(size=65) + labels
    interval = auroc_interval(labels, scores, resamples=1000)
    assert interval.ci_low < interval.auroc < interval.ci_high
    assert (interval.n_normal, interval.n_anomalous) == (40, 25)


def test_interval_of_perfect_separation():
    interval = auroc_interval(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]), resamples=500)
    assert (interval.auroc, interval.ci_low, interval.ci_high) == (1.0, 1.0, 1.0)


def test_interval_of_one_label():
    interval = auroc_interval(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3]))
    assert interval.auroc is None
    assert "one label" in interval.note


def test_intervals_from_maps_files(tmp_path):
    path = tmp_path / "results.db"
    labels, scores = [0, 0, 0, 1, 1], [0.1, 0.5, 0.2, 0.4, 0.9]
    maps = write_maps(tmp_path / "maps.npz", labels, scores)
    with session_factory(open_engine(path))() as session, session.begin():
        add_run(session, method="padim", weights="imagenet", category="bottle", maps_path=maps,
                metrics={"image_auroc": 5 / 6})
        add_run(session, method="padim", weights="fractals", category="bottle", metrics={"image_auroc": 0.5})
    intervals = image_auroc_intervals(load_results(open_engine(path), "image_auroc"), resamples=500)
    with_maps = intervals[intervals["source"] == "imagenet"].iloc[0]
    without_maps = intervals[intervals["source"] == "fractals"].iloc[0]
    assert with_maps["auroc"] == pytest.approx(5 / 6)
    assert with_maps["n_anomalous"] == 2
    assert with_maps["ci_low"] <= 5 / 6 <= with_maps["ci_high"]
    assert without_maps["note"] == "no maps file stored with the run"


def test_report_prints_statistics(study_db, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "report", "--table", "auroc", "--resamples", "500",
                             "--db", str(study_db))
    assert code == 0, err
    assert "paired differences across categories" in out
    assert "Wilcoxon" in out


def test_report_ci_needs_image_auroc(study_db, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "report", "--table", "pixel_auroc", "--ci", "--db",
                           str(study_db))
    assert code == 2
    assert "--ci applies to image AUROC only" in err


def write_imagenet_random_db(path):
    with session_factory(open_engine(path))() as session, session.begin():
        for category in ("bottle", "cable"):
            for weights, value in (("imagenet", 0.9), ("random", 0.6)):
                add_run(session, method="padim", weights=weights, category=category, metrics={"image_auroc": value})
    return path


def test_report_unknown_treatment_rejected(study_db, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "report", "--table", "auroc", "--treatment", "fractal",
                             "--resamples", "500", "--db", str(study_db))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "--treatment 'fractal'" in err
    assert "choose one of: fractals, imagenet" in err
    assert out == ""


def test_report_all_unknown_treatment_rejected(study_db, tmp_path, monkeypatch, capsys):
    out = tmp_path / "reports"
    code, _, err = run_cli(monkeypatch, capsys, "report", "--all", "--treatment", "fractal", "--out", str(out),
                           "--db", str(study_db))
    assert code == 2
    assert "--treatment 'fractal'" in err
    assert not (out / "index.html").exists()


def test_default_treatment_missing_notes(tmp_path, monkeypatch, capsys):
    path = write_imagenet_random_db(tmp_path / "results.db")
    code, out, err = run_cli(monkeypatch, capsys, "report", "--table", "auroc", "--format", "markdown",
                             "--resamples", "500", "--db", str(path))
    assert code == 0, err
    assert "| bottle | **90.0**/60.0 |" in out
    assert "paired differences" not in out
    assert "no paired statistics" in err
    assert "--treatment with one of: imagenet, random" in err


def test_given_treatment_is_compared(tmp_path, monkeypatch, capsys):
    path = write_imagenet_random_db(tmp_path / "results.db")
    code, out, err = run_cli(monkeypatch, capsys, "report", "--table", "auroc", "--format", "markdown",
                             "--treatment", "random", "--resamples", "500", "--db", str(path))
    assert code == 0, err
    assert "| padim | random − imagenet | 2 |" in out
    assert "no paired statistics" not in err
