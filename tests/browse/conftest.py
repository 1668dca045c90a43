"""A tiny run whose held-out shard contains a hostile document, with its feature statistics.

The corpus is wiki documents written to a .jsonl file, with one document (title and text) full of
`<script>` placed so that it lands in the held-out last shard: the escaping tests need it to show
up in dashboard examples.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from saescope.activations.documents import load_documents
from saescope.activations.packing import encode_documents

HOSTILE_TITLE = "<script>window.pwned = 1</script> Evil"
HOSTILE_TEXT = " ".join(["<script>window.pwned = 1</script> the history of the city"] * 40)
TOKENS, SHARD_ROWS = 8192, 2048


@pytest.fixture(scope="session")
def browse_run(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> Path:
    from saescope.run import RunConfig, run

    root = tmp_path_factory.mktemp("browse")
    docs, used = [], 0
    target = TOKENS - SHARD_ROWS + 600  # inside the last (held-out) shard
    for doc in load_documents("wiki"):
        if used >= target and not any(d["title"] == HOSTILE_TITLE for d in docs):
            docs.append({"text": HOSTILE_TEXT, "title": HOSTILE_TITLE, "topic": "History"})
        docs.append({"text": doc.text, "title": doc.title, "topic": doc.topic})
        used += len(encode_documents([doc.text], tiny_tokenizer)[0]) - 1
        if used > TOKENS * 2:
            break
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(d) for d in docs))
    out = root / "run"
    run(
        RunConfig(
            model=str(tiny_model_dir),
            dataset=str(corpus),
            out=str(out),
            tokens=TOKENS,
            shard_rows=SHARD_ROWS,
            context_len=128,
            widths=[256],
            train_tokens=20480,
            batch_size=1024,
            device="cpu",
            dtype="float32",
            eval_sequences=4,
            eval_context_len=64,
        )
    )  # its last stage: browse
    return out


@pytest.fixture(scope="session")
def hostile_doc_id(browse_run) -> int:
    from saescope.browse.db import FeatureDB, db_path

    db = FeatureDB(db_path(browse_run))
    row = db.con.execute("SELECT id FROM docs WHERE title = ?", (HOSTILE_TITLE,)).fetchone()
    assert row is not None, "the hostile document did not land in the held-out shard"
    return row[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(browse_run):
    """The real app under uvicorn in a thread, as `saescope browse` serves it."""
    import uvicorn

    from saescope.browse.app import create_app

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(browse_run), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "the browser app did not start within 30 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright. Missing in CI is a failure, elsewhere a skip."""
    exe = chromium_path()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed: pip install -e '.[test]'")
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS[1:], headless=True)
        b.version_string = version  # type: ignore[attr-defined]
        yield b
        b.close()


@pytest.fixture
def rebinding_browser(browser):
    """A second Chromium whose resolver maps the foreign name rebind.test to 127.0.0.1, as a DNS
    rebinding attack would."""
    b = browser.browser_type.launch(
        executable_path=chromium_path(),
        headless=True,
        args=[*CHROMIUM_FLAGS[1:], "--host-resolver-rules=MAP rebind.test 127.0.0.1"],
    )
    yield b
    b.close()


@pytest.fixture
def page(browser, tmp_path_factory):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    p = ctx.new_page()
    p.errors = []  # type: ignore[attr-defined]
    p.on("pageerror", lambda err: p.errors.append(str(err)))
    p.shots = tmp_path_factory.mktemp("screenshots")  # type: ignore[attr-defined]
    yield p
    ctx.close()


@pytest.fixture
def fresh_run(browse_run, tmp_path) -> Path:
    """The same run (its SAEs and store linked, not copied) with a copy of its feature database in
    which no logit lens is stored yet, as right after `saescope run` or a cold `saescope browse`."""
    import sqlite3

    run = tmp_path / "run"
    (run / "browse").mkdir(parents=True)
    for part in ("saes", "activations"):
        (run / part).symlink_to(browse_run / part)
    shutil.copy(browse_run / "browse" / "features.sqlite", run / "browse" / "features.sqlite")
    con = sqlite3.connect(run / "browse" / "features.sqlite")
    with con:
        con.execute("DELETE FROM lens")
    con.close()
    return run
