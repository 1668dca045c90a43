"""Activation stores on shared or object storage (any fsspec URL), read through a local cache.

A store URL (`s3://bucket/run/activations`, `gs://...`, `memory://...`) is mirrored into
`$SAESCOPE_STORE_CACHE` (default `$SAESCOPE_HOME/store-cache`): `store.json` and every manifest
are fetched when the store is opened (they are small and may have grown since), and a shard is
downloaded the first time it is read, then memory-mapped from the local copy like any other
shard. A cached shard whose sha256 in the fresh manifest differs from the cached manifest's is
dropped, so re-harvesting under the same URL never serves stale rows.

`file://` URLs name a local or shared filesystem (NFS, Lustre) and are read in place, uncached.
Writing (harvest) needs a filesystem path: harvest to shared storage, or copy a finished store
to object storage with your usual tool; the store is plain files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from saescope.errors import SaescopeError
from saescope.io import saescope_home


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def file_url_path(url: str) -> Path | None:
    """The local path of a `file://` URL, None for any other protocol."""
    return Path(url[len("file://") :]) if url.startswith("file://") else None


def cache_root() -> Path:
    if "SAESCOPE_STORE_CACHE" in os.environ:
        return Path(os.environ["SAESCOPE_STORE_CACHE"])
    return saescope_home() / "store-cache"


def _package_for(url: str) -> str:
    """The package fsspec needs for `url`'s protocol (s3fs for s3://): its ImportError has no name."""
    from fsspec.registry import known_implementations

    cls = known_implementations.get(url.split("://", 1)[0], {}).get("class", "")
    return cls.split(".", 1)[0] or "fsspec"


def _filesystem(url: str):
    try:
        import fsspec

        return fsspec.core.url_to_fs(url)
    except ImportError as e:  # e.g. s3fs or gcsfs, which fsspec imports for s3:// and gs://
        package = e.name or _package_for(url)
        raise SaescopeError(f"reading {url} needs a package that is not installed ({e}): pip install {package}") from e
    except ValueError as e:
        raise SaescopeError(f"cannot read store URL {url} ({e}): use s3://, gs://, memory:// or file://") from e


def _write_private(path: Path, data: bytes) -> None:
    """Write then rename, under a name of this process: ranks on one machine share the cache."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RemoteFolder:
    """One column of a remote store: downloads its shards into the cache on first read."""

    def __init__(self, fs, url: str):
        self.fs, self.url = fs, url

    def fetch(self, name: str, dest: Path, size: int) -> None:
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
        try:
            self.fs.get_file(f"{self.url}/{name}", str(tmp))
        except FileNotFoundError as e:
            raise SaescopeError(f"shard {self.url}/{name} is missing: harvest again or restore the file") from e
        if tmp.stat().st_size != size:
            tmp.unlink()
            raise SaescopeError(
                f"shard {self.url}/{name} is corrupt ({size} bytes expected): harvest again or restore the file"
            )
        os.replace(tmp, dest)


def mirror(url: str) -> tuple[Path, dict[str, RemoteFolder]]:
    """Fetch the store's JSON files into the cache; the cache folder and each column's fetcher."""
    fs, root = _filesystem(url)
    local = cache_root() / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    try:
        info_bytes = fs.cat_file(f"{root}/store.json")
    except FileNotFoundError as e:
        raise SaescopeError(
            f"activation store {url} does not exist (no store.json): harvest to a filesystem path and copy it there"
        ) from e
    _write_private(local / "store.json", info_bytes)
    remotes = {}
    for name in ["tokens", *json.loads(info_bytes)["sites"]]:
        folder = local / name
        folder.mkdir(exist_ok=True)
        fresh = fs.cat_file(f"{root}/{name}/manifest.json")
        _drop_changed_shards(folder, json.loads(fresh))
        _write_private(folder / "manifest.json", fresh)
        remotes[name] = RemoteFolder(fs, f"{root}/{name}")
    return local, remotes


def _drop_changed_shards(folder: Path, fresh: dict) -> None:
    """Delete cached shards that the fresh manifest lists with another hash (or not at all)."""
    old_path = folder / "manifest.json"
    if not old_path.exists():  # files without the manifest they came with cannot be vouched for
        for stale in folder.glob("*.bin"):
            stale.unlink()
        return
    now = {s["file"]: s["sha256"] for s in fresh["shards"]}
    for shard in json.loads(old_path.read_text())["shards"]:
        if now.get(shard["file"]) != shard["sha256"]:
            (folder / shard["file"]).unlink(missing_ok=True)
