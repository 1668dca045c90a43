"""Small file helpers every package needs: JSON files written atomically (never NaN) and read with
one-line errors, and the saescope home folder.

They live here, and not in the activation store that first needed them, so that evaluation, training,
comparison and release can write a `config.json` without importing the store's shard machinery.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError
from saescope.outputs import strict_json


def saescope_home() -> Path:
    """Where models and other derived files are cached; `$SAESCOPE_HOME` overrides."""
    return Path(os.environ.get("SAESCOPE_HOME", Path.home() / ".cache" / "saescope"))


def write_json_atomic(path: Path, data: dict) -> None:
    """Readers (a resuming harvest, a live browser) never see half a file: write aside, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(strict_json(data, str(path), indent=2))
    os.replace(tmp, path)


STORE_FIX = "is this a saescope activation store? if so it is damaged: delete it and run `saescope harvest` again"


def read_json(path: Path, fix: str = STORE_FIX) -> dict[str, Any]:
    """The JSON object in `path`. A missing, unreadable or damaged file, or one that holds anything but
    an object, is one line naming the file and then `fix`, what to do about it. The default speaks of
    the activation store, whose readers meet such files most (an interrupted or foreign folder);
    saescope/release/files.py passes the advice for SAE folders."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise SaescopeError(f"{path} is missing: {fix}") from e
    except json.JSONDecodeError as e:
        raise SaescopeError(f"{path} is not a readable JSON file (not valid JSON: {e.msg}): {fix}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise SaescopeError(f"{path} is not a readable JSON file ({type(e).__name__}): {fix}") from e
    if not isinstance(data, dict):
        raise SaescopeError(f"{path} is not a JSON object (it holds a {type(data).__name__}): {fix}")
    return data
