"""Tests for category groups and the `bench-dataset.toml` settings file."""

import logging

import pytest

from bench.data.groups import BUILTIN_GROUPS, category_groups
from bench.data.settings import SETTINGS_FILE_NAME, load_settings, read_settings_file
from bench.errors import DatasetError


def _category(root, name):
    (root / name / "train" / "good").mkdir(parents=True)


def test_builtin_mvtec_groups():
    groups = category_groups("mvtec")

    assert groups["textures"] == ["carpet", "grid", "leather", "tile", "wood"]
    assert len(groups["objects"]) == 10
    assert "metal_nut" in groups["objects"]


def test_builtin_visa_groups():
    groups = category_groups("visa")

    assert groups == {
        "pcb": ["pcb1", "pcb2", "pcb3", "pcb4"],
        "multi-instance": ["candle", "capsules", "macaroni1", "macaroni2"],
        "single-instance": ["cashew", "chewinggum", "fryum", "pipe_fryum"],
    }


def test_folder_has_no_builtin_groups(tmp_path):
    assert category_groups("folder", tmp_path) == {}


def test_returned_groups_are_copies():
    category_groups("mvtec")["textures"].append("bottle")

    assert "bottle" not in BUILTIN_GROUPS["mvtec"]["textures"]


def test_groups_from_root_replace_builtin(tmp_path):
    _category(tmp_path, "bolt")
    _category(tmp_path, "cap")
    (tmp_path / SETTINGS_FILE_NAME).write_text('[groups]\nmetal = ["bolt"]\nplastic = ["cap"]\n')

    assert category_groups("mvtec", tmp_path) == {"metal": ["bolt"], "plastic": ["cap"]}


def test_groups_from_explicit_path(tmp_path):
    path = tmp_path / "groups.toml"
    path.write_text('[groups]\nall = ["bottle", "cable"]\n')

    assert category_groups("mvtec", path=path) == {"all": ["bottle", "cable"]}


def test_root_without_groups_keeps_builtin(tmp_path):
    (tmp_path / SETTINGS_FILE_NAME).write_text("mask_threshold = 0.0\n")

    assert category_groups("visa", tmp_path) == BUILTIN_GROUPS["visa"]


def test_path_without_groups_table(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("mask_threshold = 0.5\n")

    with pytest.raises(DatasetError, match=f"no \\[groups\\] table in settings file {path}"):
        category_groups("folder", path=path)


def test_groups_unknown_category_warns(tmp_path, caplog):
    _category(tmp_path, "bolt")
    (tmp_path / SETTINGS_FILE_NAME).write_text('[groups]\nmetal = ["bolt", "bollt"]\n')

    with caplog.at_level(logging.WARNING, logger="bench.data.groups"):
        groups = category_groups("folder", tmp_path)

    assert groups == {"metal": ["bolt", "bollt"]}
    assert "does not contain: bollt" in caplog.text


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="unknown dataset 'kolektor'"):
        category_groups("kolektor")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('group = ["bolt"]\n', "unknown key 'group' in settings file"),
        ('[groups]\nmetal = "bolt"\n', "invalid group 'metal' in settings file"),
        ("[groups]\nmetal = []\n", "invalid group 'metal' in settings file"),
        ("[groups]\nmetal = [1, 2]\n", "invalid group 'metal' in settings file"),
        ('groups = ["bolt"]\n', "invalid groups in settings file"),
        ('[groups]\nmetal = ["bolt"]\nshiny = ["bolt"]\n', "category 'bolt' is in groups 'metal' and 'shiny'"),
        ("mask_threshold = 1.5\n", "invalid mask_threshold in"),
        ("mask_threshold = true\n", "invalid mask_threshold in"),
        ("[groups\n", "invalid TOML in settings file"),
    ],
)
def test_invalid_settings_file(tmp_path, content, expected):
    path = tmp_path / SETTINGS_FILE_NAME
    path.write_text(content)

    with pytest.raises(DatasetError) as caught:
        read_settings_file(path)

    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_settings_file_values(tmp_path):
    (tmp_path / SETTINGS_FILE_NAME).write_text('mask_threshold = 0\n[groups]\nmetal = ["bolt"]\n')

    settings = load_settings(tmp_path)

    assert settings.mask_threshold == 0.0
    assert settings.groups == {"metal": ["bolt"]}
    assert settings.path == tmp_path / SETTINGS_FILE_NAME


def test_missing_settings_file_is_empty(tmp_path):
    settings = load_settings(tmp_path)

    assert settings.path is None
    assert settings.mask_threshold is None
    assert settings.groups is None


def test_settings_not_utf8(tmp_path):
    (tmp_path / SETTINGS_FILE_NAME).write_bytes(b"\xff\xfemask_threshold = 0.5\n")
    with pytest.raises(DatasetError, match="it is not UTF-8 text .* save it as UTF-8"):
        load_settings(tmp_path)


def test_settings_path_is_folder(tmp_path):
    (tmp_path / SETTINGS_FILE_NAME).mkdir()
    with pytest.raises(DatasetError, match="is not a file: remove it"):
        load_settings(tmp_path)
