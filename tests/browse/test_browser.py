"""End to end in a real headless Chromium: overview, latent dashboard, prompt and steering pages.

Each test saves a screenshot (path printed with -s) so a person can check how the pages look.
"""

from __future__ import annotations

from saescope.browse.db import FeatureDB, db_path

RES = "res.1__w256__c64"


def shot(page, name: str) -> None:
    path = page.shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size > 5000, f"screenshot {path} is nearly empty"
    print(f"screenshot: {path}")


def test_overview(page, server):
    page.goto(server + "/")
    grid = page.locator("#grid")
    assert grid.is_visible()
    assert grid.locator("tbody tr").count() == 3  # att, mlp, res
    assert grid.locator("tbody a").count() == 9
    assert page.locator("svg.plot polyline").count() >= 3
    shot(page, "overview")
    grid.locator("tbody a").first.click()
    page.wait_for_selector("#latents")
    assert page.locator("#latents tbody tr").count() == 256
    assert page.errors == []


def test_latent_page_highlights_tokens(page, server):
    page.goto(f"{server}/latent/{RES}/0")
    top = page.locator("#top-examples .ex")
    assert top.count() >= 10
    lit = page.locator("#top-examples .tok[style*='rgba(255,120,0']")
    assert lit.count() >= top.count()  # at least the centre token of every example is coloured
    assert page.locator("#top-examples .tok.centre").count() == top.count()
    width = page.evaluate("document.querySelector('#top-examples .tok.centre').getBoundingClientRect().width")
    assert width > 0
    colour = page.evaluate("getComputedStyle(document.querySelector('#top-examples .tok.centre')).backgroundColor")
    assert "255, 120, 0" in colour  # the top example's centre is the max: full orange
    shot(page, "latent")
    assert page.errors == []


def test_hostile_document_is_inert(page, server, browse_run, hostile_doc_id):
    db = FeatureDB(db_path(browse_run))
    name, latent = next(
        (n, i) for n in db.saes for i in range(db.saes[n].d_sae) if hostile_doc_id in db.latent(n, i).examples.doc
    )
    page.goto(f"{server}/latent/{name}/{latent}")
    assert page.evaluate("window.pwned") is None
    assert "<script>window.pwned = 1</script> Evil" in page.inner_text("body")


def test_prompt_run(page, server):
    page.goto(server + "/prompt")
    page.fill("textarea[name=text]", "<script>window.pwned=1</script> the history of the city")
    page.click("#run-prompt")
    page.wait_for_selector("#prompt-table", timeout=120_000)
    assert page.evaluate("window.pwned") is None
    tokens = page.locator("#prompt-tokens .tok")
    assert tokens.count() >= 5
    assert page.locator("#prompt-table a.chip").count() > 0
    tokens.nth(2).click()
    assert page.locator("#tokrow-2.selected").count() == 1
    shot(page, "prompt")
    page.locator("#prompt-table a.chip").first.click()
    page.wait_for_selector("#top-examples")
    assert page.errors == []


def test_steering_generation(page, server):
    page.goto(f"{server}/steer?latents={RES}:1&strength=60")
    page.fill("textarea[name=prompt]", "The history of the city")
    page.fill("input[name=max_new_tokens]", "8")
    page.click("#run-steer")
    page.wait_for_selector("#gen-steered", timeout=120_000)
    clean, steered = page.inner_text("#gen-clean"), page.inner_text("#gen-steered")
    assert clean.strip() and steered.strip() and clean != steered
    shot(page, "steer")
    assert page.errors == []


def test_an_oversize_prompt_is_refused_fast(page, server):
    page.goto(server + "/prompt")
    page.evaluate("document.querySelector('textarea[name=text]').value = 'a'.repeat(2 << 20)")
    with page.expect_navigation() as nav:
        page.click("#run-prompt")
    assert nav.value.status == 413 and "larger than 1024 KB" in page.inner_text("body")
    assert nav.value.request.timing["responseEnd"] < 10_000  # milliseconds, body never read


def test_a_cross_site_form_post_is_refused(page, server):
    """A page on another site auto-submits a form to /prompt: Chromium sends its Origin, the app refuses."""
    evil = (
        f'<form id="f" method="post" action="{server}/prompt"><input name="text" value="from evil"></form>'
        f'<script>document.getElementById("f").submit()</script>'
    )
    page.route("http://evil.test/**", lambda route: route.fulfill(body=evil, content_type="text/html"))
    with page.expect_navigation(url=f"{server}/prompt") as nav:
        page.goto("http://evil.test/")
    assert nav.value.status == 403 and "cross-origin" in page.inner_text("body")


def test_a_rebound_host_name_is_refused(rebinding_browser, server):
    """DNS rebinding: a foreign name that resolves to this machine gets no page, the loopback name does."""
    port = server.rsplit(":", 1)[1]
    page = rebinding_browser.new_page()
    assert page.goto(f"http://rebind.test:{port}/").status == 421
    assert "does not answer for host" in page.inner_text("body")
    assert page.goto(f"http://localhost:{port}/").status == 200
