"""MEGC2019 composite: a missing source is an error that lists what was expected."""

from __future__ import annotations

import shutil

import pytest

from data_builders.megc2019 import megc2019_dataset_builder as megc2019
from data_builders.megc2019.dummy_data import make_dummy_data
from data_builders.skips import SkipLog


def test_missing_source_lists_expected_folders(tmp_path):
    make_dummy_data.make(tmp_path)
    shutil.rmtree(tmp_path / "samm")
    with pytest.raises(FileNotFoundError, match=r"missing source folder\(s\) \['samm'\]") as err:
        megc2019.list_megc2019(tmp_path, SkipLog())
    assert "['smic', 'casme2', 'samm']" in str(err.value)


def test_smic_cropped_variant_is_used_without_recrop(tmp_path):
    make_dummy_data.make(tmp_path)
    (tmp_path / "smic" / "SMIC_all_cropped").mkdir()
    (tmp_path / "smic" / "HS").rename(tmp_path / "smic" / "SMIC_all_cropped" / "HS")
    clips = megc2019.list_megc2019(tmp_path, SkipLog())
    crops = {c.source: c.crop for c in clips}
    assert crops == {"smic": "none", "casme2": "haar", "samm": "haar"}
