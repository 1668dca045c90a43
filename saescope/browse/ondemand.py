"""The weight-only parts of a latent page, computed when first needed instead of before serving.

The logit lens (a latent's decoder row through the unembedding: one pass over a 262k x 640 matrix,
tens of milliseconds) and the decoder-cosine neighbours (in the same SAE and in the adjacent
layers' SAEs) do not depend on the held-out tokens, so `saescope browse` does not wait for them:

- a latent page computes its latent's lens on first view and stores it in the database, so later
  views, the SAE tables' top-logit column and the search by logit token find it there;
- a background thread fills in the lens of every other latent, SAE by SAE, in blocks that share one
  pass over the unembedding; it waits while a page is being served (checked before each eighth of
  the vocabulary), so pages come first;
- neighbours are one row against three decoders (under a millisecond): computed on every view from
  decoders kept in memory, never stored.

The model is the one the prompt and steering pages use (`Live.model`), loaded once.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from saescope.browse import family, lens
from saescope.browse.db import FeatureDB, LatentRow, connect
from saescope.browse.stats import TokenText
from saescope.browse.suite import adjacent, list_saes
from saescope.release.formats import load

FILL_BLOCK = 32  # latents per background step: one pass over the unembedding, ~0.15 s on 2 cores


class OnDemand:
    """One run's weight-only latent statistics for the pages, the background fill and the export."""

    def __init__(self, run: str | Path, db: FeatureDB, model: Callable[[], tuple]):
        self.db, self.model = db, model
        self.suite = {s.name: s for s in list_saes(run) if s.name in db.saes}
        self.writer = connect(db.path, write=True)
        # No fsync per stored lens (16 ms each here, more than the lens): these rows are a cache of a
        # cache; an application crash loses nothing, an OS crash at worst a database `browse` rebuilds.
        self.writer.execute("PRAGMA synchronous = OFF")
        self.write_lock = threading.Lock()  # one writer connection, shared by pages and the fill
        self.load_lock = threading.Lock()
        self._unembed: lens.Unembedding | None = None
        self._text: TokenText | None = None
        self._decoders: dict[str, torch.Tensor] = {}
        self._busy = 0  # pages being served right now
        self._idle = threading.Condition()
        self.thread: threading.Thread | None = None  # the background fill, once started

    # ---- what a page shows ------------------------------------------------------------------------

    def views(self, name: str, latents: list[int]) -> list[LatentRow]:
        """Latent rows with their logit lens and neighbours (lens computed here where not stored yet)."""
        rows = [self.db.latent(name, i) for i in latents]
        logits = self.logits(name, latents)
        near = self.neighbours(name, latents)
        return [dataclasses.replace(r, logits=logits.get(i), neighbours=n) for r, i, n in zip(rows, latents, near)]

    def logits(self, name: str, latents: list[int], pause: Callable[[], object] | None = None) -> dict[int, dict]:
        """The logit lens of `latents` (empty where it does not apply), from the database or computed."""
        if self.suite[name].site.kind not in lens.LENS_KINDS:
            return {}
        have = self.db.lens(name, latents)
        missing = [i for i in latents if i not in have]
        return have | (self._compute(name, missing, pause) if missing else {})

    def neighbours(self, name: str, latents: list[int]) -> list[dict]:
        """Per latent: nearest latents by decoder cosine in its SAE and in the adjacent layers' SAEs."""
        s = self.suite[name]
        own = self.decoder(name)
        index = torch.tensor(latents)
        out = [{"same": same, "adjacent": []} for same in lens.neighbours(own, index)]
        for other in adjacent(s, list(self.suite.values())):
            if other.d_in != s.d_in:
                continue
            v, i = lens.nearest(own[index], self.decoder(other.name), max(1, lens.NEIGHBOURS // 2))
            for j in range(len(latents)):
                items = lens.pairs(i[j], v[j])
                out[j]["adjacent"].append({"sae": other.name, "layer": other.site.layer, "items": items})
        family.attach(self, name, latents, out)  # parent and children across widths
        return out

    # ---- computing and storing the lens -------------------------------------------------------------

    def decoder(self, name: str) -> torch.Tensor:
        """An SAE's decoder rows as released (float32), loaded once and kept: every view reads three."""
        if name not in self._decoders:
            self._decoders[name] = load(self.suite[name].folder).W_dec.detach().float()
        return self._decoders[name]

    def unembedding(self) -> tuple[lens.Unembedding, TokenText]:
        """The lens' unembedding and the token texts, made from the shared model on first use."""
        with self.load_lock:
            if self._unembed is None:
                model, tokenizer = self.model()
                self._unembed, self._text = lens.unembedding(model), TokenText(tokenizer)
            return self._unembed, self._text

    def _compute(self, name: str, latents: list[int], pause: Callable[[], object] | None) -> dict[int, dict]:
        W_U, text = self.unembedding()
        model, _ = self.model()
        directions = lens.residual_directions(model, self.suite[name].site, self.decoder(name)[torch.tensor(latents)])
        out = dict(zip(latents, lens.logit_lens(directions, W_U, pause)))
        self._store(name, out, text)
        return out

    def _store(self, name: str, logits: dict[int, dict], text: TokenText) -> None:
        """The lens rows, their search text and any token texts new to the database, in one transaction."""
        with self.write_lock:
            text.need([t for lg in logits.values() for t, _ in lg["top"] + lg["bottom"]])
            with self.writer:
                for i, lg in logits.items():
                    summary = " ".join(repr(text.known.get(t, "")) for t, _ in lg["top"][:5])
                    if self.writer.execute(
                        "INSERT OR IGNORE INTO lens VALUES (?, ?, ?, ?)", (name, i, summary, json.dumps(lg))
                    ).rowcount:  # not stored meanwhile
                        self.writer.execute(
                            "INSERT INTO search VALUES (?, ?, ?)",
                            (name, i, " ".join(text.known.get(t, "") for t, _ in lg["top"])),
                        )
                self.writer.executemany("INSERT OR REPLACE INTO tokens VALUES (?, ?)", text.take_unsaved())

    # ---- the background fill -------------------------------------------------------------------------

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Held while a page is served: the fill waits, so the page has the cores."""
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def wait_for_pages(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0)

    def fill(self, progress: bool = False) -> float:
        """Compute the lens of every latent that has none yet; return the seconds it took."""
        start = time.perf_counter()
        for name in self.suite:  # every page needs its SAE's and the adjacent layers' decoders
            self.decoder(name)
        names = [n for n in self.suite if self.suite[n].site.kind in lens.LENS_KINDS]
        bar = tqdm(total=len(names), desc="logit lens", unit="SAE", dynamic_ncols=True, disable=not progress)
        for name in names:
            every = list(range(self.suite[name].d_sae))
            todo = sorted(set(every) - set(self.db.lens(name, every)))
            for lo in range(0, len(todo), FILL_BLOCK):  # skips latents a page computed meanwhile
                self.logits(name, todo[lo : lo + FILL_BLOCK], pause=self.wait_for_pages)
            bar.update()
        bar.close()
        return time.perf_counter() - start

    def start(self) -> threading.Thread:
        """The fill in a daemon thread; one line when it is done (or why it stopped)."""

        def work() -> None:
            try:
                seconds = self.fill()
                print(f"saescope: logit lens of every latent stored ({seconds:.0f} s); search covers logit tokens now")
            except Exception as err:  # the pages still compute their own lens; say why the fill stopped
                print(f"saescope: the background logit lens stopped ({err}); pages still compute theirs on view")

        self.thread = threading.Thread(target=work, name="saescope-lens-fill", daemon=True)
        self.thread.start()
        return self.thread
