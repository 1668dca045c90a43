"""The web app without a browser: 404s, escaping, path safety, defaults, export and the CLI."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from fastapi.testclient import TestClient

from saescope.browse.app import create_app, serve
from saescope.browse.db import FeatureDB, db_path
from saescope.cli import BrowseConfig, main

RES = "res.1__w256__c64"


@pytest.fixture(scope="module")
def client(browse_run):
    return TestClient(create_app(browse_run), base_url="http://127.0.0.1", raise_server_exceptions=False)


def hostile_latent(run, doc_id: int) -> tuple[str, int]:
    db = FeatureDB(db_path(run))
    for name in db.saes:
        for latent in range(db.saes[name].d_sae):
            if doc_id in db.latent(name, latent).examples.doc:
                return name, latent
    raise AssertionError("no example comes from the hostile document")


def test_pages_render(client):
    for url in [
        "/",
        f"/sae/{RES}",
        f"/sae/{RES}?sort=freq_asc&q=history",
        f"/latent/{RES}/0",
        "/search?q=city",
        "/prompt",
        "/steer",
        "/static/style.css",
        "/static/app.js",
    ]:
        r = client.get(url)
        assert r.status_code == 200, url
    assert 'id="grid"' in client.get("/").text
    assert client.get(f"/latent/{RES}/0").text.count('class="tok') >= 10


@pytest.mark.parametrize(
    "url",
    [
        "/latent/nope/1",
        f"/latent/{RES}/999999",
        f"/latent/{RES}/abc",
        f"/latent/{RES}/-1",
        f"/latent/{RES}/\u00b2",
        f"/latent/{RES}/\u0663",
        f"/latent/{RES}/{10**40}",
        "/sae/nope",
        "/sae/..%2F..%2Fconfig.json",
        "/latent/..%2Fsaes/0",
        "/static/..%2F..%2Fcli.py",
        "/static/%2e%2e/app.py",
        "/no/such/page",
    ],
)
def test_unknown_ids_are_clear_404s(client, url):
    r = client.get(url)
    assert r.status_code == 404
    assert "Traceback" not in r.text and "<h1>404</h1>" in r.text
    assert "def " not in r.text and "import" not in r.text  # no source file leaked


@pytest.mark.parametrize(
    "url", [f"/sae/{RES}?q=%00", "/search?q=%00city", "/search?q=%22%22", f"/sae/{RES}?sort=bogus"]
)
def test_odd_queries_are_pages_not_errors(client, url):
    assert client.get(url).status_code in (200, 400)


def test_unknown_sae_message_names_it(client):
    assert "no SAE named &#x27;nope&#x27;" in client.get("/sae/nope").text
    assert "latents are numbered 0-255" in client.get(f"/latent/{RES}/999999").text


def test_corpus_text_is_escaped(client, browse_run, hostile_doc_id):
    name, latent = hostile_latent(browse_run, hostile_doc_id)
    text = client.get(f"/latent/{name}/{latent}").text
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt; Evil" in text
    assert "<script>window" not in text


def test_prompt_and_steer_text_is_escaped(client):
    r = client.post("/prompt", data={"text": "<script>window.pwned=1</script> the city"})
    assert r.status_code == 200 and 'id="prompt-table"' in r.text
    assert "<script>window" not in r.text and "&lt;script&gt;window.pwned=1&lt;/script&gt;" in r.text
    r = client.post("/steer", data={"prompt": "<script>x</script>", "latents": f"<b>{RES}:1", "mode": "add"})
    assert r.status_code == 400 and "<b>" not in r.text and "unknown SAE" in r.text


def test_steering_changes_the_generation(client):
    form = {
        "prompt": "The history of the city",
        "latents": f"{RES}:1,res.2__w256__c64:4",
        "mode": "add",
        "strength": "60",
        "max_new_tokens": "8",
    }
    r = client.post("/steer", data=form)
    assert r.status_code == 200
    clean = r.text.split('id="gen-clean">')[1].split("</div>")[0]
    steered = r.text.split('id="gen-steered">')[1].split("</div>")[0]
    assert clean and steered and clean != steered
    clamp = client.post("/steer", data=form | {"mode": "clamp", "strength": "0"}).text
    assert 'id="gen-steered"' in clamp


@pytest.mark.parametrize(
    "bad",
    [
        {"latents": ""},
        {"latents": f"{RES}:9999"},
        {"latents": f"{RES}:\u00b2"},
        {"strength": "x"},
        {"mode": "boost"},
        {"max_new_tokens": "1000"},
        {"prompt": " "},
    ],
)
def test_bad_steering_forms_get_one_line(client, bad):
    form = {"prompt": "Hello", "latents": f"{RES}:1", "mode": "add", "strength": "4", "max_new_tokens": "4"} | bad
    r = client.post("/steer", data=form)
    assert r.status_code == 400 and 'id="steer-error"' in r.text and "Traceback" not in r.text


def test_every_response_carries_the_security_headers(client):
    for url in ["/", f"/latent/{RES}/0", "/static/app.js", "/no/such/page"]:
        headers = client.get(url).headers
        assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.example", "10.0.0.5"])
def test_a_foreign_host_header_is_refused(client, host):
    r = client.get("/", headers={"host": host})
    assert r.status_code == 421 and "does not answer for host" in r.text


def test_loopback_names_and_the_served_host_are_answered(browse_run, client):
    for host in ["localhost:8765", "127.0.0.1", "[::1]:8765"]:
        assert client.get("/", headers={"host": host}).status_code == 200
    lan = TestClient(create_app(browse_run, host="192.168.7.7"), base_url="http://192.168.7.7:8765")
    assert lan.get("/").status_code == 200 and lan.get("/", headers={"host": "10.0.0.5"}).status_code == 421


@pytest.mark.parametrize("path", ["/prompt", "/steer"])
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999"])
def test_cross_origin_posts_are_refused(client, path, origin):
    r = client.post(path, data={"text": "hi", "prompt": "hi"}, headers={"origin": origin})
    assert r.status_code == 403 and "cross-origin" in r.text


def test_same_origin_posts_work(client):
    r = client.post("/prompt", data={"text": "the city"}, headers={"origin": "http://127.0.0.1"})
    assert r.status_code == 200 and 'id="prompt-table"' in r.text


def test_an_oversize_post_is_refused_before_it_is_read(client):
    r = client.post(
        "/prompt", content=b"text=" + b"a" * (2 << 20), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 413
    r = client.post(
        "/prompt",
        content=iter([b"text=", b"a" * (2 << 20)]),  # chunked: no Content-Length
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413


def test_server_binds_localhost_by_default():
    defaults = {f.name: f.default for f in dataclasses.fields(BrowseConfig)}
    assert defaults["host"] == "127.0.0.1"
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"


def test_export_writes_a_static_site(browse_run, tmp_path, hostile_doc_id):
    site = tmp_path / "site"
    assert main(["browse", str(browse_run), "--export", str(site), "--export-latents", "4"]) == 0
    assert (site / "index.html").exists() and (site / "static" / "app.js").exists()
    pages = sorted((site / "sae" / RES).glob("*.html"))
    assert len(pages) == 5  # index + 4 latents
    latent_page = next(p for p in pages if p.name != "index.html").read_text()
    assert 'href="../../static/style.css"' in latent_page and 'href="/' not in latent_page
    assert "<script>window" not in "".join(p.read_text() for p in site.rglob("*.html"))


def test_export_refuses_the_run_folder(browse_run, capsys):
    assert main(["browse", str(browse_run), "--export", str(browse_run / "saes")]) == 2
    assert "mix with the run's own files" in capsys.readouterr().err
