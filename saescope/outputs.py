"""Output folders that are replaced whole, without ever deleting what saescope did not write.

`release --dest`, `export` and `browse --export` each write a folder of their own. The folder
named by the user may already exist: it is replaced only when it is empty or a previous output of
the same kind, recognised by its index file (`suite.json`, `export.json`, `index.html`) and by
holding nothing else than such an output holds. The new output is written into a temporary
sibling and swapped in only when complete, so a failure half-way leaves the old folder as it was.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError


def _nonfinite_key(data: Any, where: str = "") -> str | None:
    """The dotted key of the first NaN or infinity inside `data`, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "the value"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = _nonfinite_key(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def strict_json(data: Any, what: str = "JSON", **kw: Any) -> str:
    """JSON without NaN or Infinity tokens (strict parsers reject them): a non-finite value is a
    one-line error naming its key instead of a file other tools cannot read."""
    bad = _nonfinite_key(data)
    if bad:
        raise SaescopeError(
            f"refusing to write {what}: {bad} is NaN or infinite; the SAE or the activations it "
            f"was measured on hold NaN/inf: check the store and retrain"
        )
    return json.dumps(data, allow_nan=False, **kw)


def check_replaceable(dest: str | Path, option: str, index: str, allowed: Iterable[str] = ()) -> Path:
    """The absolute folder `dest` if saescope may replace it; a one-line error naming `option` if not."""
    path = Path(dest).absolute()
    resolved = path.resolve()
    if path.exists() and not path.is_dir():
        raise SaescopeError(f"{option} {dest} is an existing file, not a folder: choose a new folder name")
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise SaescopeError(
            f"{option} {dest} is the current folder (or holds it): choose a new subfolder, "
            f"e.g. {option} {Path(dest) / 'out'}"
        )
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    allowed = set(allowed) | {index}
    if names and (index not in names or not names <= allowed):
        raise SaescopeError(
            f"{option} {dest} already holds files saescope did not write there (not a previous "
            f"output with {index}): choose an empty or new folder; nothing was changed"
        )
    return path


def check_writable(path: str | Path, option: str) -> None:
    """A folder that cannot be written (or whose nearest existing parent cannot) is a one-line error."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SaescopeError(f"{option} {path}: {existing} is a file, not a folder: choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SaescopeError(f"{option} {path}: {existing} is read-only: choose a folder you can write to")


def check_outside_stores(path: str | Path, option: str, may_be_store: bool = False) -> None:
    """An output inside an activation store (or, unless it is a harvest's own store, onto one) would
    mix files into the shard folders that readers list; refuse it in one line."""
    full = Path(path).absolute()
    for folder in ([] if may_be_store else [full]) + list(full.parents):
        if (folder / "store.json").is_file():
            where = "lies inside" if folder != full else "is"
            raise SaescopeError(f"{option} {path} {where} the activation store {folder}: choose a folder outside it")


@contextmanager
def replacing(dest: str | Path, option: str, index: str, allowed: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `dest` to write the whole output into; on success it
    takes `dest`'s place (a previous output is moved aside first and deleted last), on failure it
    is deleted and `dest` is untouched."""
    path = check_replaceable(dest, option, index, allowed)
    check_writable(path.parent, option)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; an output folder is an ordinary folder
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rename(path, old / "previous")
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
