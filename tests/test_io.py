"""The shared file helpers: every package's config.json and the store's manifests go through them."""

import json

import pytest

from saescope.errors import SaescopeError
from saescope.io import STORE_FIX, read_json, saescope_home, write_json_atomic
from saescope.release.files import FOLDER_FIX, folder_json


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


@pytest.mark.parametrize("text", [None, "{", "[]", b"\xff\xfe"])
def test_every_bad_file_is_one_line_with_the_callers_fix(tmp_path, text):
    """One reader for the store and for SAE folders: the file, what is wrong, then the caller's advice."""
    path = tmp_path / "cfg.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(SaescopeError) as store:
        read_json(path)
    with pytest.raises(SaescopeError) as folder:
        folder_json(path)
    for e, fix in ((store, STORE_FIX), (folder, FOLDER_FIX)):
        message = str(e.value)
        assert message.startswith(str(path)) and message.endswith(fix) and "\n" not in message


def test_a_json_list_is_not_an_object(tmp_path):
    (tmp_path / "a.json").write_text("[1]")
    with pytest.raises(SaescopeError, match="not a JSON object"):
        read_json(tmp_path / "a.json")
