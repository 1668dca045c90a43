"""Reading the files an SAE folder holds, whatever tool wrote them: `.npz`, safetensors and JSON
(saescope/io.py's reader, with advice for SAE folders).

Every reader here turns a missing, damaged or foreign file into one `SaescopeError` line naming it,
because an SAE folder is often someone else's download and a traceback from deep inside numpy or
safetensors does not say which file to replace. Nothing is unpickled: `.npz` files are read with
`allow_pickle=False`, the rest is safetensors and JSON.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from saescope.errors import SaescopeError
from saescope.io import read_json

# What to do about a file of an SAE folder that is missing or unreadable: the folder was read as
# the wrong format, or it is not an SAE; and about a trained SAE's own config.json or metrics.json.
FOLDER_FIX = "is it an SAE folder of that format? (try without --format)"
TRAINED_FIX = "train or evaluate that SAE again, or move its folder out"


def _exists(path: Path) -> None:
    if not path.is_file():
        raise SaescopeError(f"{path.parent} has no {path.name}: {FOLDER_FIX}")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    _exists(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise SaescopeError(f"{path} is not an SAE: not a readable .npz of arrays ({type(e).__name__})") from e


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Arrays of a safetensors file as numpy; bfloat16 (which numpy lacks) is widened to float32."""
    _exists(path)
    try:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                out[k] = (t.to(torch.float32) if t.dtype == torch.bfloat16 else t).numpy()
        return out
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SaescopeError(f"{path} is not an SAE: not a readable safetensors file ({e})") from e


def folder_json(path: Path) -> dict[str, Any]:
    """A JSON file of an SAE folder that any tool may have written (cfg.json, config.json)."""
    return read_json(path, FOLDER_FIX)


def read_json_with(path: Path, *keys: str) -> dict[str, Any]:
    """A JSON object that must hold `keys` (a trained SAE's config.json or metrics.json): a damaged
    or foreign one is a one-line error instead of a KeyError deep inside a job."""
    data = read_json(path, TRAINED_FIX)
    missing = [k for k in keys if k not in data]
    if missing:
        raise SaescopeError(
            f"{path} lacks {', '.join(missing)}: it was not written by saescope train/evaluate or is damaged; "
            + TRAINED_FIX
        )
    return data


def optional_json(path: Path) -> dict[str, Any]:
    """A side file (metrics.json, a config.json beside params.npz) that a folder may lack."""
    return folder_json(path) if path.exists() else {}
