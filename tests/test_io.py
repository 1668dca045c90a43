"""The shared file helpers: every package's config.json and the store's manifests go through them."""

import json

import pytest

from saescope.errors import SaescopeError
from saescope.io import read_json, saescope_home, write_json_atomic


def test_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SAESCOPE_HOME", str(tmp_path))
    assert saescope_home() == tmp_path


def test_atomic_write_leaves_no_temp_file(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("text, message", [(None, "is missing"), ("{", "not valid JSON")])
def test_a_missing_or_damaged_file_is_one_line(tmp_path, text, message):
    if text is not None:
        (tmp_path / "a.json").write_text(text)
    with pytest.raises(SaescopeError, match=message):
        read_json(tmp_path / "a.json")
