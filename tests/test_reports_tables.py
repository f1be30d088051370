"""Result tables and their renderings, built from real SQLite databases with known rows."""

import re

import pytest
from test_reports_support import STUDY_SECOND_SEED, add_run, build_study_db, run_cli

from bench.errors import ConfigError
from bench.reports.published import build_comparisons, comparison_grid, load_published
from bench.reports.render import result_grid, to_csv, to_html, to_latex, to_markdown
from bench.reports.tables import MEAN_ROW, RunFilter, build_tables
from bench.schema.db import open_engine, session_factory


@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    return build_study_db(tmp_path_factory.mktemp("study") / "results.db")


@pytest.fixture(scope="module")
def table(study_db):
    tables, _ = build_tables(open_engine(study_db), "image_auroc")
    assert len(tables) == 1
    return tables[0]


def test_rows_methods_sources(table):
    assert table.rows == ["bottle", "cable", "carpet", "grid", MEAN_ROW]
    assert table.methods == ["patchcore", "padim", "cutpaste"]
    assert table.sources == ["imagenet", "fractals"]


def test_seeds_give_mean_and_std(table):
    mean, std, count = table.cells[("bottle", "patchcore")].values["imagenet"]
    assert mean == pytest.approx((1.0 + STUDY_SECOND_SEED) / 2)
    assert std == pytest.approx(0.0282843, abs=1e-6)
    assert count == 2


def test_single_seed_has_no_std(table):
    assert table.cells[("cable", "padim")].values["fractals"] == (0.85, None, 1)


def test_mean_row_averages_categories(table):
    mean, _, count = table.cells[(MEAN_ROW, "patchcore")].values["imagenet"]
    assert mean == pytest.approx((0.98 + 0.99 + 0.98 + 0.975) / 4)
    assert count == 4


def test_best_marks(table):
    assert table.cells[("cable", "padim")].best == {"fractals"}
    assert table.cells[("carpet", "patchcore")].best == {"imagenet"}


def test_tie_marks_both(table):
    assert table.cells[("grid", "padim")].best == {"imagenet", "fractals"}


def test_cutpaste_flagged(table):
    grid = result_grid(table)
    assert grid.header[-1] == "cutpaste†"
    assert any(note.startswith("†") for note in grid.notes)


def test_partial_mean_marked(table):
    grid = result_grid(table)
    mean_row = grid.rows[-1]
    cutpaste_text = "".join(text for text, _ in mean_row[-1])
    assert cutpaste_text == "92.1‡/84.6‡"
    assert "".join(text for text, _ in mean_row[1]) == "98.1/74.9"


def test_markdown_bold_cells(table):
    text = to_markdown(table)
    assert "| cable | **99.0**/70.0 | 80.0/**85.0** | –/– |" in text
    assert "| grid | **97.5**/93.7 | **96.9**/**96.9** | 98.3/**100.0** |" in text


def _latex_body(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(r"\midrule") + 1
    end = lines.index(r"\bottomrule")
    return [line for line in lines[start:end] if line != r"\midrule"]


def test_latex_is_well_formed(table):
    text = to_latex(table)
    unescaped = re.sub(r"\\[{}]", "", text)
    assert unescaped.count("{") == unescaped.count("}")
    assert text.count(r"\toprule") == 1
    assert text.count(r"\midrule") == 2
    assert text.count(r"\bottomrule") == 1
    assert re.findall(r"\\begin\{(\w+)\}", text) == ["table", "tabular"]
    assert re.findall(r"\\end\{(\w+)\}", text) == ["tabular", "table"]
    assert text.isascii()


def test_latex_rows_have_every_column(table):
    rows = _latex_body(to_latex(table))
    assert len(rows) == len(table.rows)
    for row in rows:
        assert row.count("&") == len(table.methods)
        assert row.endswith(r"\\")


def test_latex_marks_best_and_escapes(table):
    text = to_latex(table)
    assert r"cable & \textbf{99.0}/70.0 & 80.0/\textbf{85.0} & --/-- \\" in text
    assert r"\textbf{98.0$\pm$2.8}/95.0" in text
    assert r"cutpaste$^\dagger$" in text
    assert r"backbone\_fine\_tuned" in text


def test_html_table(table):
    text = to_html(table)
    assert text.startswith('<table class="bench">')
    assert "<td>cable</td><td><strong>99.0</strong>/70.0</td>" in text
    assert '<tr class="rule"><td>mean</td>' in text


def test_csv_keeps_fractions(table):
    lines = to_csv(table).splitlines()
    assert lines[0] == "dataset,metric,category,method,source,mean,std,n,best"
    assert "mvtec,image_auroc,bottle,patchcore,imagenet,0.980000,0.028284,2,1" in lines


def test_seed_filter(study_db):
    tables, _ = build_tables(open_engine(study_db), "image_auroc", RunFilter(seed=1))
    assert tables[0].cells[("bottle", "patchcore")].values["imagenet"] == (STUDY_SECOND_SEED, None, 1)
    assert tables[0].methods == ["patchcore"]


def test_sources_in_fixed_order(tmp_path):
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        for weights in ("random", "mine", "fractals", "imagenet"):
            add_run(session, method="padim", weights=weights, category="bottle", metrics={"image_auroc": 0.9})
    tables, _ = build_tables(open_engine(path), "image_auroc")
    assert tables[0].sources == ["imagenet", "fractals", "random", "mine"]


def test_layer_ablation_keeps_default(tmp_path):
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        add_run(session, method="patchcore", weights="imagenet", category="bottle", metrics={"image_auroc": 0.9})
        add_run(session, method="patchcore", weights="imagenet", category="bottle", layers="3,4",
                metrics={"image_auroc": 0.7})
    engine = open_engine(path)
    default, _ = build_tables(engine, "image_auroc")
    chosen, _ = build_tables(engine, "image_auroc", RunFilter(layers="3,4"))
    assert default[0].cells[("bottle", "patchcore")].values["imagenet"][0] == 0.9
    assert chosen[0].cells[("bottle", "patchcore")].values["imagenet"][0] == 0.7


def test_mixed_image_sizes_rejected(tmp_path):
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        for size in (128, 256):
            add_run(session, method="padim", weights="imagenet", category="bottle", image_size=size,
                    metrics={"image_auroc": 0.9})
    with pytest.raises(ConfigError, match="--image-size"):
        build_tables(open_engine(path), "image_auroc")


def test_published_numbers_as_fractions():
    published = load_published()
    value = published[(published["dataset"] == "mvtec") & (published["category"] == "carpet")
                      & (published["method"] == "fastflow") & (published["metric"] == "image_auroc")
                      & (published["source"] == "imagenet")]["value"]
    assert len(published) == 1160
    assert value.tolist() == [pytest.approx(0.986)]


def test_published_missing_value_has_reason():
    published = load_published()
    missing = published[published["value"].isna()]
    assert len(missing) == 1
    assert missing.iloc[0][["category", "method", "metric", "source"]].tolist() == [
        "carpet", "fastflow", "aupro", "imagenet"]
    assert "1.21" in missing.iloc[0]["null_reason"]


def test_compare_cells(table):
    imagenet, fractals = build_comparisons(table)
    assert imagenet.source == "imagenet"
    assert imagenet.cells[("bottle", "patchcore")].published == pytest.approx(1.0)
    assert imagenet.cells[("bottle", "patchcore")].difference == pytest.approx(-0.02)
    assert fractals.cells[("cable", "padim")].difference == pytest.approx(0.85 - 0.614)


def test_compare_mean_recomputed_for_subset(table):
    imagenet, _ = build_comparisons(table)
    mean = imagenet.cells[(MEAN_ROW, "padim")]
    assert mean.published == pytest.approx((0.998 + 0.932 + 0.990 + 0.969) / 4)
    assert mean.note == "recomputed over 4 of 15 categories"
    assert imagenet.recomputed


def test_compare_mean_printed_for_full_coverage(tmp_path):
    published = load_published()
    rows = published[(published["dataset"] == "mvtec") & (published["method"] == "patchcore")
                     & (published["metric"] == "image_auroc") & (published["source"] == "imagenet")
                     & (published["category"] != MEAN_ROW)]
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        for row in rows.itertuples():
            add_run(session, method="patchcore", weights="imagenet", category=row.category,
                    metrics={"image_auroc": row.value})
    tables, _ = build_tables(open_engine(path), "image_auroc")
    (comparison,) = build_comparisons(tables[0])
    assert comparison.cells[(MEAN_ROW, "patchcore")].published == pytest.approx(0.987)
    assert comparison.cells[(MEAN_ROW, "patchcore")].note is None
    assert not comparison.recomputed


def test_compare_mean_empty_without_overlap(tmp_path):
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        add_run(session, method="patchcore", weights="imagenet", category="washer", metrics={"image_auroc": 0.9})
    tables, _ = build_tables(open_engine(path), "image_auroc")
    (comparison,) = build_comparisons(tables[0])
    mean = comparison.cells[(MEAN_ROW, "patchcore")]
    assert mean.ours is None
    assert mean.published is None
    assert mean.note == "no category has both values"


def test_compare_grid_text(table):
    grid = comparison_grid(build_comparisons(table)[0])
    bottle = grid.rows[0]
    assert "".join(text for text, _ in bottle[1]) == "98.0±2.8 / 100.0 (−2.0)"
    assert "".join(text for text, _ in grid.rows[-1][2]).endswith("§ (−3.4)")


def test_report_compare_cli(study_db, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "report", "--compare", "published", "--format", "markdown",
                             "--db", str(study_db))
    assert code == 0, err
    assert "**mvtec: image AUROC (%), imagenet: ours vs published**" in out
    assert "| bottle | 98.0±2.8 / 100.0 (−2.0) |" in out
    assert "**published mvtec: image AUROC, paired differences across categories**" in out


def test_report_html_file(study_db, tmp_path, monkeypatch, capsys):
    out = tmp_path / "table.html"
    code, _, err = run_cli(monkeypatch, capsys, "report", "--format", "html", "--out", str(out), "--db", str(study_db))
    assert code == 0, err
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "paired differences across categories" in text


def test_report_unknown_compare(study_db, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "report", "--compare", "paper", "--db", str(study_db))
    assert code == 2
    assert "unknown --compare 'paper'" in err


def test_compare_csv_in_fractions(table):
    from bench.reports.published import comparison_csv

    lines = comparison_csv(build_comparisons(table)).splitlines()
    assert lines[0] == "dataset,metric,category,method,source,ours,ours_std,published,difference,note"
    assert "mvtec,image_auroc,bottle,patchcore,imagenet,0.980000,0.028284,1.000000,-0.020000," in lines


def test_few_shot_runs_not_mixed(tmp_path):
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        add_run(session, method="padim", weights="imagenet", category="bottle", metrics={"image_auroc": 0.9})
        add_run(session, method="padim", weights="imagenet", category="bottle", train_shots=10,
                metrics={"image_auroc": 0.6})
    engine = open_engine(path)
    with pytest.raises(ConfigError, match="--train-shots"):
        build_tables(engine, "image_auroc")
    full, _ = build_tables(engine, "image_auroc", RunFilter(train_shots=0))
    few, _ = build_tables(engine, "image_auroc", RunFilter(train_shots=10))
    assert full[0].cells[("bottle", "padim")].values["imagenet"][0] == 0.9
    assert few[0].cells[("bottle", "padim")].values["imagenet"][0] == 0.6


def test_report_missing_database_rejected(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "typo.db"
    code, _, err = run_cli(monkeypatch, capsys, "report", "--db", str(missing))
    assert code == 2
    assert f"database not found: {missing}" in err
    assert not missing.exists()


def test_report_relative_root_matches(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data" / "demo"
    data.mkdir(parents=True)
    db = tmp_path / "results.db"
    with session_factory(open_engine(db))() as session, session.begin():
        add_run(session, method="padim", weights="random", category="washer", root=str(data),
                metrics={"image_auroc": 0.75})
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "report", "--root", "data/demo", "--format", "csv", "--db", str(db))
    assert code == 0, err
    assert "washer" in out


def test_table_notes_several_roots(tmp_path):
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        add_run(session, method="padim", weights="random", category="bottle", root="/data/mvtec",
                metrics={"image_auroc": 0.9})
        add_run(session, method="padim", weights="random", category="washer", root="/data/demo",
                metrics={"image_auroc": 0.8})
    tables, _ = build_tables(open_engine(path), "image_auroc")
    assert "dataset roots: /data/demo (washer); /data/mvtec (bottle); select one with --root" in tables[0].settings


@pytest.mark.parametrize(("option", "value", "held"), [
    ("--method", "padm", "cutpaste, padim, patchcore"),
    ("--weights", "fractal", "fractals, imagenet"),
    ("--backbone", "resnet181", "resnet18"),
    ("--layers", "3,4", "1,2,3; 2,3"),
    ("--train-shots", "5", "0 (full training set)"),
])
def test_report_filter_typo_named(study_db, option, value, held, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "report", "--table", "auroc", option, value, "--db", str(study_db))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    label = option.removeprefix("--").replace("-", " ")
    assert f"no finished runs with {label} '{value}'; the database has: {held}" in err
    assert out == ""


def test_report_one_of_two_methods_unknown(study_db, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "report", "--method", "padim", "--method", "padm",
                           "--db", str(study_db))
    assert code == 2
    assert "no finished runs with method 'padm'" in err


def test_figure_filter_typo_named(study_db, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "figure", "spider", "--weights", "fractal",
                           "--out", str(tmp_path / "spider"), "--db", str(study_db))
    assert code == 2
    assert "no finished runs with weights 'fractal'; the database has: fractals, imagenet" in err
    code, _, err = run_cli(monkeypatch, capsys, "figure", "qualitative", "--dataset", "mvtec", "--category", "botle",
                           "--method", "patchcore", "--out", str(tmp_path / "q"), "--db", str(study_db))
    assert code == 2
    assert "no finished runs with category 'botle'; the database has: bottle, cable, carpet, grid" in err
    assert not list(tmp_path.iterdir())


def test_compare_no_pairs_note_names_method(tmp_path):
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        add_run(session, method="padim", weights="imagenet", category="bottle", metrics={"image_auroc": 0.997})
        add_run(session, method="patchcore", weights="imagenet", category="washer", metrics={"image_auroc": 0.9})
    tables, _ = build_tables(open_engine(path), "image_auroc")
    (comparison,) = build_comparisons(tables[0])
    grid = comparison_grid(comparison)
    assert comparison.cells[("bottle", "padim")].difference == pytest.approx(-0.001)
    assert "mean row of patchcore: no mean, because no category has both our value and a published value" in grid.notes
    assert not any("padim" in note for note in grid.notes)
    assert not any(note.startswith("published value missing") for note in grid.notes)


def test_compare_missing_published_names_cell(tmp_path):
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        for category in ("carpet", "grid"):
            add_run(session, method="fastflow", weights="imagenet", category=category, metrics={"aupro": 0.9})
    tables, _ = build_tables(open_engine(path), "aupro")
    (comparison,) = build_comparisons(tables[0])
    notes = comparison_grid(comparison).notes
    missing = [note for note in notes if note.startswith("published value missing")]
    assert len(missing) == 1
    assert missing[0].startswith("published value missing for carpet/fastflow: ")
    assert "1.21" in missing[0]
    assert not any(note.startswith("mean row of") for note in notes)


def test_mean_row_unmarked_for_fewer_categories(tmp_path):
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        for category in ("bottle", "cable", "carpet"):
            add_run(session, method="padim", weights="imagenet", category=category, metrics={"image_auroc": 0.9})
        add_run(session, method="padim", weights="fractals", category="bottle", metrics={"image_auroc": 0.95})
        for category in ("bottle", "cable", "carpet"):
            for weights in ("imagenet", "fractals"):
                add_run(session, method="patchcore", weights=weights, category=category,
                        metrics={"image_auroc": 0.8 if weights == "imagenet" else 0.7})
    (table,) = build_tables(open_engine(path), "image_auroc")[0]
    assert table.cells[(MEAN_ROW, "padim")].best == set()
    assert table.cells[(MEAN_ROW, "patchcore")].best == {"imagenet"}
    assert table.uncompared_means == ["padim"]
    notes = result_grid(table).notes
    assert ("mean row of padim: no source is bold, because the sources' means cover different categories and "
            "are not comparable") in notes


def test_mean_row_unmarked_for_other_categories(tmp_path):
    # Both means cover two categories, but not the same two.
    path = tmp_path / "results.db"
    with session_factory(open_engine(path))() as session, session.begin():
        for weights, categories in (("imagenet", ("bottle", "cable")), ("fractals", ("bottle", "carpet"))):
            for category in categories:
                add_run(session, method="padim", weights=weights, category=category, metrics={"image_auroc": 0.9})
    (table,) = build_tables(open_engine(path), "image_auroc")[0]
    assert table.cells[(MEAN_ROW, "padim")].best == set()
    assert table.uncompared_means == ["padim"]
