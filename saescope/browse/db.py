"""The feature database: one SQLite file per run (`RUN/browse/features.sqlite`).

Why SQLite: it is in the standard library, a single file that can be copied with the run, and an
indexed primary-key lookup answers a latent page in well under a millisecond, so the web app
never has to hold a suite's statistics in memory.

Layout:
    meta      key/value facts of the whole pass (topics, held-out rows, model)
    saes      one row per SAE: where it sits, its evaluation metrics and a signature of its inputs
              (weights, neighbour weights, pass options) so unchanged SAEs are skipped next time
    latents   one row per latent: frequency, activation maxima, histograms, topic rates, and its
              examples as one compact binary blob (int32 token ids + float16 activations)
    lens      the logit lens of the latents computed so far (`ondemand`: on first view, or by the
              server's background fill), with a short summary for the SAE tables
    tokens    display text of every token id the other tables mention
    docs      title and topic of every document an example comes from
    search    FTS5 index of each latent's top example text and, once its lens exists, logit tokens
              (a second row for the same latent)

Decoder-cosine neighbours are not stored: `ondemand` computes them per view from the weights.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saescope.errors import SaescopeError

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS saes(
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, layer INTEGER NOT NULL, d_sae INTEGER NOT NULL,
    d_in INTEGER NOT NULL, rows INTEGER NOT NULL, signature TEXT NOT NULL, metrics TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS latents(
    sae TEXT NOT NULL, latent INTEGER NOT NULL, frequency REAL NOT NULL, max_act REAL NOT NULL,
    mean_act REAL NOT NULL, snippet TEXT NOT NULL, hist TEXT NOT NULL, topics TEXT NOT NULL,
    examples BLOB NOT NULL, PRIMARY KEY(sae, latent)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS latents_by_frequency ON latents(sae, frequency);
CREATE TABLE IF NOT EXISTS lens(
    sae TEXT NOT NULL, latent INTEGER NOT NULL, summary TEXT NOT NULL, logits TEXT NOT NULL,
    PRIMARY KEY(sae, latent)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens(id INTEGER PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs(id INTEGER PRIMARY KEY, title TEXT NOT NULL, topic TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(sae UNINDEXED, latent UNINDEXED, body);
"""


def db_path(run: str | Path) -> Path:
    return Path(run) / "browse" / "features.sqlite"


def connect(path: str | Path, write: bool = False) -> sqlite3.Connection:
    """Open the database; readers get a read-only connection usable from the server's threads."""
    path = Path(path)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        with damaged_db(path):
            con = sqlite3.connect(path, check_same_thread=False)
            if schema_of(con) not in (None, SCHEMA_VERSION):  # an older saescope's cache: start it again
                con.close()
                path.unlink()
                con = sqlite3.connect(path, check_same_thread=False)
            con.executescript(SCHEMA)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            con.commit()
        return con
    if not path.exists():
        raise SaescopeError(f"no feature statistics at {path}: run `saescope browse RUN` once to compute them")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)


def schema_of(con: sqlite3.Connection) -> int | None:
    """The schema version a database was written with (None for a new, empty file)."""
    if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
        return None
    row = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return int(row[0]) if row else None


@contextmanager
def damaged_db(path: Path) -> Iterator[None]:
    """A statistics file that is not a database (or not this schema) is one line, not a traceback;
    it is only a cache of `saescope browse`, so deleting it loses nothing."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        raise SaescopeError(f"{path} is damaged ({e}): delete it and run `saescope browse RUN` again") from e


# ---- examples blob ---------------------------------------------------------------------------
# One latent's examples travel as a single blob: a header of int32 [n, width, left], then per example
# (group, doc_id, position) int32, its activation float32, `width` token ids int32 (-1 = outside the
# document) and `width` activations float16. Decoding is three np.frombuffer calls.


@dataclass
class Examples:
    group: np.ndarray  # int32 [n]: 0 = top activations, 1.. = quantile bin (1 = highest)
    doc: np.ndarray  # int32 [n]
    position: np.ndarray  # int32 [n]: position of the centre token in its document
    act: np.ndarray  # float32 [n]: activation at the centre token
    ids: np.ndarray  # int32 [n, width]: window token ids, -1 where the window leaves the document
    acts: np.ndarray  # float16 [n, width]: the latent's activation on each window token
    left: int  # index of the centre token inside a window

    def __len__(self) -> int:
        return len(self.group)


def pack_examples(ex: Examples) -> bytes:
    n, width = ex.ids.shape
    head = np.array([n, width, ex.left], dtype=np.int32)
    meta = np.stack([ex.group, ex.doc, ex.position], 1).astype(np.int32)
    return b"".join(
        [
            head.tobytes(),
            meta.tobytes(),
            ex.act.astype(np.float32).tobytes(),
            ex.ids.astype(np.int32).tobytes(),
            ex.acts.astype(np.float16).tobytes(),
        ]
    )


def unpack_examples(blob: bytes) -> Examples:
    n, width, left = np.frombuffer(blob, np.int32, 3)
    off = 12
    meta = np.frombuffer(blob, np.int32, n * 3, off).reshape(n, 3)
    off += n * 12
    act = np.frombuffer(blob, np.float32, n, off)
    off += n * 4
    ids = np.frombuffer(blob, np.int32, n * width, off).reshape(n, width)
    off += n * width * 4
    acts = np.frombuffer(blob, np.float16, n * width, off).reshape(n, width)
    return Examples(meta[:, 0], meta[:, 1], meta[:, 2], act, ids, acts, int(left))


# ---- reading -----------------------------------------------------------------------------------


@dataclass
class SaeRow:
    name: str
    kind: str
    layer: int
    d_sae: int
    d_in: int
    rows: int
    metrics: dict


@dataclass
class LatentRow:
    sae: str
    latent: int
    frequency: float
    max_act: float
    mean_act: float
    snippet: str
    hist: dict
    topics: list
    examples: Examples
    logits: dict | None = None  # filled by `ondemand` (None: the lens does not apply to this site)
    neighbours: dict | None = None  # filled by `ondemand`


class FeatureDB:
    """Read access for the web app and the static export; every lookup is one indexed query."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.con = connect(self.path)
        with damaged_db(self.path):
            self.meta = {k: json.loads(v) for k, v in self.con.execute("SELECT key, value FROM meta")}
            self.saes = {
                r[0]: SaeRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]))
                for r in self.con.execute(
                    "SELECT name, kind, layer, d_sae, d_in, rows, metrics FROM saes ORDER BY kind, layer, name"
                )
            }
            if self.meta.get("schema") != SCHEMA_VERSION:
                raise SaescopeError(
                    f"{path} was written by another version of saescope: run `saescope browse RUN` to rebuild it"
                )
        if not self.saes:
            raise SaescopeError(f"{path} holds no SAE statistics: run `saescope browse RUN` to compute them")
        self.token_text = dict(self.con.execute("SELECT id, text FROM tokens"))

    def doc(self, doc_id: int) -> tuple[str, str]:
        """(title, topic) of a document, empty strings if the corpus has none."""
        row = self.con.execute("SELECT title, topic FROM docs WHERE id = ?", (int(doc_id),)).fetchone()
        return (row[0], row[1]) if row else ("", "")

    def token(self, token_id: int) -> str:
        """Display text of a token; ids the logit lens added after start-up are read when first shown."""
        token_id = int(token_id)
        if token_id not in self.token_text:
            row = self.con.execute("SELECT text FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                return f"<{token_id}>"
            self.token_text[token_id] = row[0]
        return self.token_text[token_id]

    def latent(self, sae: str, latent: int) -> LatentRow | None:
        """The token-pass statistics of a latent (`ondemand.views` adds the weight-only parts)."""
        row = self.con.execute(
            "SELECT frequency, max_act, mean_act, snippet, hist, topics, examples FROM latents "
            "WHERE sae = ? AND latent = ?",
            (sae, latent),
        ).fetchone()
        if row is None:
            return None
        return LatentRow(
            sae, latent, row[0], row[1], row[2], row[3], json.loads(row[4]), json.loads(row[5]), unpack_examples(row[6])
        )

    def lens(self, sae: str, latents: list[int]) -> dict[int, dict]:
        """The stored logit lens of those of `latents` that have one."""
        marks = ",".join("?" * len(latents))
        return {
            int(i): json.loads(v)
            for i, v in self.con.execute(
                f"SELECT latent, logits FROM lens WHERE sae = ? AND latent IN ({marks})", (sae, *latents)
            )
        }

    def lens_count(self, sae: str) -> int:
        return self.con.execute("SELECT count(*) FROM lens WHERE sae = ?", (sae,)).fetchone()[0]

    def latent_table(self, sae: str, order: str = "frequency DESC") -> list[tuple]:
        """(latent, frequency, max_act, snippet, logit summary or '') for an SAE's latent list."""
        allowed = {"frequency DESC", "frequency ASC", "latent ASC", "max_act DESC"}
        if order not in allowed:
            raise SaescopeError(f"unknown sort order '{order}': use one of {', '.join(sorted(allowed))}")
        return self.con.execute(
            f"SELECT l.latent, l.frequency, l.max_act, l.snippet, coalesce(s.summary, '') "
            f"FROM latents l LEFT JOIN lens s ON s.sae = l.sae AND s.latent = l.latent "
            f"WHERE l.sae = ? ORDER BY l.{order}, l.latent",
            (sae,),
        ).fetchall()

    def max_acts(self, sae: str) -> np.ndarray:
        """Per-latent maxima over the held-out split, used to compare activations across SAEs."""
        out = np.zeros(self.saes[sae].d_sae, dtype=np.float32)
        for latent, value in self.con.execute("SELECT latent, max_act FROM latents WHERE sae = ?", (sae,)):
            out[latent] = value
        return out

    def search(self, word: str, sae: str | None = None, limit: int = 200) -> list[tuple[str, int, str, str]]:
        """Latents whose top example text or logit tokens contain `word`: (sae, latent, snippet, logits)."""
        printable = "".join(ch if ch.isprintable() and ch != '"' else " " for ch in word)  # NUL breaks FTS5
        terms = printable.split()
        if not terms:
            return []
        query = " ".join(f'"{t}"' for t in terms)  # quoted: user text is never FTS syntax
        sql = (
            "SELECT s.sae, s.latent, l.snippet, coalesce(n.summary, '') FROM search s JOIN latents l "
            "ON l.sae = s.sae AND l.latent = s.latent LEFT JOIN lens n ON n.sae = s.sae AND n.latent = s.latent "
            "WHERE search MATCH ?"
        )
        args: list = [query]
        if sae is not None:
            sql += " AND s.sae = ?"
            args.append(sae)
        sql += " GROUP BY s.sae, s.latent ORDER BY min(s.rank) LIMIT ?"  # examples and lens are two rows
        args.append(limit)
        return [(r[0], int(r[1]), r[2], r[3]) for r in self.con.execute(sql, args)]
