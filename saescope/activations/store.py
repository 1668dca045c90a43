"""An activation store on disk: raw-byte shards that can be memory-mapped, one folder per site.

Layout of a store folder:

    store.json                  what was harvested: model, dataset, dtype, context, sites, shard size
    tokens/shard_00000.bin      int32 rows (token_id, doc_id, position): where every stored row came from
    tokens/manifest.json
    res.5/shard_00000.bin       rows x d_in activations in the store dtype, nothing else
    res.5/manifest.json         model, site, layer, dtype, d_in, token count, per-shard rows and sha256

All sites of one harvest share row order, so row i of every site (and of `tokens/`) is the same token.
A shard is written under a `.tmp` name and renamed when complete; the manifests only list complete
shards, which is what lets an interrupted harvest resume exactly where it stopped.

A harvest by several processes gives each rank its own shard names (`shard_r1of4_00000.bin`) and
its own manifest (`manifest.r1of4.json`) in every folder; `manifest.json` is their merge. The
store may also be an fsspec URL, read through a local cache (`saescope/activations/remote.py`).
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.activations.remote import file_url_path, is_url, mirror
from saescope.errors import SaescopeError
from saescope.io import read_json, write_json_atomic

TOKEN_FIELDS = 3  # token_id, doc_id, position
STORE_DTYPES = {
    "bfloat16": (torch.bfloat16, np.uint16),
    "float32": (torch.float32, np.float32),
    "float16": (torch.float16, np.float16),
}


# The shard files whose bytes this process has hashed (written or verified), by file identity and
# manifest digest: `saescope run` trains and evaluates right after its harvest, and verifying again
# hashed each of the ~9 GB of shards it had just hashed. A file changed since has a new ctime.
_hashed: set[tuple] = set()


def _hashed_key(path: Path, sha256: str) -> tuple:
    st = path.stat()
    return str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, sha256


def shard_name(index: int, prefix: str = "") -> str:
    return f"shard_{prefix}{index:05d}.bin"


ALIGN = 4096  # O_DIRECT wants file offsets, lengths and memory addresses on block boundaries
O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0 where the OS has none: plain buffered writes


def new_staging(nbytes: int = 8 << 20) -> memoryview:
    """A page-aligned buffer for O_DIRECT writes, reused for every shard a writer thread writes."""
    return memoryview(mmap.mmap(-1, nbytes - nbytes % ALIGN or ALIGN))


def _write_all(fd: int, data: memoryview) -> None:
    while len(data):
        data = data[os.write(fd, data) :]


class ShardFile:
    """One shard being written: rows are appended as batches arrive and hashed on the way; the
    file has a `.tmp` name until `finish` renames it.

    Bytes go to disk with O_DIRECT where the filesystem allows it. Buffered writes put every byte
    in fresh page-cache pages, and on virtual machines that hand free pages back to the host a
    fresh page is expensive: `python benchmarks/pages.py` wrote an 800 MB shard (sha256 included) in
    2.94 s buffered and 1.30 s direct. Direct writes need aligned memory and lengths, so bytes pass
    through a page-aligned staging buffer and the unaligned remainder waits for the next append; `finish` writes the
    last partial block with O_DIRECT switched off."""

    def __init__(self, path: Path, staging: memoryview | None = None):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.staging = staging
        self.carry = b""  # tail of the appended bytes that does not fill a whole block yet
        self.digest = hashlib.sha256()
        self.rows = 0
        self.written = 0  # bytes written with O_DIRECT
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self.direct = bool(O_DIRECT) and staging is not None
        try:  # 0o644: shards are data, never executable
            self.fd = os.open(self.tmp, flags | O_DIRECT if self.direct else flags, 0o644)
        except OSError as e:  # tmpfs and some network filesystems refuse O_DIRECT
            if not self.direct or e.errno != errno.EINVAL:
                raise
            self.direct, self.fd = False, os.open(self.tmp, flags, 0o644)

    def append(self, rows: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(rows)).cast("B")  # no copy of the rows themselves
        self.digest.update(data)
        self.rows += len(rows)
        if not self.direct:
            _write_all(self.fd, data)
            return
        staging, pos = self.staging, 0
        while pos < len(data):
            start = len(self.carry)
            staging[:start] = self.carry
            take = min(len(data) - pos, len(staging) - start)
            staging[start : start + take] = data[pos : pos + take]
            pos += take
            end = start + take
            aligned = end - end % ALIGN
            self._write_direct(staging[:aligned])
            self.carry = bytes(staging[aligned:end])
            if not self.direct:  # the filesystem refused direct I/O at the first write
                _write_all(self.fd, memoryview(self.carry))
                _write_all(self.fd, data[pos:])
                self.carry = b""
                return

    def _write_direct(self, block: memoryview) -> None:
        try:
            _write_all(self.fd, block)
            self.written += len(block)
        except OSError as e:  # some filesystems accept O_DIRECT at open and want other alignments
            if e.errno != errno.EINVAL or self.written:
                raise
            self._buffered()
            _write_all(self.fd, block)
            self.written += len(block)

    def _buffered(self) -> None:
        import fcntl  # only reached where O_DIRECT exists, i.e. on POSIX

        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~O_DIRECT)
        self.direct = False

    def finish(self) -> str:
        """Write what is left, make it durable, rename into place; returns the sha256."""
        if self.carry:  # the last partial block cannot go direct
            self._buffered()
            _write_all(self.fd, memoryview(self.carry))
            self.carry = b""
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.path)
        return self.digest.hexdigest()

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)


@contextmanager
def disk_errors(path: Path, index: int, shard: ShardFile | None = None) -> Iterator[None]:
    """A full disk (or any OS error) becomes a one-line error; the temp file goes, complete shards stay."""
    try:
        yield
    except OSError as e:
        if shard is not None:
            shard.abort()
        raise SaescopeError(
            f"could not write {path} ({e.strerror}): free disk space or choose another --out; "
            f"the {index} complete shards are kept and the harvest resumes from them"
        ) from e


@dataclass
class ShardColumn:
    """One folder of shards: a site's activations or the token index. Rows are [n, width] arrays."""

    folder: Path
    width: int
    dtype: str
    meta: dict = field(default_factory=dict)
    shards: list[dict] = field(default_factory=list)
    prefix: str = ""  # a harvest rank's own shard names, e.g. "r1of4_"
    manifest_name: str = "manifest.json"
    remote: Any = field(default=None, repr=False, compare=False)  # a RemoteFolder that fetches missing shards

    @property
    def numpy_dtype(self):
        return np.int32 if self.dtype == "int32" else STORE_DTYPES[self.dtype][1]

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    def save_manifest(self) -> None:
        write_json_atomic(
            self.folder / self.manifest_name,
            {**self.meta, "width": self.width, "dtype": self.dtype, "rows": self.rows, "shards": self.shards},
        )

    @classmethod
    def open(cls, folder: Path, prefix: str = "", manifest_name: str = "manifest.json") -> ShardColumn:
        m = read_json(folder / manifest_name)
        _check_manifest(m, folder / manifest_name)
        meta = {k: v for k, v in m.items() if k not in ("width", "dtype", "rows", "shards")}
        return cls(folder, m["width"], m["dtype"], meta, m["shards"], prefix, manifest_name)

    def open_shard(self, index: int, staging: memoryview | None = None) -> ShardFile:
        """Start shard `index`; rows are appended to it batch by batch, then `commit_shard`."""
        path = self.folder / shard_name(index, self.prefix)
        with disk_errors(path, index):
            return ShardFile(path, staging)

    def commit_shard(self, index: int, shard: ShardFile) -> None:
        """Rename a finished shard into place and list it in the manifest (only complete shards are listed)."""
        with disk_errors(shard.path, index, shard):
            sha256 = shard.finish()
        _hashed.add(_hashed_key(shard.path, sha256))
        self.shards = self.shards[:index] + [{"file": shard.path.name, "rows": shard.rows, "sha256": sha256}]
        self.save_manifest()

    def write_shard(self, index: int, array: np.ndarray) -> None:
        """Write a whole shard at once."""
        assert array.dtype == self.numpy_dtype and array.shape[1] == self.width
        shard = self.open_shard(index)
        with disk_errors(shard.path, index, shard):
            shard.append(array)
        self.commit_shard(index, shard)

    def truncate(self, n_shards: int) -> None:
        """Forget shards past `n_shards` (left by a run killed between sites) and stray temp files."""
        for extra in self.shards[n_shards:]:
            (self.folder / extra["file"]).unlink(missing_ok=True)
        # Other ranks may be writing their own temp files in this folder right now.
        patterns = [f"shard_{self.prefix}*.tmp", f"{self.manifest_name}.tmp"] if self.prefix else ["*.tmp"]
        for tmp in [t for pattern in patterns for t in self.folder.glob(pattern)]:
            tmp.unlink(missing_ok=True)
        self.shards = self.shards[:n_shards]
        self.save_manifest()

    def first_damaged(self) -> tuple[int, str] | None:
        """The first listed shard whose file is missing or whose sha256 differs from the manifest's,
        with what is wrong; None when every shard checks out."""
        for i in range(len(self.shards)):
            try:
                self.read(i, verify=True)
            except SaescopeError as e:
                return i, "missing" if "missing" in str(e) else "corrupt"
        return None

    def read(self, index: int, verify: bool = False) -> np.ndarray:
        """Memory-map one shard, checking its size (always) and its sha256 (when asked)."""
        info = self.shards[index]
        path = self.folder / info["file"]
        expected = info["rows"] * self.width * np.dtype(self.numpy_dtype).itemsize
        if not path.exists() and self.remote is not None:
            self.remote.fetch(info["file"], path, expected)
        if not path.exists():
            raise SaescopeError(
                f"shard {path} is missing: run the same `saescope harvest` again (it rewrites missing "
                f"shards) or restore the file"
            )
        if path.stat().st_size != expected:
            raise SaescopeError(
                f"shard {path} is corrupt ({path.stat().st_size} bytes, expected {expected}): "
                f"run the same `saescope harvest` again: it rewrites damaged shards"
            )
        key = _hashed_key(path, info["sha256"]) if verify else None
        if verify and key not in _hashed:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    digest.update(block)
            if digest.hexdigest() != info["sha256"]:
                raise SaescopeError(
                    f"shard {path} is corrupt (sha256 mismatch): "
                    f"run the same `saescope harvest` again: it rewrites damaged shards"
                )
            _hashed.add(key)
        # copy-on-write: torch wants writable arrays; the file itself is never changed
        return np.memmap(path, dtype=self.numpy_dtype, mode="c", shape=(info["rows"], self.width))


MANIFEST_TYPES = {"width": int, "dtype": str, "shards": list}
SHARD_TYPES = {"file": str, "rows": int, "sha256": str}


def _check_manifest(m: Any, path: Path) -> None:
    """A manifest of the wrong shape (valid JSON, wrong keys or types) is a one-line error."""
    problem = None
    if not isinstance(m, dict):
        problem = "it is not a JSON object"
    else:
        problem = next(
            (
                f"'{k}' is missing or not {t.__name__}"
                for k, t in MANIFEST_TYPES.items()
                if not isinstance(m.get(k), t) or isinstance(m.get(k), bool)
            ),
            None,
        )
        if problem is None and m["dtype"] not in (*STORE_DTYPES, "int32"):
            problem = f"dtype {m['dtype']!r} is not one of {', '.join(STORE_DTYPES)}"
        if problem is None and m["width"] < 1:
            problem = f"width {m['width']} is not positive"
        for i, shard in enumerate(m["shards"] if problem is None else []):
            bad = [k for k, t in SHARD_TYPES.items() if not isinstance(shard, dict) or not isinstance(shard.get(k), t)]
            if bad or shard["rows"] < 0 or "/" in shard["file"] or shard["file"].startswith("."):
                problem = f"shard entry {i} has a bad {', '.join(bad) or 'file or rows'}"
                break
    if problem:
        raise SaescopeError(f"{path} is damaged ({problem}): harvest this store again into a new --out")


def as_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    """View stored rows as a torch tensor; bfloat16 is stored as its raw 16-bit pattern."""
    t = torch.from_numpy(np.asarray(array))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


class ActivationStore:
    """Read access to a finished (or partly finished) harvest."""

    def __init__(self, path: str | Path):
        """`path` is a folder, a `file://` URL, or any fsspec URL (read through the local cache)."""
        self.url = str(path)
        remotes = {}
        if is_url(path):
            local = file_url_path(str(path))
            path, remotes = (local, {}) if local is not None else mirror(str(path))
        self.path = Path(path)
        if not self.path.exists():
            raise SaescopeError(
                f"activation store {self.path} does not exist: run `saescope harvest --out {self.path}`"
            )
        self.info = read_json(self.path / "store.json")
        sites = self.info.get("sites") if isinstance(self.info, dict) else None
        if (
            not isinstance(sites, list)
            or not all(isinstance(n, str) and n and "/" not in n for n in sites)
            or self.info.get("dtype") not in STORE_DTYPES
        ):
            raise SaescopeError(
                f"{self.path / 'store.json'} is damaged (sites or dtype missing or of the wrong type): "
                f"harvest this store again into a new --out"
            )
        self.tokens = ShardColumn.open(self.path / "tokens")
        self.columns = {name: ShardColumn.open(self.path / name) for name in self.info["sites"]}
        for name, column in [("tokens", self.tokens), *self.columns.items()]:
            column.remote = remotes.get(name)

    @property
    def sites(self) -> list[str]:
        return list(self.columns)

    @property
    def n_shards(self) -> int:
        """Shards complete in every column; only those are readable as aligned rows."""
        return min(len(c.shards) for c in [self.tokens, *self.columns.values()])

    @property
    def dtype(self) -> str:
        return self.info["dtype"]

    def column(self, site: str) -> ShardColumn:
        if site not in self.columns:
            raise SaescopeError(f"site '{site}' is not in store {self.path}: it holds {', '.join(self.sites)}")
        return self.columns[site]

    def d_in(self, site: str) -> int:
        return self.column(site).width

    def shard_rows(self, index: int) -> int:
        return self.tokens.shards[index]["rows"]

    def read(self, site: str, index: int, verify: bool = False) -> torch.Tensor:
        return as_torch(self.column(site).read(index, verify), self.dtype)

    def read_tokens(self, index: int) -> np.ndarray:
        return self.tokens.read(index)

    def verify(self) -> None:
        """Check every shard's sha256 against its manifest; a damaged one raises a one-line error."""
        for col in [self.tokens, *self.columns.values()]:
            for i in range(len(col.shards)):
                col.read(i, verify=True)


def run_store_path(out: str | Path, store: str | Path | None = None) -> str:
    """The store a run's SAEs were trained on: `store` when given, else OUT/activations (`saescope
    run`), else the --store that the run's saved config records (`run --store` and `compare` in
    OUT/config.json, `train` in OUT/train/config.json), else OUT/activations."""
    if store:
        return str(store)
    out = Path(out)
    if not (out / "activations").is_dir():
        for config in (out / "config.json", out / "train" / "config.json"):
            if config.exists():
                recorded = read_json(config, "run the job again to rewrite it").get("store")
                if recorded:
                    return str(recorded)
    return str(out / "activations")


def run_store(out: str | Path, store: str | Path | None = None) -> ActivationStore:
    return ActivationStore(run_store_path(out, store))
