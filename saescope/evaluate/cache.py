"""When an evaluation result may be reused: every result file holds the key it was measured under.

A key is the sha256 of the SAE's weights file and the settings that change the numbers (store,
held-out split, text, dtype), so `saescope evaluate` run again after an interruption or on a run
with one retrained SAE measures only what changed, and a result is never reused for other settings.
Hashing costs ~0.1 s per 100 MB of weights; file dates would be cheaper but a copied or restored run
folder would then recompute everything, and a retrained SAE written within one clock tick would not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from saescope.activations.documents import dataset_fingerprint
from saescope.activations.store import run_store_path

# Raised when what a part measures changes, so older results are measured again (2: KL from clean
# log-probabilities normalised by logsumexp, evaluate/heldout.py `clean_distribution`).
FORMAT = 2
WEIGHTS = "sae.safetensors"  # a trained SAE's weights (saescope train)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def settings(cfg: Any, info: dict, text: bool) -> dict:
    """The evaluation settings a result depends on: the store's identity and held-out split, and,
    for `text` parts (core, position, topics), the held-out sequences or the `--text` file's bytes."""
    store = run_store_path(cfg.out, cfg.store)
    out = {
        "store": store if "://" in store else str(Path(store).resolve()),
        "model": info.get("model"),
        "dataset": info.get("dataset"),
        "harvested_rows": info.get("rows"),
        "eval_shards": cfg.eval_shards,
        "eval_dtype": cfg.eval_dtype,
    }
    if text:
        out |= {"eval_sequences": cfg.eval_sequences, "eval_context_len": cfg.eval_context_len, "text": cfg.text}
        if cfg.eval_offset:  # absent at 0, so results measured before the option existed still hold
            out["eval_offset"] = cfg.eval_offset
        out["text_fingerprint"] = dataset_fingerprint(cfg.text) if cfg.text else None
    return out


def key(folders: list[Path], part: str, settings: dict) -> dict:
    """The key of `part` measured on the SAEs in `folders` (one, or a width family for splitting)."""
    return {
        "part": part,
        "format": FORMAT,
        "weights_sha256": [file_sha256(f / WEIGHTS) for f in folders],
        "settings": settings,
    }


def cached(path: Path, key: dict, field: str = "key") -> dict | None:
    """The result stored at `path` if it was measured under `key`; None if it is missing, damaged
    (an interrupted write never leaves one: files are written atomically) or measured otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or json.loads(json.dumps(key)) != data.get(field):
        return None
    return data
