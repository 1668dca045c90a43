"""Small file helpers every package needs: JSON files written atomically, and the saescope home folder.

They live here, and not in the activation store that first needed them, so that evaluation, training,
comparison and release can write a `config.json` without importing the store's shard machinery.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def read_json(path: Path) -> dict:
    """A missing or damaged file is a one-line error; the activation store is the reader that meets
    those most (an interrupted or foreign folder), so the advice speaks of it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise SaescopeError(
            f"{path} is missing: is this a saescope activation store? run `saescope harvest` first"
        ) from e
    except json.JSONDecodeError as e:
        raise SaescopeError(f"{path} is not valid JSON ({e.msg}): the store is damaged, harvest it again") from e
